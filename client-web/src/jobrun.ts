// Submit a job and follow its events to the end, resuming after lost connections.
import type { Api } from "./api.js";
import type { Job, JobEvent, SubmitRequest } from "./gen/deephardway/v1/jobs_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { SubmitRequestSchema } from "./gen/deephardway/v1/jobs_pb.js";
import type { ConnectionBanner } from "./connection.js";
import { retrying, watchResumable } from "./lib/watch.js";

export interface FollowOptions {
  onSubmitted?: (job: Job) => void;
  onEvent: (ev: JobEvent) => void;
  signal?: AbortSignal;
  banner?: ConnectionBanner;
  /** Name shown in the connection banner. */
  label?: string;
}

/** Follows an existing job from after `afterSeq` to its final event. */
export async function followJob(api: Api, jobId: string, afterSeq: bigint, opts: FollowOptions): Promise<JobEvent> {
  const key = opts.label ?? `job ${jobId}`;
  try {
    return await watchResumable({
      afterSeq,
      open: (after, signal) => api.jobs.watch({ jobId, afterSeq: after }, { signal }),
      onEvent: opts.onEvent,
      onStatus: (s) => opts.banner?.report(key, s),
      signal: opts.signal,
    });
  } finally {
    opts.banner?.clear(key);
  }
}

/** Submits a job, then follows it; resolves with its final event. */
export async function submitAndFollow(
  api: Api,
  request: MessageInitShape<typeof SubmitRequestSchema> | SubmitRequest,
  opts: FollowOptions,
): Promise<JobEvent> {
  // Submits carry a request_id, so retrying after a lost connection cannot create a
  // second job.
  const key = "submit";
  let resp;
  try {
    resp = await retrying(() => api.jobs.submit(request, { signal: opts.signal }), {
      signal: opts.signal,
      onStatus: (s) => opts.banner?.report(key, s),
    });
  } finally {
    opts.banner?.clear(key);
  }
  const job = resp.job;
  if (!job) throw new Error("Submit returned no job");
  opts.onSubmitted?.(job);
  return followJob(api, job.id, 0n, opts);
}

/** A random idempotency key, so a retried Submit does not create a second job. */
export function requestId(): string {
  const c = globalThis.crypto;
  if (c && "randomUUID" in c) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}
