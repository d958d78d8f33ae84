// Formatting helpers: error text, enum names, durations, numbers. Pure, no DOM.
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { JobKind, JobState } from "../gen/deephardway/v1/jobs_pb.js";
import { authErrorText } from "./auth.js";

/** "InvalidArgument" -> "INVALID_ARGUMENT". */
export function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  if (!name) return `CODE_${code}`;
  return name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Code name from a google.rpc.Code number (google.rpc.Status.code). */
export function rpcCodeName(code: number): string {
  return codeName(code as Code);
}

/** A failed job's error (a google.rpc.Status: the `failed` event, Job.error) as "CODE_NAME: message". */
export function failureText(failure: { code: number; message: string }): string {
  return `${rpcCodeName(failure.code)}: ${failure.message}`;
}

/**
 * A readable message for any error: "CODE_NAME: message" for ConnectErrors, but the
 * auth errors read "Sign in with an API key (UNAUTHENTICATED: …)", "The API key was
 * refused (UNAUTHENTICATED: …)" and "Your key's role does not allow this
 * (PERMISSION_DENIED: …)" (lib/auth.ts).
 */
export function errorText(err: unknown): string {
  const auth = authErrorText(err);
  if (auth) return auth;
  if (err instanceof ConnectError) {
    const msg = err.rawMessage || "(no message)";
    return `${codeName(err.code)}: ${msg}`;
  }
  if (err instanceof Error) return err.message || err.name || "error";
  const s = String(err);
  return s || "unknown error";
}

/** JOB_KIND_GENERATE -> "generate". */
export function kindName(kind: JobKind): string {
  const name = JobKind[kind] as string | undefined;
  return name ? name.toLowerCase() : `kind ${kind}`;
}

/** JOB_STATE_RUNNING -> "running". */
export function stateName(state: JobState): string {
  const name = JobState[state] as string | undefined;
  return name ? name.toLowerCase() : `state ${state}`;
}

export function isFinished(state: JobState): boolean {
  return state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED;
}

/** Milliseconds since the epoch, or undefined for an unset timestamp. */
export function tsMs(ts: Timestamp | undefined): number | undefined {
  if (!ts) return undefined;
  if (ts.seconds === 0n && ts.nanos === 0) return undefined;
  return timestampMs(ts);
}

/** 950 -> "950 ms", 12_300 -> "12.3 s", 125_000 -> "2m 05s", 7_500_000 -> "2h 05m". */
export function formatDuration(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return "";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.floor(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, "0")}m`;
  return `${m}m ${String(sec).padStart(2, "0")}s`;
}

/** 0.4567 -> "45.7%"; clamped to 0..100. */
export function formatPercent(fraction: number): string {
  const f = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0));
  const p = f * 100;
  return `${p === 100 || p === 0 ? p.toFixed(0) : p.toFixed(1)}%`;
}

/** Tokens per second, or undefined when it cannot be computed. */
export function tokensPerSecond(tokens: number, ms: number | undefined): number | undefined {
  if (ms === undefined || !(ms > 0) || !(tokens >= 0)) return undefined;
  return tokens / (ms / 1000);
}

/** How long a job has run (or waited, when queued), given the current time. */
export function jobDurationMs(
  job: { state: JobState; createTime?: Timestamp; startTime?: Timestamp; endTime?: Timestamp },
  now: number,
): number | undefined {
  const created = tsMs(job.createTime);
  const started = tsMs(job.startTime);
  const finished = tsMs(job.endTime);
  if (job.state === JobState.QUEUED) return created === undefined ? undefined : now - created;
  if (started === undefined) {
    // Cancelled or failed while queued: time from submission to the end.
    if (finished !== undefined && created !== undefined) return finished - created;
    return undefined;
  }
  return (finished ?? now) - started;
}
