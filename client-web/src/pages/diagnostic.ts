// Diagnostic: runs the built-in test job (steps × step_ms) and shows its progress.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, progressBar, setChildren } from "../ui.js";
import { jobControls } from "../jobControls.js";
import { durationSuffix, endedText } from "../lib/jobstatus.js";
import { uintValue } from "../lib/params.js";

// Out-of-range values are sent as they are (clamped to uint32) so the service's
// validation message is what the user sees.
const uint = (input: HTMLInputElement) => uintValue(input.value);

export function diagnosticPage(ctx: AppContext): Page {
  const steps = h("input", { type: "number", name: "steps", value: "10" });
  const stepMs = h("input", { type: "number", name: "step_ms", value: "100" });
  const failAt = h("input", { type: "number", name: "fail_at_step", value: "0" });
  const echo = h("input", { type: "text", name: "echo", value: "hello" });
  const outputPerStep = h("input", { type: "text", name: "output_per_step", value: "" });
  const run = h("button", { type: "submit", class: "primary", "data-testid": "run" }, "Run");
  const cancel = h("button", { type: "button", disabled: true, "data-testid": "cancel" }, "Cancel");
  const bar = progressBar();
  const status = h("div", { class: "status", "data-testid": "status" });
  const output = h("pre", { class: "output", hidden: true });
  const result = h("div", { class: "result", "data-testid": "result" });
  const error = messageBox();

  const form = h(
    "form",
    { class: "form", novalidate: true },
    h(
      "div",
      { class: "row" },
      field("Steps", steps, "1 to 100000"),
      field("Step (ms)", stepMs, "0 to 600000"),
      field("Fail at step", failAt, "0 never fails"),
    ),
    h("div", { class: "row" }, field("Echo", echo), field("Output per step", outputPerStep)),
    h("div", { class: "actions" }, run, cancel),
  );

  const job = jobControls(ctx, { status, error, run, stop: cancel, stopVerb: "cancel", showWorker: true });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    bar.set(0);
    setChildren(result);
    output.textContent = "";
    output.hidden = !outputPerStep.value;
    job.start({
      spec: () => ({
        input: {
          case: "diagnostic",
          value: {
            steps: uint(steps),
            stepMs: uint(stepMs),
            failAtStep: uint(failAt),
            echo: echo.value,
            outputPerStep: outputPerStep.value,
          },
        },
      }),
      onEvent: (ev) => {
        switch (ev.event.case) {
          case "progress":
            bar.set(ev.event.value.fraction);
            if (ev.event.value.message) status.textContent = `Job ${ev.jobId}: ${ev.event.value.message}`;
            break;
          case "output":
            output.textContent += ev.event.value.text;
            break;
        }
      },
      onResult: (r, final, t) => {
        bar.set(1);
        status.textContent = `Job ${final.jobId} succeeded${durationSuffix(t.startedMs, t.endMs ?? Date.now())}`;
        if (r.case === "diagnostic") {
          setChildren(result, `Succeeded: ${r.value.steps} steps`, r.value.echo ? `, echo "${r.value.echo}"` : "");
        }
      },
      onCancelled: (reason) => setChildren(result, endedText("Cancelled", reason)),
    });
  });

  const el = h(
    "section",
    { class: "page", id: "page-diagnostic" },
    h("h2", null, "Diagnostic"),
    h("p", { class: "hint" }, "A built-in test job that sleeps through a number of steps, reporting progress after each."),
    form,
    error.el,
    bar.el,
    status,
    output,
    result,
  );
  return { id: "diagnostic", title: "Diagnostic", el };
}
