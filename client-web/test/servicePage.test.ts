// @vitest-environment happy-dom
// The Service page built in a DOM (happy-dom) with a fake GET /metrics (the AppContext's
// `metrics`) and fake timers: two polls of the fixture exposition fill the workers
// table, the queue bars, the throughput charts and the latency table; 401 and 403 show
// their message instead of the page and stop polling; a lost connection keeps polling.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { AppContext } from "../src/page.js";
import { MetricsHttpError } from "../src/lib/metricsFetch.js";
import { servicePage } from "../src/pages/service/index.js";
import { SCRAPE_1, SCRAPE_2, SCRAPE_EMPTY } from "./fixtures/exposition.js";

/** A page whose scrapes answer from `answers` in turn (the last one again when they run out). */
function setup(answers: (string | Error)[]) {
  let calls = 0;
  const metrics = vi.fn(async () => {
    const a = answers[Math.min(calls++, answers.length - 1)];
    if (a instanceof Error) throw a;
    return a;
  });
  const page = servicePage({ metrics } as unknown as AppContext);
  document.body.replaceChildren(page.el);
  const $ = (sel: string) => page.el.querySelector(sel) as HTMLElement;
  const $$ = (sel: string) => [...page.el.querySelectorAll(sel)] as HTMLElement[];
  const cell = (row: HTMLElement, col: string) => row.querySelector(`[data-col=${col}]`)?.textContent;
  return { page, metrics, $, $$, cell };
}

/** Lets the pending scrape resolve and advances the clock by `ms`. */
const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

