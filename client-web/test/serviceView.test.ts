import { describe, expect, it } from "vitest";
import { parseScrape } from "../src/lib/openmetrics.js";
import type { Snapshot } from "../src/lib/metricsWindow.js";
import {
  clusterSummary,
  formatAmount,
  formatCount,
  formatSeconds,
  isUsed,
  latencyRows,
  queueBars,
  summaryText,
  throughputSample,
  workerRows,
} from "../src/lib/serviceView.js";
import { SCRAPE_1, SCRAPE_2, SCRAPE_EMPTY } from "./fixtures/exposition.js";

const s1: Snapshot = { t: 10_000, scrape: parseScrape(SCRAPE_1) };
const s2: Snapshot = { t: 12_000, scrape: parseScrape(SCRAPE_2) };
const empty: Snapshot = { t: 12_000, scrape: parseScrape(SCRAPE_EMPTY) };

describe("service view", () => {
  it("makes a row per worker with batch means, KV-cache tokens and training images per second", () => {
    expect(workerRows(s2, s1)).toEqual([
      {
        worker: "s-1",
        name: "cpu-box",
        device: "cpu",
        slots: 2,
        running: 1,
        batches: [],
        kvCacheTokens: undefined,
        trainingImagesPerSecond: 200, // 400 images in 2 s
      },
      {
        worker: "s-2",
        name: 'gpu "big" \\ one',
        device: "cuda:0",
        slots: 4,
        running: 3,
        // tiny-llm: 30 sequences over 10 steps; minilm: no batch in the interval.
        batches: [{ model: "minilm", mean: undefined }, { model: "tiny-llm", mean: 3 }],
        kvCacheTokens: 1536,
        trainingImagesPerSecond: undefined,
      },
    ]);
    // The first poll has nothing to compare with.
    const first = workerRows(s1);
    expect(first[1].batches).toEqual([{ model: "minilm" }, { model: "tiny-llm" }]);
    expect(first[0].trainingImagesPerSecond).toBeUndefined();
    expect(workerRows(empty, s2)).toEqual([]);
  });

  it("summarizes the cluster and makes queue bars of the models with jobs", () => {
    expect(clusterSummary(s2.scrape)).toEqual({ workers: 2, slots: 6, running: 4, queued: 5 });
    expect(summaryText(clusterSummary(s2.scrape))).toBe("2 workers · 6 slots · 4 running · 5 queued");
    expect(summaryText(clusterSummary(empty.scrape))).toBe("0 workers · 0 running · 0 queued");
    expect(queueBars(s2.scrape)).toEqual([
      { model: "digits", state: "running", value: 1 },
      { model: "digits", state: "queued", value: 0 },
      { model: "tiny-llm", state: "running", value: 3 },
      { model: "tiny-llm", state: "queued", value: 5 },
    ]);
    expect(queueBars(empty.scrape)).toEqual([]);
  });

  it("computes throughput between polls, a missing counter as 0", () => {
    expect(throughputSample(s1, s2)).toEqual({
      t: 12_000,
      finished: { succeeded: 2, failed: 0, cancelled: 0 },
      generatedTokens: 200,
      promptTokens: 50,
      embeddedTexts: 10,
    });
    expect(throughputSample(s2, { ...empty, t: 14_000 })).toEqual({
      t: 14_000,
      finished: { succeeded: 0, failed: 0, cancelled: 0 },
      generatedTokens: 0,
      promptTokens: 0,
      embeddedTexts: 0,
    });
    expect(throughputSample(s2, s2)).toBeUndefined();
  });

  it("computes latency quantiles per model over the window", () => {
    const rows = latencyRows(s1, s2);
    expect(rows.map((r) => r.model)).toEqual(["minilm", "tiny-llm"]);
    const [minilm, tiny] = rows;
    expect(minilm).toEqual({ model: "minilm", finished: 0 });
    expect(tiny.finished).toBe(4);
    expect(tiny.latencyP50).toBeCloseTo(1.5, 9);
    expect(tiny.latencyP95).toBeCloseTo(3.6, 9);
    // queue wait increases 2, 4, 4, 4 over le 0.01, 0.1, 1, +Inf: rank 2 -> 0.01; rank 3.8 -> 0.01 + 0.09 × 0.9
    expect(tiny.queueWaitP50).toBeCloseTo(0.01, 9);
    expect(tiny.queueWaitP95).toBeCloseTo(0.091, 9);
    // first output 0, 2, 2 over le 0.1, 0.2, +Inf: rank 1 -> 0.1 + 0.1 × 1/2
    expect(tiny.firstOutputP50).toBeCloseTo(0.15, 9);
    expect(tiny.perTokenP50).toBeUndefined();
    // Without a base (the first poll) every quantile is missing, the rows are there.
    expect(latencyRows(undefined, s2).map((r) => [r.model, r.latencyP50])).toEqual([
      ["minilm", undefined],
      ["tiny-llm", undefined],
    ]);
    expect(latencyRows(s2, empty)).toEqual([]);
  });

  it("keeps only the samples the page reads", () => {
    expect(isUsed("deephardway_job_latency_seconds_bucket")).toBe(true);
    expect(isUsed("deephardway_worker_info")).toBe(true);
    expect(isUsed("deephardway_jobs_finished_total")).toBe(true);
    expect(isUsed("deephardway_store_operation_seconds_bucket")).toBe(false);
    expect(isUsed("deephardway_open_streams")).toBe(false);
  });

  it("formats numbers, and a missing one as a dash", () => {
    expect(formatSeconds(1.5)).toBe("1.5 s");
    expect(formatSeconds(0.091)).toBe("91 ms");
    expect(formatSeconds(0.00042)).toBe("0.42 ms");
    expect(formatSeconds(undefined)).toBe("—");
    expect(formatSeconds(NaN)).toBe("—");
    expect(formatAmount(3)).toBe("3");
    expect(formatAmount(2.456)).toBe("2.46");
    expect(formatAmount(12.34)).toBe("12.3");
    expect(formatAmount(1234.5)).toBe("1235");
    expect(formatAmount(0.125)).toBe("0.13");
    expect(formatAmount(0)).toBe("0");
    expect(formatAmount(undefined)).toBe("—");
    expect(formatCount(1536)).toBe("1\u2009536");
    expect(formatCount(undefined)).toBe("—");
  });
});
