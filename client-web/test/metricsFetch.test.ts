import { describe, expect, it } from "vitest";
import { MetricsHttpError, metricsErrorText, metricsFetcher, NotMetricsError } from "../src/lib/metricsFetch.js";

const OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/** A fetch that answers `status` with `body`, recording the requests. */
function fakeFetch(status: number, body: string, contentType = OPENMETRICS) {
  const calls: { url: string; headers: Record<string, string> }[] = [];
  const fn = (async (url: string, init?: RequestInit) => {
    calls.push({ url, headers: { ...(init?.headers as Record<string, string>) } });
    return new Response(body, { status, headers: { "content-type": contentType } });
  }) as unknown as typeof fetch;
  return { fn, calls };
}

describe("metrics fetcher", () => {
  it("sends the key as a bearer token and returns the text", async () => {
    const f = fakeFetch(200, "deephardway_workers_connected 1\n# EOF\n");
    const get = metricsFetcher({ baseUrl: "http://svc:50051/", key: () => "k-1", fetch: f.fn });
    expect(await get()).toContain("deephardway_workers_connected 1");
    expect(f.calls[0].url).toBe("http://svc:50051/metrics");
    expect(f.calls[0].headers.authorization).toBe("Bearer k-1");
  });

  it("sends no authorization header when signed out", async () => {
    const f = fakeFetch(200, "x 1\n", "text/plain; version=0.0.4");
    await metricsFetcher({ baseUrl: "http://svc", key: () => undefined, fetch: f.fn })();
    expect(f.calls[0].headers.authorization).toBeUndefined();
  });

  it("turns 401 and 403 into readable messages and reports them", async () => {
    const reported: [number, string | undefined][] = [];
    const run = async (status: number, key: string | undefined) => {
      const f = fakeFetch(status, "role submitter may not read metrics\n", "text/plain; charset=utf-8");
      const get = metricsFetcher({ baseUrl: "http://svc", key: () => key, fetch: f.fn, onAuthError: (s, k) => reported.push([s, k]) });
      return get().then(
        () => undefined,
        (err: unknown) => err,
      );
    };
    const signedOut = await run(401, undefined);
    expect(signedOut).toBeInstanceOf(MetricsHttpError);
    expect((signedOut as MetricsHttpError).isAuth).toBe(true);
    expect(metricsErrorText(signedOut)).toMatch(/^Sign in with an API key \(HTTP 401: .*\)\. .*admin or viewer key/);
    expect(metricsErrorText(await run(401, "old"))).toMatch(/^The API key was refused \(HTTP 401/);
    expect(metricsErrorText(await run(403, "sub"))).toBe(
      "Your key's role does not allow this (HTTP 403: role submitter may not read metrics). The Service page reads the service's metrics, which takes an admin or viewer key.",
    );
    expect(reported).toEqual([
      [401, undefined],
      [401, "old"],
      [403, "sub"],
    ]);
    const server = await run(500, "k");
    expect((server as MetricsHttpError).isAuth).toBe(false);
    expect(metricsErrorText(server)).toBe("GET /metrics: HTTP 500: role submitter may not read metrics");
  });

  it("refuses an answer that is not metrics, and says when the service cannot be reached", async () => {
    const html = fakeFetch(200, "<!doctype html>", "text/html");
    const err = await metricsFetcher({ baseUrl: "http://svc", key: () => undefined, fetch: html.fn })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotMetricsError);
    expect(metricsErrorText(err)).toMatch(/answered text\/html, not metrics/);
    const down = (async () => {
      throw new TypeError("Failed to fetch");
    }) as unknown as typeof fetch;
    const err2 = await metricsFetcher({ baseUrl: "http://svc", key: () => undefined, fetch: down })().catch((e: unknown) => e);
    expect(metricsErrorText(err2)).toBe("Cannot reach the service: Failed to fetch");
  });
});
