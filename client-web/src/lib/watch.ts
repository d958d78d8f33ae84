// Resumable job watching: bookkeeping for JobService.WatchJob with after_seq, retry with
// backoff after a lost connection. The stream itself is injected, so this is testable
// without a network.
import { Code, ConnectError } from "@connectrpc/connect";
import type { JobEvent, QueueStatus } from "../gen/deephardway/v1/jobs_pb.js";

/** Whether an event is a job's last one (result, failed or cancelled). */
export function isFinalEvent(ev: JobEvent): boolean {
  const c = ev.event.case;
  return c === "result" || c === "failed" || c === "cancelled";
}

/**
 * The events of a WatchJob (or RunJob) stream: each response's `event`. A response
 * without one carries the queued job's live place in line (`queueStatus`: no seq, never
 * replayed), which goes to `onQueueStatus`; any other is skipped.
 */
export async function* jobEvents(
  stream: AsyncIterable<{ event?: JobEvent; queueStatus?: QueueStatus }>,
  onQueueStatus?: (status: QueueStatus) => void,
): AsyncGenerator<JobEvent> {
  for await (const resp of stream) {
    if (resp.event) yield resp.event;
    else if (resp.queueStatus) onQueueStatus?.(resp.queueStatus);
  }
}

/** Tracks the last sequence number seen; drops duplicates and stale events. */
export class ResumeState {
  lastSeq = 0n;
  finished = false;

  /** Returns true when the event is new (seq above the last seen) and records it. */
  accept(ev: JobEvent): boolean {
    if (ev.seq <= this.lastSeq) return false;
    this.lastSeq = ev.seq;
    if (isFinalEvent(ev)) this.finished = true;
    return true;
  }
}

/** Errors worth retrying: the connection, not the request, was at fault. */
export function isRetryable(err: unknown): boolean {
  if (!(err instanceof ConnectError)) return true;
  switch (err.code) {
    case Code.Unknown: // fetch failures ("Failed to fetch", network changed)
    case Code.Unavailable:
    case Code.Internal: // a stream cut mid-message
    case Code.DeadlineExceeded:
    case Code.ResourceExhausted:
    case Code.Aborted:
      return true;
    default:
      return false;
  }
}

/** Exponential backoff with a cap: 500 ms, 1 s, 2 s, 4 s, ... up to maxMs. */
export function backoffMs(attempt: number, baseMs = 500, maxMs = 10_000): number {
  const a = Math.max(0, attempt);
  return Math.min(maxMs, baseMs * 2 ** Math.min(a, 20));
}

export type WatchStatus =
  | { kind: "connected" }
  | { kind: "retrying"; attempt: number; delayMs: number; error: unknown };

export interface ResumableOptions {
  /** Opens the stream of events after `afterSeq`. */
  open: (afterSeq: bigint, signal: AbortSignal) => AsyncIterable<JobEvent>;
  /** Called once per new event, in order. */
  onEvent: (ev: JobEvent) => void;
  /** Called when the connection is lost (with the retry plan) or (re)established. */
  onStatus?: (status: WatchStatus) => void;
  signal?: AbortSignal;
  /** Injected for tests. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Start after this sequence number (0 replays the whole log). */
  afterSeq?: bigint;
  /** The most attempts in a row without progress before giving up; default unlimited. */
  maxAttempts?: number;
}

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Follows a job until its final event, resuming after lost connections from the last
 * sequence number seen. Resolves with the final event; rejects with a non-retryable
 * error (or when aborted).
 */
export async function watchResumable(opts: ResumableOptions): Promise<JobEvent> {
  const state = new ResumeState();
  state.lastSeq = opts.afterSeq ?? 0n;
  const sleep = opts.sleep ?? abortableSleep;
  const signal = opts.signal ?? new AbortController().signal;
  let attempt = 0;
  let final: JobEvent | undefined;
  for (;;) {
    let progressed = false;
    try {
      let announced = false;
      for await (const ev of opts.open(state.lastSeq, signal)) {
        if (!announced) {
          announced = true;
          if (attempt > 0) opts.onStatus?.({ kind: "connected" });
        }
        if (!state.accept(ev)) continue;
        progressed = true;
        attempt = 0;
        opts.onEvent(ev);
        if (state.finished) {
          final = ev;
          break;
        }
      }
      if (final) return final;
      // The stream ended without a final event: treat as a lost connection.
      throw new ConnectError("the stream ended before the job finished", Code.Unavailable);
    } catch (err) {
      if (signal.aborted) throw signal.reason ?? err;
      if (!isRetryable(err)) throw err;
      if (progressed) attempt = 0;
      if (opts.maxAttempts !== undefined && attempt >= opts.maxAttempts) throw err;
      const delayMs = backoffMs(attempt);
      attempt++;
      opts.onStatus?.({ kind: "retrying", attempt, delayMs, error: err });
      await sleep(delayMs, signal);
    }
  }
}

/**
 * Calls `fn` until it succeeds, retrying retryable errors with backoff (at most
 * `maxAttempts` calls). Meant for idempotent unary calls, such as a CreateJob with a
 * request_id.
 */
export async function retrying<T>(
  fn: () => Promise<T>,
  opts: {
    maxAttempts?: number;
    signal?: AbortSignal;
    onStatus?: (status: WatchStatus) => void;
    sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  } = {},
): Promise<T> {
  const sleep = opts.sleep ?? abortableSleep;
  const max = opts.maxAttempts ?? 5;
  for (let attempt = 0; ; attempt++) {
    try {
      const v = await fn();
      if (attempt > 0) opts.onStatus?.({ kind: "connected" });
      return v;
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      if (!isRetryable(err) || attempt + 1 >= max) throw err;
      const delayMs = backoffMs(attempt);
      opts.onStatus?.({ kind: "retrying", attempt: attempt + 1, delayMs, error: err });
      await sleep(delayMs, opts.signal);
    }
  }
}
