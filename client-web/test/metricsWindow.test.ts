import { describe, expect, it } from "vitest";
import { parseScrape } from "../src/lib/openmetrics.js";
import {
  bucketIncrease,
  counterIncrease,
  histogramQuantile,
  increase,
  increaseBy,
  observations,
  rate,
  Ring,
  SampleWindow,
  type Snapshot,
} from "../src/lib/metricsWindow.js";
import { SCRAPE_1, SCRAPE_2 } from "./fixtures/exposition.js";

const snap = (t: number, text: string): Snapshot => ({ t, scrape: parseScrape(text) });

describe("ring buffer", () => {
  it("keeps the latest items, oldest first", () => {
    const r = new Ring<number>(3);
    expect(r.toArray()).toEqual([]);
    expect(r.fromEnd(0)).toBeUndefined();
    for (const n of [1, 2]) r.push(n);
    expect(r.toArray()).toEqual([1, 2]);
    for (const n of [3, 4, 5]) r.push(n);
    expect(r.toArray()).toEqual([3, 4, 5]);
    expect(r.size).toBe(3);
    expect(r.fromEnd(0)).toBe(5);
    expect(r.fromEnd(2)).toBe(3);
    expect(r.fromEnd(3)).toBeUndefined();
    r.clear();
    expect(r.size).toBe(0);
    expect(() => new Ring(0)).toThrow();
  });
});

describe("sample window", () => {
  it("finds where a look back starts", () => {
    const w = new SampleWindow(60_000, 2000);
    expect(w.baseFor(60_000)).toBeUndefined();
    w.push(snap(0, "x 1"));
    expect(w.baseFor(60_000)).toBeUndefined(); // one snapshot: nothing to compare with
    for (let t = 2000; t <= 70_000; t += 2000) w.push(snap(t, "x 1"));
    expect(w.latest()?.t).toBe(70_000);
    expect(w.previous()?.t).toBe(68_000);
    // The newest at least a minute older than the latest.
    expect(w.baseFor(60_000)?.t).toBe(10_000);
    // A look back longer than what is kept starts at the oldest kept.
    expect(w.baseFor(600_000)?.t).toBe(70_000 - (w.size - 1) * 2000);
    expect(w.size).toBe(34);
  });
});

describe("counters", () => {
  it("treats a counter that went down as reset", () => {
    expect(counterIncrease(100, 110)).toBe(10);
    expect(counterIncrease(110, 4)).toBe(4); // restarted: counted 4 since
    expect(counterIncrease(undefined, 7)).toBe(7); // new series
    expect(counterIncrease(5, 5)).toBe(0);
  });

  it("computes rates between polls, series by series, across a restart", () => {
    const t0 = snap(0, 'c_total{m="a"} 100\nc_total{m="b"} 50');
    const t1 = snap(2000, 'c_total{m="a"} 110\nc_total{m="b"} 60');
    // The service restarted: a counted 4 since, b is new again at 6, and c appeared.
    const t2 = snap(4000, 'c_total{m="b"} 6\nc_total{m="a"} 4\nc_total{m="c"} 2');
    expect(rate(t0, t1, "c_total")).toBe(10); // (10 + 10) / 2 s
    expect(rate(t1, t2, "c_total")).toBe(6); // (4 + 6 + 2) / 2 s
    expect(rate(t1, t2, "c_total", { m: "a" })).toBe(2);
    expect(rate(t0, t1, "missing_total")).toBeUndefined();
    expect(rate(t1, t1, "c_total")).toBeUndefined(); // no time between
    // One series' reset does not hide another's growth.
    const t3 = snap(6000, 'c_total{m="a"} 1\nc_total{m="b"} 16\nc_total{m="c"} 2');
    expect(increase(t2.scrape, t3.scrape, "c_total")).toBe(11);
    expect([...increaseBy(t2.scrape, t3.scrape, "c_total", "m")]).toEqual([
      ["a", 1],
      ["b", 10],
      ["c", 0],
    ]);
  });
});

