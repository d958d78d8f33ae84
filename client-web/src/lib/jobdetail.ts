// The job detail view's summary of a job (JobService.GetJob). Pure, no DOM.
import type { Job } from "../gen/deephardway/v1/jobs_pb.js";
import { failureText, formatDuration, formatPercent, jobDurationMs, kindName, stateName, tsMs } from "./format.js";
import { queuePlaceText } from "./jobstatus.js";

/** The summary's rows, label and value, for a job at time `now` (ms). */
export function jobSummaryRows(job: Job, now: number): [string, string][] {
  const created = tsMs(job.createTime);
  const rows: [string, string][] = [
    ["State", stateName(job.state) + (job.cancelRequested ? ` (cancel requested${job.cancelReason ? `: ${job.cancelReason}` : ""})` : "")],
    ["Kind", kindName(job.kind)],
    ["Model", job.model],
    ["Attempts", `${job.attempts} of ${job.maxAttempts}`],
    ["Worker / device", [job.workerName, job.workerId, job.device].filter(Boolean).join(" / ")],
    ["Created", created ? new Date(created).toLocaleString() : ""],
    ["Duration", formatDuration(jobDurationMs(job, now))],
    ["Progress", formatPercent(job.progress)],
    ["Last seq", String(job.lastSeq)],
  ];
  // Set by GetJob only while the job is queued.
  if (job.queueStatus) rows.push(["In line", queuePlaceText(job.queueStatus, now)]);
  if (job.error) rows.push(["Error", failureText(job.error)]);
  return rows;
}
