// Generate: text generation with streamed output, parameters and a Stop button.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, setChildren } from "../ui.js";
import { errorText, tokensPerSecond, tsMs } from "../lib/format.js";
import { jobControls } from "../jobControls.js";
import { durationSuffix, endedText } from "../lib/jobstatus.js";
import { JobKind } from "../gen/deephardway/v1/jobs_pb.js";
import { fillModelSelect } from "../models.js";
import { finishReasonName } from "../lib/enums.js";
import { generateInput, generateSummary, type GenerateForm } from "../lib/generate.js";

export function generatePage(ctx: AppContext): Page {
  const model = h("select", { name: "model" });
  const mode = h(
    "select",
    { name: "mode" },
    h("option", { value: "chat" }, "Chat (system + user)"),
    h("option", { value: "prompt" }, "Raw prompt"),
  );
  const system = h("textarea", { name: "system", rows: 2 }, "You are a helpful assistant.");
  const user = h("textarea", { name: "user", rows: 3 }, "What is the capital of France?");
  const prompt = h("textarea", { name: "prompt", rows: 4 }, "Once upon a time");
  const maxTokens = h("input", { type: "number", name: "max_tokens", value: "64" });
  const temperature = h("input", { type: "number", name: "temperature", value: "0.7", step: "0.05" });
  const topP = h("input", { type: "number", name: "top_p", value: "0.9", step: "0.05" });
  const topK = h("input", { type: "number", name: "top_k", value: "0" });
  const repetition = h("input", { type: "number", name: "repetition_penalty", value: "1.1", step: "0.05" });
  const seed = h("input", { type: "text", name: "seed", value: "", placeholder: "random" });
  const stop = h("input", { type: "text", name: "stop", value: "", placeholder: "comma-separated, \\n for newline" });
  const run = h("button", { type: "submit", class: "primary", "data-testid": "run" }, "Generate");
  const stopBtn = h("button", { type: "button", disabled: true, "data-testid": "stop" }, "Stop");
  const status = h("div", { class: "status", "data-testid": "status" });
  const output = h("pre", { class: "output generated", "data-testid": "output" });
  const stats = h("div", { class: "result", "data-testid": "stats" });
  const error = messageBox();

  const chatFields = h("div", null, field("System", system), field("User", user));
  const promptFields = h("div", { hidden: true }, field("Prompt", prompt));
  mode.addEventListener("change", () => {
    chatFields.hidden = mode.value !== "chat";
    promptFields.hidden = mode.value === "chat";
  });

  const form = h(
    "form",
    { class: "form", novalidate: true },
    h("div", { class: "row" }, field("Model", model), field("Input", mode)),
    chatFields,
    promptFields,
    h(
      "div",
      { class: "row" },
      field("Max tokens", maxTokens, "0: model default"),
      field("Temperature", temperature, "0: greedy"),
      field("Top p", topP),
      field("Top k", topK, "0: off"),
      field("Repetition penalty", repetition),
      field("Seed", seed),
      field("Stop", stop),
    ),
    h("div", { class: "actions" }, run, stopBtn),
  );

  function readForm(): GenerateForm {
    return {
      mode: mode.value === "chat" ? "chat" : "prompt",
      system: system.value,
      user: user.value,
      prompt: prompt.value,
      maxTokens: maxTokens.value,
      temperature: temperature.value,
      topP: topP.value,
      topK: topK.value,
      repetitionPenalty: repetition.value,
      seed: seed.value,
      stop: stop.value,
    };
  }

  const job = jobControls(ctx, { status, error, run, stop: stopBtn, stopVerb: "stop" });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    output.textContent = "";
    setChildren(stats);
    let firstOutputMs: number | undefined;
    let lastRate: number | undefined;
    let tokens = 0;
    job.start({
      spec: () => ({ input: { case: "generate", value: generateInput(readForm()) }, model: model.value }),
      onEvent: (ev) => {
        switch (ev.event.case) {
          case "output":
            firstOutputMs ??= tsMs(ev.time);
            output.textContent += ev.event.value.text;
            break;
          case "progress": {
            const m = ev.event.value.metrics;
            if (m.tokens_per_second !== undefined) lastRate = m.tokens_per_second;
            if (m.tokens !== undefined) tokens = m.tokens;
            status.textContent = `Job ${ev.jobId}: ${tokens} tokens${lastRate !== undefined ? `, ${lastRate.toFixed(1)} tokens/s` : ""}`;
            break;
          }
        }
      },
      onResult: (r, final, t) => {
        if (r.case !== "generate") return;
        // The result holds the whole text: trust it over the streamed chunks.
        output.textContent = r.value.text;
        const decodeMs = firstOutputMs !== undefined && t.endMs !== undefined ? t.endMs - firstOutputMs : undefined;
        const rate = tokensPerSecond(r.value.completionTokens, decodeMs) ?? lastRate;
        status.textContent = `Job ${final.jobId} finished (${finishReasonName(r.value.finishReason)})${durationSuffix(t.startedMs, t.endMs)}`;
        setChildren(stats, generateSummary(r.value, rate, lastRate));
      },
      onCancelled: (reason) => setChildren(stats, endedText("Stopped", reason), tokens ? ` after ~${tokens} tokens` : ""),
    });
  });

  const el = h(
    "section",
    { class: "page", id: "page-generate" },
    h("h2", null, "Generate"),
    form,
    error.el,
    status,
    output,
    stats,
  );

  return {
    id: "generate",
    title: "Generate",
    el,
    show() {
      ctx.models
        .ofKind(JobKind.GENERATE, true)
        .then((models) => fillModelSelect(model, models))
        .catch((err) => error.show(`ListModels: ${errorText(err)}`));
    },
  };
}