describe("service page", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date(2025, 0, 1, 12, 0, 0));
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("renders the workers table and the queue bars from one scrape", async () => {
    const { page, $, $$, cell } = setup([SCRAPE_1]);
    page.show?.([]);
    await tick();
    expect($("[data-testid=service-error]").hidden).toBe(true);
    expect($("[data-testid=summary]").textContent).toBe("2 workers · 6 slots · 4 running · 5 queued");

    const rows = $$("[data-testid=worker]");
    expect(rows.map((r) => [cell(r, "name"), cell(r, "device"), cell(r, "slots"), cell(r, "running")])).toEqual([
      ["cpu-box", "cpu", "2", "1"],
      ['gpu "big" \\ one', "cuda:0", "4", "3"],
    ]);
    expect(rows[0].dataset.device).toBe("cpu");
    expect(rows[1].dataset.worker).toBe("s-2");
    expect(cell(rows[1], "kv-cache")).toBe("1\u2009536");
    // One poll: no interval to average over yet.
    expect(cell(rows[0], "batch")).toBe("—");
    expect(cell(rows[0], "images")).toBe("—");
    expect(cell(rows[1], "batch")).toBe("minilm —tiny-llm —");

    const bars = $$("[data-testid=queue]");
    expect(bars.map((b) => [b.dataset.model, b.dataset.state, b.querySelector(".bar-value")?.textContent])).toEqual([
      ["digits", "running", "1"],
      ["digits", "queued", "0"],
      ["tiny-llm", "running", "3"],
      ["tiny-llm", "queued", "5"],
    ]);
    // One scale: the largest count (5) fills its track.
    const widths = bars.map((b) => (b.querySelector(".bar-fill") as HTMLElement).style.width);
    expect(widths).toEqual(["20.0%", "0.0%", "60.0%", "100.0%"]);
    expect($("[data-testid=throughput]").dataset.polls).toBe("1");
    page.hide?.();
  });

  it("computes rates, batch means and latency from the second poll on", async () => {
    const { page, metrics, $, $$, cell } = setup([SCRAPE_1, SCRAPE_2]);
    page.show?.([]);
    await tick();
    await tick(2000);
    expect(metrics).toHaveBeenCalledTimes(2);
    const rows = $$("[data-testid=worker]");
    expect(cell(rows[0], "images")).toBe("200");
    expect(cell(rows[1], "batch")).toBe("minilm —tiny-llm 3");

    const throughput = $("[data-testid=throughput]");
    expect(throughput.dataset.polls).toBe("2");
    expect(throughput.dataset.samples).toBe("1");
    const points = (testId: string, series: string) =>
      throughput.querySelector(`[data-testid=${testId}] g[data-series=${series}]`)?.getAttribute("data-points");
    expect(points("throughput-jobs", "succeeded")).toBe("1");
    expect(points("throughput-tokens", "generated")).toBe("1");
    expect(points("throughput-texts", "texts")).toBe("1");
    expect(throughput.querySelector("[data-testid=throughput-jobs] .legend")?.textContent).toContain("succeeded 2/s");
    expect(throughput.querySelector("[data-testid=throughput-tokens] .legend")?.textContent).toContain("generated 200/s");

    const latency = $("[data-testid=latency]");
    const tiny = latency.querySelector("tr[data-model=tiny-llm]") as HTMLElement;
    expect(["finished", "latency-p50", "latency-p95", "wait-p50", "wait-p95", "first-output-p50", "per-token-p50"].map((c) => cell(tiny, c))).toEqual([
      "4",
      "1.5 s",
      "3.6 s",
      "10 ms",
      "91 ms",
      "150 ms",
      "—",
    ]);
    expect(cell(latency.querySelector("tr[data-model=minilm]") as HTMLElement, "latency-p50")).toBe("—");

    // Polling stops with the page.
    page.hide?.();
    await tick(10_000);
    expect(metrics).toHaveBeenCalledTimes(2);
  });

  it("copes with an exposition that has no workers and no jobs", async () => {
    const { page, $, $$ } = setup([SCRAPE_EMPTY]);
    page.show?.([]);
    await tick();
    expect($$("[data-testid=worker]")).toHaveLength(0);
    expect($("[data-testid=workers-table] td.empty").textContent).toBe("No worker is connected");
    expect($$("[data-testid=queue]")).toHaveLength(0);
    expect($("[data-testid=queue-bars]").textContent).toBe("No jobs queued or running");
    expect($("[data-testid=latency-table] td.empty").textContent).toBe("No job has run yet");
    page.hide?.();
  });

  it("shows the 401 message instead of the page, and stops polling", async () => {
    const { page, metrics, $ } = setup([new MetricsHttpError(401, "missing key", false)]);
    page.show?.([]);
    await tick();
    const error = $("[data-testid=service-error]");
    expect(error.hidden).toBe(false);
    expect(error.textContent).toMatch(/^Sign in with an API key \(HTTP 401: missing key\)\. .*admin or viewer key/);
    expect($(".service").hidden).toBe(true);
    await tick(10_000);
    expect(metrics).toHaveBeenCalledTimes(1);
    page.hide?.();
  });

  it("shows the 403 message instead of the page, also after it was shown", async () => {
    const { page, $ } = setup([SCRAPE_1, new MetricsHttpError(403, "role submitter may not read metrics", true)]);
    page.show?.([]);
    await tick();
    expect($(".service").hidden).toBe(false);
    await tick(2000);
    const error = $("[data-testid=service-error]");
    expect(error.textContent).toMatch(/^Your key's role does not allow this \(HTTP 403: role submitter may not read metrics\)/);
    expect($(".service").hidden).toBe(true);
    page.hide?.();
  });

  it("says when the service cannot be reached, keeps the last picture and recovers", async () => {
    const { page, metrics, $, $$ } = setup([SCRAPE_1, new TypeError("Failed to fetch"), SCRAPE_2]);
    page.show?.([]);
    await tick();
    await tick(2000);
    const error = $("[data-testid=service-error]");
    expect(error.textContent).toBe("Cannot reach the service: Failed to fetch");
    expect($(".service").hidden).toBe(false);
    expect($$("[data-testid=worker]")).toHaveLength(2);
    expect($("[data-testid=service-status]").textContent).toBe("not updated");
    await tick(2000);
    expect(metrics).toHaveBeenCalledTimes(3);
    expect(error.hidden).toBe(true);
    expect($("[data-testid=throughput]").dataset.polls).toBe("2");
    page.hide?.();
  });
});
