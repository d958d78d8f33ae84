// Reading the service's metrics (GET /metrics, OpenMetrics text) with the tab's API key,
// and the readable texts of what can go wrong: the endpoint answers 401 without a key
// or with an unknown one, 403 for a key whose role may not read metrics (it takes an
// admin or viewer key). Not grpc-web, so the connect interceptor of lib/auth.ts does not
// see it: the key is attached here. `fetch` is injected, so this is testable without a
// network.
import { PERMISSION_TEXT, REFUSED_TEXT, SIGN_IN_TEXT } from "./auth.js";

/** GET /metrics answered with an error status. */
export class MetricsHttpError extends Error {
  constructor(
    readonly status: number,
    /** The service's message (the body's first line). */
    readonly detail: string,
    /** Whether the request carried a key. */
    readonly keySent: boolean,
  ) {
    super(`GET /metrics: HTTP ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "MetricsHttpError";
  }

  /** 401 or 403: no other key, no scrape. */
  get isAuth(): boolean {
    return this.status === 401 || this.status === 403;
  }
}

/** The endpoint answered, but not with metrics (e.g. an HTML page from an older service). */
export class NotMetricsError extends Error {
  constructor(readonly contentType: string) {
    super(`GET /metrics answered ${contentType || "no content type"}, not metrics: does this service export them?`);
    this.name = "NotMetricsError";
  }
}

/** Why the page needs the key it asks for. */
export const METRICS_ROLE_TEXT = "The Service page reads the service's metrics, which takes an admin or viewer key.";

/** Reads the metrics text; rejects with MetricsHttpError, NotMetricsError, or fetch's own error (no connection). */
export type MetricsFetcher = (signal?: AbortSignal) => Promise<string>;

export interface MetricsFetcherOptions {
  /** The service (no trailing slash): the page's origin, or VITE_DEEPHARDWAY_URL. */
  baseUrl: string;
  /** The key to send, read at every call; none means no authorization header. */
  key(): string | undefined;
  /** Called on 401 / 403 with the key the request carried (as lib/auth.ts's onAuthError). */
  onAuthError?(status: number, key: string | undefined): void;
  fetch?: typeof fetch;
}

export function metricsFetcher(opts: MetricsFetcherOptions): MetricsFetcher {
  const url = `${opts.baseUrl.replace(/\/+$/, "")}/metrics`;
  return async (signal) => {
    const key = opts.key();
    const headers: Record<string, string> = { accept: "application/openmetrics-text;version=1.0.0, text/plain;q=0.5" };
    if (key) headers.authorization = `Bearer ${key}`;
    const doFetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
    const res = await doFetch(url, { headers, signal, cache: "no-store" });
    const text = await res.text();
    if (!res.ok) {
      if (res.status === 401 || res.status === 403) opts.onAuthError?.(res.status, key);
      throw new MetricsHttpError(res.status, firstLine(text), Boolean(key));
    }
    const type = res.headers.get("content-type") ?? "";
    if (!/^(application\/openmetrics-text|text\/plain)\b/i.test(type)) throw new NotMetricsError(type);
    return text;
  };
}

function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 200 ? `${line.slice(0, 200)}…` : line;
}

/**
 * The message for a failed scrape: for 401 "Sign in with an API key" (no key sent) or
 * "The API key was refused", for 403 "Your key's role does not allow this", each with
 * the status and the service's message and why the page needs a key; "Cannot reach the
 * service" for a failed fetch; the error's own text otherwise.
 */
export function metricsErrorText(err: unknown): string {
  if (err instanceof MetricsHttpError) {
    const why = (text: string) => `${text} (HTTP ${err.status}${err.detail ? `: ${err.detail}` : ""}). ${METRICS_ROLE_TEXT}`;
    if (err.status === 401) return why(err.keySent ? REFUSED_TEXT : SIGN_IN_TEXT);
    if (err.status === 403) return why(PERMISSION_TEXT);
    return err.message;
  }
  if (err instanceof NotMetricsError) return err.message;
  // fetch rejects with a TypeError ("Failed to fetch") when there is no answer at all.
  const detail = err instanceof Error ? err.message || err.name : String(err);
  return `Cannot reach the service: ${detail || "no answer"}`;
}
