import { describe, expect, it } from "vitest";
import { parseExposition, parseNumber, parseScrape, select, seriesKey, sumOf } from "../src/lib/openmetrics.js";
import { SCRAPE_1 } from "./fixtures/exposition.js";

describe("openmetrics parser", () => {
  it("reads a realistic exposition: comments skipped, labels in any order, escaped values, histogram buckets", () => {
    const samples = parseExposition(SCRAPE_1);
    expect(samples.some((s) => s.name.startsWith("#"))).toBe(false);
    expect(samples[0]).toEqual({ name: "deephardway_workers_connected", labels: {}, value: 2 });

    const infos = samples.filter((s) => s.name === "deephardway_worker_info");
    expect(infos.map((s) => s.labels)).toEqual([
      { worker: "s-1", name: "cpu-box", device: "cpu" },
      // name="gpu \"big\" \\ one": the quotes and the backslash unescaped.
      { device: "cuda:0", name: 'gpu "big" \\ one', worker: "s-2" },
    ]);

    const scrape = parseScrape(SCRAPE_1);
    const buckets = select(scrape, "deephardway_job_latency_seconds_bucket", { model: "tiny-llm", outcome: "succeeded" });
    expect(buckets.map((b) => [b.labels.le, b.value])).toEqual([
      ["0.5", 2],
      ["1.0", 5],
      ["2.0", 9],
      ["4.0", 10],
      ["+Inf", 10],
    ]);
    expect(select(scrape, "deephardway_job_latency_seconds_sum", { outcome: "failed" })[0].value).toBe(0.3);
    expect(sumOf(scrape, "deephardway_jobs", { state: "running" })).toBe(4);
    expect(sumOf(scrape, "deephardway_no_such_metric")).toBeUndefined();
    // The text ends with "# EOF", which is no sample.
    expect(samples[samples.length - 1].name).toBe("deephardway_time_to_first_output_seconds_bucket");
  });

  it("handles +Inf, NaN, exponents, \\n escapes, timestamps, exemplars, CRLF and odd spacing", () => {
    const text = [
      'a_total{x="1"} +Inf',
      "b NaN",
      "c -Inf 1700000000",
      'd{msg="line one\\nline two",path="C:\\\\dir",} 1.5e3',
      'e_bucket{le="0.25"} 7 # {trace_id="abc"} 0.2 1700000000.5',
      "f{} 3\r",
      "  g\t\t42  ",
      "# TYPE h counter",
      "",
    ].join("\n");
    const samples = parseExposition(text);
    expect(samples.map((s) => [s.name, s.value])).toEqual([
      ["a_total", Infinity],
      ["b", NaN],
      ["c", -Infinity],
      ["d", 1500],
      ["e_bucket", 7],
      ["f", 3],
      ["g", 42],
    ]);
    expect(samples[3].labels).toEqual({ msg: "line one\nline two", path: "C:\\dir" });
    expect(samples[4].labels).toEqual({ le: "0.25" });
  });

  it("skips lines that do not parse instead of failing", () => {
    const text = ['ok 1', 'bad{x="unterminated} 1', "bad2{x=1} 2", "bad3 abc", "bad4", "9starts_with_digit 1", "bad5{x=\"1\"}", "ok2 2"].join("\n");
    expect(parseExposition(text).map((s) => s.name)).toEqual(["ok", "ok2"]);
  });

  it("parses numbers strictly", () => {
    expect(parseNumber("0.005")).toBe(0.005);
    expect(parseNumber("+Inf")).toBe(Infinity);
    expect(parseNumber("inf")).toBe(Infinity);
    expect(parseNumber("-Inf")).toBe(-Infinity);
    expect(parseNumber("NaN")).toBeNaN();
    expect(parseNumber("-2")).toBe(-2);
    expect(parseNumber("1e-3")).toBe(0.001);
    expect(parseNumber("")).toBeUndefined();
    expect(parseNumber("0x10")).toBeUndefined();
    expect(parseNumber("1,5")).toBeUndefined();
  });

  it("keys series by their labels whatever their order", () => {
    expect(seriesKey({ a: "1", b: "2" })).toBe(seriesKey({ b: "2", a: "1" }));
    expect(seriesKey({ a: "1", le: "0.5" }, ["le"])).toBe(seriesKey({ a: "1", le: "+Inf" }, ["le"]));
    expect(seriesKey({ a: "1" })).not.toBe(seriesKey({ a: "2" }));
  });
});
