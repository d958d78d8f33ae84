// Diagnostic: runs the built-in test job (steps × step_ms) and shows its progress.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, progressBar, setChildren } from "../ui.js";
import { errorText, formatDuration, rpcCodeName, tsMs } from "../lib/format.js";
import { requestId, submitAndFollow } from "../jobrun.js";
import type { Job } from "../gen/deephardway/v1/jobs_pb.js";

function uint(input: HTMLInputElement): number {
  const n = Number(input.value.trim() || "0");
  // Out-of-range values are sent as they are (clamped to uint32) so the service's
  // validation message is what the user sees.
  if (!Number.isFinite(n) || n < 0) return 0;
  return Math.min(0xffffffff, Math.floor(n));
}

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

  let jobId = "";
  let controller: AbortController | undefined;

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

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    controller?.abort();
    const ctl = new AbortController();
    controller = ctl;
    error.clear();
    bar.set(0);
    setChildren(result);
    output.textContent = "";
    output.hidden = !outputPerStep.value;
    status.textContent = "Submitting…";
    delete status.dataset.jobId;
    delete status.dataset.state;
    jobId = "";
    run.disabled = true;
    let started: number | undefined;
    try {
      const final = await submitAndFollow(
        ctx.api,
        {
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
          requestId: requestId(),
        },
        {
          signal: ctl.signal,
          banner: ctx.banner,
          onSubmitted: (job: Job) => {
            jobId = job.id;
            status.dataset.jobId = job.id;
            status.dataset.state = "queued";
            cancel.disabled = false;
            status.textContent = `Job ${job.id} queued`;
          },
          onEvent: (ev) => {
            switch (ev.event.case) {
              case "queued":
                status.textContent = `Job ${ev.jobId} queued (position ${ev.event.value.position})`;
                break;
              case "started":
                started = tsMs(ev.time);
                status.dataset.state = "running";
                status.textContent = `Job ${ev.jobId} running on ${ev.event.value.workerName || ev.event.value.workerId} (${ev.event.value.device})`;
                break;
              case "progress":
                bar.set(ev.event.value.fraction);
                if (ev.event.value.message) status.textContent = `Job ${ev.jobId}: ${ev.event.value.message}`;
                break;
              case "output":
                output.textContent += ev.event.value.text;
                break;
            }
          },
        },
      );
      status.dataset.state = final.event.case === "result" ? "succeeded" : final.event.case;
      const took = started !== undefined ? formatDuration((tsMs(final.time) ?? Date.now()) - started) : "";
      switch (final.event.case) {
        case "result": {
          bar.set(1);
          const r = final.event.value.value;
          status.textContent = `Job ${final.jobId} succeeded${took ? ` in ${took}` : ""}`;
          if (r.case === "diagnostic") {
            setChildren(result, `Succeeded: ${r.value.steps} steps`, r.value.echo ? `, echo "${r.value.echo}"` : "");
          }
          break;
        }
        case "failed":
          status.textContent = `Job ${final.jobId} failed`;
          error.show(`${rpcCodeName(final.event.value.code)}: ${final.event.value.message}`);
          break;
        case "cancelled":
          status.textContent = `Job ${final.jobId} cancelled`;
          setChildren(result, `Cancelled${final.event.value.reason ? `: ${final.event.value.reason}` : ""}`);
          break;
      }
    } catch (err) {
      if (!ctl.signal.aborted) {
        status.textContent = "";
        error.show(errorText(err));
      }
    } finally {
      if (controller === ctl) {
        run.disabled = false;
        cancel.disabled = true;
      }
    }
  });

  cancel.addEventListener("click", async () => {
    if (!jobId) return;
    try {
      const id = jobId;
      await ctx.api.jobs.cancel({ jobId: id, reason: "cancelled from the web client" });
      if (id === jobId && (status.dataset.state === "queued" || status.dataset.state === "running")) {
        status.textContent = `Job ${id}: cancel requested`;
      }
    } catch (err) {
      error.show(errorText(err));
    }
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
