// Runs a job from a page's form: what every job page does the same way. It disables
// the Run button while a job runs and enables the Cancel/Stop button once the job has an
// id (its click calls JobService.CancelJob), aborts the previous run's stream when a new
// one starts, keeps the status line's text, data-job-id and data-state up to date
// through queued (with the live place in line) / started and the final event, shows a failed job's `CODE: message`
// and any other error in the error box. The page supplies its JobSpec and renders
// progress, output and the result.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AppContext } from "./page.js";
import type { JobEvent, JobResult, JobSpecSchema } from "./gen/deephardway/v1/jobs_pb.js";
import { createAndFollow, requestId } from "./jobrun.js";
import { errorText, failureText, tsMs } from "./lib/format.js";
import {
  cancelReason,
  cancelRequestedText,
  finalState,
  isActive,
  queuedText,
  queueStatusText,
  runningText,
  type StopVerb,
} from "./lib/jobstatus.js";

export interface JobControlsOptions {
  /** The status line (data-testid=status): its text, data-job-id and data-state. */
  status: HTMLElement;
  /** Where errors go (ui.ts messageBox). */
  error: { show(text: string): void; clear(): void };
  /** Disabled while a job of this page runs. */
  run?: HTMLButtonElement;
  /** Enabled while a job of this page can be cancelled; a click cancels it. */
  stop?: HTMLButtonElement;
  /** How the stop button's texts read: "cancel requested" or "stop requested". */
  stopVerb?: StopVerb;
  /** Show the worker's name in "running on …", not only the device. */
  showWorker?: boolean;
}

/** When the job ran: `startedMs` from its Started event, `endMs` from its final event. */
export interface JobTiming {
  startedMs?: number;
  endMs?: number;
}

type SpecInit = MessageInitShape<typeof JobSpecSchema>;

/** One run: the page-specific parts. */
export interface JobRun {
  /** What to run (the CreateJob request's id is set here). An exception is shown as "Invalid parameters: …". */
  spec(): SpecInit;
  /** Every event before the final one, after the status line was updated for queued and started. */
  onEvent?(ev: JobEvent): void;
  /** The final event, before anything else is done with it. */
  onFinal?(final: JobEvent): void;
  /** A succeeded job's result; the page sets the status text. */
  onResult?(result: JobResult["value"], final: JobEvent, timing: JobTiming): void;
  /** A cancelled job (the status line already says so). */
  onCancelled?(reason: string, final: JobEvent): void;
}

export interface JobControls {
  /** Aborts the previous run (if any), resets the status and error box, runs the job. Never rejects. */
  start(run: JobRun): Promise<void>;
  /** Stops following the current run (the job itself goes on). */
  abort(): void;
}

export function jobControls(ctx: Pick<AppContext, "api" | "banner">, opts: JobControlsOptions): JobControls {
  const { status, error, run, stop } = opts;
  const verb = opts.stopVerb ?? "cancel";
  let jobId = "";
  let controller: AbortController | undefined;

  stop?.addEventListener("click", async () => {
    if (!jobId) return;
    try {
      const id = jobId;
      await ctx.api.jobs.cancelJob({ jobId: id, reason: cancelReason(verb) });
      if (id === jobId && isActive(status.dataset.state)) status.textContent = cancelRequestedText(id, verb);
    } catch (err) {
      error.show(errorText(err));
    }
  });

  async function start(page: JobRun): Promise<void> {
    controller?.abort();
    const ctl = new AbortController();
    controller = ctl;
    error.clear();
    status.textContent = "Submitting…";
    delete status.dataset.jobId;
    delete status.dataset.state;
    jobId = "";
    if (run) run.disabled = true;
    let startedMs: number | undefined;
    try {
      let spec: SpecInit;
      try {
        spec = page.spec();
      } catch (err) {
        throw new Error(`Invalid parameters: ${errorText(err)}`);
      }
      const final = await createAndFollow(
        ctx.api,
        { spec, requestId: requestId() },
        {
          signal: ctl.signal,
          banner: ctx.banner,
          onCreated: (job) => {
            jobId = job.id;
            status.dataset.jobId = job.id;
            status.dataset.state = "queued";
            if (stop) stop.disabled = false;
            status.textContent = queuedText(job.id);
          },
          onEvent: (ev) => {
            switch (ev.event.case) {
              case "queued":
                status.textContent = queuedText(ev.jobId, ev.event.value.position);
                break;
              case "started":
                startedMs = tsMs(ev.time);
                status.dataset.state = "running";
                status.textContent = runningText(ev.jobId, ev.event.value, opts.showWorker ?? false);
                break;
            }
            page.onEvent?.(ev);
          },
          onQueueStatus: (queue) => {
            // Live, not an event: only while the line says queued (never after started).
            if (status.dataset.state === "queued") status.textContent = queueStatusText(jobId, queue, Date.now());
          },
        },
      );
      page.onFinal?.(final);
      status.dataset.state = finalState(final);
      switch (final.event.case) {
        case "result":
          page.onResult?.(final.event.value.value, final, { startedMs, endMs: tsMs(final.time) });
          break;
        case "failed":
          status.textContent = `Job ${final.jobId} failed`;
          error.show(failureText(final.event.value));
          break;
        case "cancelled":
          status.textContent = `Job ${final.jobId} cancelled`;
          page.onCancelled?.(final.event.value.reason, final);
          break;
      }
    } catch (err) {
      if (!ctl.signal.aborted) {
        status.textContent = "";
        error.show(errorText(err));
      }
    } finally {
      if (controller === ctl) {
        if (run) run.disabled = false;
        if (stop) stop.disabled = true;
      }
    }
  }

  return { start, abort: () => controller?.abort() };
}