describe("histogram quantile", () => {
  // 10 observations: 2 up to 0.1, 4 in (0.1, 0.2], 2 in (0.2, 0.4], 2 above 0.4.
  const buckets = [
    { le: 0.2, count: 6 },
    { le: 0.1, count: 2 },
    { le: Infinity, count: 10 },
    { le: 0.4, count: 8 },
  ];

  it("interpolates linearly inside the bucket holding the rank, as histogram_quantile", () => {
    // rank 5: bucket (0.1, 0.2] holds ranks 2..6 -> 0.1 + 0.1 × (5 − 2) / 4
    expect(histogramQuantile(0.5, buckets)).toBeCloseTo(0.175, 12);
    // rank 1: first bucket, from 0 -> 0.1 × 1 / 2
    expect(histogramQuantile(0.1, buckets)).toBeCloseTo(0.05, 12);
    // rank 7: (0.2, 0.4] holds 6..8 -> 0.2 + 0.2 × 1 / 2
    expect(histogramQuantile(0.7, buckets)).toBeCloseTo(0.3, 12);
    // rank 8: the top of (0.2, 0.4]
    expect(histogramQuantile(0.8, buckets)).toBeCloseTo(0.4, 12);
    // rank 9.5 is in the +Inf bucket: the highest finite bound
    expect(histogramQuantile(0.95, buckets)).toBe(0.4);
    expect(histogramQuantile(0, buckets)).toBe(0);
    expect(histogramQuantile(1, buckets)).toBe(0.4);
  });

  it("is NaN without observations, without +Inf or with one bucket; ±Inf outside 0..1", () => {
    expect(histogramQuantile(0.5, [{ le: 1, count: 0 }, { le: Infinity, count: 0 }])).toBeNaN();
    expect(histogramQuantile(0.5, [{ le: 1, count: 3 }, { le: 2, count: 4 }])).toBeNaN();
    expect(histogramQuantile(0.5, [{ le: Infinity, count: 4 }])).toBeNaN();
    expect(histogramQuantile(0.5, [])).toBeNaN();
    expect(histogramQuantile(-0.1, buckets)).toBe(-Infinity);
    expect(histogramQuantile(1.1, buckets)).toBe(Infinity);
  });

  it("keeps counts cumulative and handles a first bound at or below 0", () => {
    // 0.2's count below 0.1's (a racing scrape) is raised to 3: rank 2 in the first bucket.
    const racy = [
      { le: 0.1, count: 3 },
      { le: 0.2, count: 2 },
      { le: Infinity, count: 4 },
    ];
    expect(histogramQuantile(0.5, racy)).toBeCloseTo((0.1 * 2) / 3, 12);
    const zero = [
      { le: 0, count: 5 },
      { le: 1, count: 10 },
      { le: Infinity, count: 10 },
    ];
    expect(histogramQuantile(0.25, zero)).toBe(0);
    expect(histogramQuantile(0.75, zero)).toBeCloseTo(0.5, 12);
  });

  it("sums bucket increases per model over kinds and outcomes, and the quantiles match hand-computed values", () => {
    const a = snap(0, SCRAPE_1).scrape;
    const b = snap(2000, SCRAPE_2).scrape;
    const latency = bucketIncrease(a, b, "deephardway_job_latency_seconds", ["model"]);
    const tiny = [...latency.values()].find((g) => g.labels.model === "tiny-llm");
    // succeeded moved by 0, 1, 3, 4, 4; failed did not move.
    expect(tiny?.buckets).toEqual([
      { le: 0.5, count: 0 },
      { le: 1, count: 1 },
      { le: 2, count: 3 },
      { le: 4, count: 4 },
      { le: Infinity, count: 4 },
    ]);
    expect(observations(tiny!.buckets)).toBe(4);
    // rank 2 in (1, 2] (ranks 1..3): 1 + 1 × 1/2; rank 3.8 in (2, 4] (3..4): 2 + 2 × 0.8
    expect(histogramQuantile(0.5, tiny!.buckets)).toBeCloseTo(1.5, 12);
    expect(histogramQuantile(0.95, tiny!.buckets)).toBeCloseTo(3.6, 12);
    const minilm = [...latency.values()].find((g) => g.labels.model === "minilm");
    expect(observations(minilm!.buckets)).toBe(0);
    expect(histogramQuantile(0.5, minilm!.buckets)).toBeNaN();
  });

  it("counts a reset histogram's buckets in full", () => {
    const a = parseScrape('h_bucket{le="1"} 10\nh_bucket{le="+Inf"} 12');
    const b = parseScrape('h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 3');
    const g = [...bucketIncrease(a, b, "h", []).values()][0];
    expect(g.buckets).toEqual([
      { le: 1, count: 1 },
      { le: Infinity, count: 3 },
    ]);
    // A series that was not there before counts from 0.
    const c = parseScrape('h_bucket{le="1",x="new"} 2\nh_bucket{le="+Inf",x="new"} 2\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 4');
    expect([...bucketIncrease(b, c, "h", []).values()][0].buckets).toEqual([
      { le: 1, count: 2 },
      { le: Infinity, count: 3 },
    ]);
  });
});
