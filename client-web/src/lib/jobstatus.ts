// The texts and states a page shows while it runs a job from a form (see
// src/jobControls.ts). Pure, no DOM.
import type { JobEvent, JobStarted, QueueStatus } from "../gen/deephardway/v1/jobs_pb.js";
import { formatDuration, tsMs } from "./format.js";

/** What a page's second button is called: Diagnostic's "Cancel", Generate's and Train's "Stop". */
export type StopVerb = "cancel" | "stop";

/** The status line's data-state for a final event: "succeeded", "failed" or "cancelled". */
export function finalState(ev: JobEvent): string {
  return ev.event.case === "result" ? "succeeded" : (ev.event.case ?? "");
}

/** Whether a job in this data-state can still be cancelled. */
export function isActive(state: string | undefined): boolean {
  return state === "queued" || state === "running";
}

/** "Job 7 queued", or "Job 7 queued (position 2)" from a JobQueued event. */
export function queuedText(jobId: string, position?: number): string {
  return position === undefined ? `Job ${jobId} queued` : `Job ${jobId} queued (position ${position})`;
}

/**
 * "position 2, starts in ~12.3 s" from a live queue status at time `nowMs`, or
 * "position 2" while the service has no estimate (no job of the line started lately).
 */
export function queuePlaceText(status: Pick<QueueStatus, "position" | "estimatedStartTime">, nowMs: number): string {
  const start = tsMs(status.estimatedStartTime);
  const place = `position ${status.position}`;
  if (start === undefined) return place;
  const wait = start - nowMs;
  return wait < 1000 ? `${place}, starts in under 1 s` : `${place}, starts in ~${formatDuration(wait)}`;
}

/** "Job 7 queued (position 2, starts in ~12.3 s)" from a live queue status. */
export function queueStatusText(jobId: string, status: Pick<QueueStatus, "position" | "estimatedStartTime">, nowMs: number): string {
  return `Job ${jobId} queued (${queuePlaceText(status, nowMs)})`;
}

/** "Job 7 running on cuda:0", or with the worker "Job 7 running on w1 (cuda:0)". */
export function runningText(jobId: string, started: Pick<JobStarted, "workerId" | "workerName" | "device">, showWorker: boolean): string {
  return showWorker
    ? `Job ${jobId} running on ${started.workerName || started.workerId} (${started.device})`
    : `Job ${jobId} running on ${started.device}`;
}

/** "Cancelled" / "Stopped", with ": reason" when there is one. */
export function endedText(word: string, reason: string): string {
  return `${word}${reason ? `: ${reason}` : ""}`;
}

/** The reason sent with JobService.CancelJob. */
export function cancelReason(verb: StopVerb): string {
  return `${verb === "stop" ? "stopped" : "cancelled"} from the web client`;
}

/** "Job 7: cancel requested" / "Job 7: stop requested". */
export function cancelRequestedText(jobId: string, verb: StopVerb): string {
  return `Job ${jobId}: ${verb} requested`;
}

/** " in 1.2 s" between two times in ms, or "" when either is unknown. */
export function durationSuffix(startMs: number | undefined, endMs: number | undefined): string {
  if (startMs === undefined || endMs === undefined) return "";
  const took = formatDuration(endMs - startMs);
  return took ? ` in ${took}` : "";
}
