import { describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobKind, JobState } from "../src/gen/deephardway/v1/jobs_pb.js";
import {
  codeName,
  errorText,
  failureText,
  formatDuration,
  formatPercent,
  isFinished,
  jobDurationMs,
  kindName,
  rpcCodeName,
  stateName,
  tokensPerSecond,
  tsMs,
} from "../src/lib/format.js";
import { numberValue, parseSeed, parseStops, uintValue } from "../src/lib/params.js";

describe("format", () => {
  it("names codes like gRPC does", () => {
    expect(codeName(Code.InvalidArgument)).toBe("INVALID_ARGUMENT");
    expect(codeName(Code.DeadlineExceeded)).toBe("DEADLINE_EXCEEDED");
    expect(codeName(Code.Unavailable)).toBe("UNAVAILABLE");
    expect(rpcCodeName(13)).toBe("INTERNAL");
    expect(rpcCodeName(99)).toBe("CODE_99");
  });

  it("formats errors readably", () => {
    const e = new ConnectError("diagnostic.steps: must be 1 to 100000", Code.InvalidArgument);
    expect(errorText(e)).toBe("INVALID_ARGUMENT: diagnostic.steps: must be 1 to 100000");
    expect(errorText(new ConnectError("", Code.Unavailable))).toBe("UNAVAILABLE: (no message)");
    expect(errorText(new TypeError("Failed to fetch"))).toBe("Failed to fetch");
    expect(errorText("boom")).toBe("boom");
    expect(errorText(undefined)).toBe("undefined");
    expect(failureText({ code: 3, message: "diagnostic.steps: must be 1 to 100000" })).toBe(
      "INVALID_ARGUMENT: diagnostic.steps: must be 1 to 100000",
    );
    expect(failureText({ code: 13, message: "step 2 failed" })).toBe("INTERNAL: step 2 failed");
  });

  it("names enums", () => {
    expect(kindName(JobKind.GENERATE)).toBe("generate");
    expect(stateName(JobState.CANCELLED)).toBe("cancelled");
    expect(stateName(42 as JobState)).toBe("state 42");
    expect(isFinished(JobState.FAILED)).toBe(true);
    expect(isFinished(JobState.RUNNING)).toBe(false);
  });

  it("formats durations and percentages", () => {
    expect(formatDuration(undefined)).toBe("");
    expect(formatDuration(950)).toBe("950 ms");
    expect(formatDuration(-5)).toBe("0 ms");
    expect(formatDuration(12_300)).toBe("12.3 s");
    expect(formatDuration(125_000)).toBe("2m 05s");
    expect(formatDuration(7_500_000)).toBe("2h 05m");
    expect(formatPercent(0)).toBe("0%");
    expect(formatPercent(1)).toBe("100%");
    expect(formatPercent(0.4567)).toBe("45.7%");
    expect(formatPercent(3)).toBe("100%");
    expect(formatPercent(NaN)).toBe("0%");
  });

  it("computes tokens per second", () => {
    expect(tokensPerSecond(50, 2000)).toBe(25);
    expect(tokensPerSecond(50, 0)).toBeUndefined();
    expect(tokensPerSecond(50, undefined)).toBeUndefined();
  });

  it("computes job durations", () => {
    const t = (ms: number) => timestampFromMs(ms);
    expect(tsMs(undefined)).toBeUndefined();
    expect(tsMs(t(0))).toBeUndefined();
    expect(tsMs(t(1500))).toBe(1500);
    expect(jobDurationMs({ state: JobState.QUEUED, createTime: t(1000) }, 4000)).toBe(3000);
    expect(jobDurationMs({ state: JobState.RUNNING, createTime: t(1000), startTime: t(2000) }, 4500)).toBe(2500);
    expect(
      jobDurationMs({ state: JobState.SUCCEEDED, createTime: t(1000), startTime: t(2000), endTime: t(3000) }, 9999),
    ).toBe(1000);
    expect(jobDurationMs({ state: JobState.CANCELLED, createTime: t(1000), endTime: t(1200) }, 9999)).toBe(200);
    expect(jobDurationMs({ state: JobState.RUNNING }, 9999)).toBeUndefined();
  });

  it("reads number fields", () => {
    expect(uintValue("")).toBe(0);
    expect(uintValue(" 12 ")).toBe(12);
    expect(uintValue("2.9")).toBe(2);
    expect(uintValue("-3")).toBe(0);
    expect(uintValue("abc")).toBe(0);
    expect(uintValue("99999999999")).toBe(0xffffffff);
    expect(numberValue("0.7")).toBe(0.7);
    expect(numberValue("")).toBe(0);
    expect(numberValue("x")).toBe(0);
  });

  it("parses optional seeds", () => {
    expect(parseSeed("")).toBeUndefined();
    expect(parseSeed(" 42 ")).toBe(42n);
    expect(parseSeed("0")).toBe(0n);
    expect(parseSeed("18446744073709551615")).toBe(0xffffffffffffffffn);
    expect(() => parseSeed("18446744073709551616")).toThrow(/seed/);
    expect(() => parseSeed("-3")).toThrow(/seed/);
    expect(() => parseSeed("1e3")).toThrow(/seed: "1e3"/);
  });

  it("parses stop strings", () => {
    expect(parseStops("")).toEqual([]);
    expect(parseStops("a, b ,c")).toEqual(["a", "b", "c"]);
    expect(parseStops("\\n\\n,User:")).toEqual(["\n\n", "User:"]);
    expect(parseStops("x\\,y,,")).toEqual(["x,y"]);
    expect(parseStops("\\t")).toEqual(["\t"]);
  });
});
