// Create a job and follow its events to the end, resuming after lost connections.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Api } from "./api.js";
import type { CreateJobRequestSchema, Job, JobEvent, QueueStatus } from "./gen/deephardway/v1/jobs_pb.js";
import type { ConnectionBanner } from "./connection.js";
import { jobEvents, retrying, watchResumable } from "./lib/watch.js";

export interface FollowOptions {
  /** The job was created (CreateJob answered). */
  onCreated?: (job: Job) => void;
  onEvent: (ev: JobEvent) => void;
  /** While the job waits: its place in line and expected start, whenever they change. */
  onQueueStatus?: (status: QueueStatus) => void;
  signal?: AbortSignal;
  banner?: ConnectionBanner;
  /** Name shown in the connection banner. */
  label?: string;
}

/** Follows an existing job (WatchJob) from after `afterSeq` to its final event. */
export async function followJob(api: Api, jobId: string, afterSeq: bigint, opts: FollowOptions): Promise<JobEvent> {
  const key = opts.label ?? `job ${jobId}`;
  try {
    return await watchResumable({
      afterSeq,
      open: (after, signal) => jobEvents(api.jobs.watchJob({ jobId, afterSeq: after }, { signal }), opts.onQueueStatus),
      onEvent: opts.onEvent,
      onStatus: (s) => opts.banner?.report(key, s),
      signal: opts.signal,
    });
  } finally {
    opts.banner?.clear(key);
  }
}

/** Creates a job (CreateJob), then follows it; resolves with its final event. */
export async function createAndFollow(
  api: Api,
  request: MessageInitShape<typeof CreateJobRequestSchema>,
  opts: FollowOptions,
): Promise<JobEvent> {
  // Requests carry a request_id, so retrying after a lost connection cannot create a
  // second job.
  const key = "create job";
  let resp;
  try {
    resp = await retrying(() => api.jobs.createJob(request, { signal: opts.signal }), {
      signal: opts.signal,
      onStatus: (s) => opts.banner?.report(key, s),
    });
  } finally {
    opts.banner?.clear(key);
  }
  const job = resp.job;
  if (!job) throw new Error("CreateJob returned no job");
  opts.onCreated?.(job);
  return followJob(api, job.id, 0n, opts);
}

/** A random idempotency key, so a retried CreateJob does not create a second job. */
export function requestId(): string {
  const c = globalThis.crypto;
  if (c && "randomUUID" in c) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}
