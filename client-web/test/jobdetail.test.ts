import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobKind, JobSchema, JobState } from "../src/gen/deephardway/v1/jobs_pb.js";
import { jobSummaryRows } from "../src/lib/jobdetail.js";

describe("job detail", () => {
  it("summarises a failed job with its error", () => {
    const job = create(JobSchema, {
      id: "7",
      state: JobState.FAILED,
      kind: JobKind.DIAGNOSTIC,
      model: "diagnostic",
      attempts: 1,
      maxAttempts: 3,
      workerId: "w-1",
      workerName: "box",
      device: "cpu",
      createTime: timestampFromMs(1000),
      startTime: timestampFromMs(2000),
      endTime: timestampFromMs(3500),
      lastSeq: 5n,
      progress: 0.4,
      error: { code: 13, message: "step 2 failed" },
    });
    const rows = Object.fromEntries(jobSummaryRows(job, 9999));
    expect(rows).toMatchObject({
      State: "failed",
      Kind: "diagnostic",
      Model: "diagnostic",
      Attempts: "1 of 3",
      "Worker / device": "box / w-1 / cpu",
      Duration: "1.5 s",
      Progress: "40.0%",
      "Last seq": "5",
      Error: "INTERNAL: step 2 failed",
    });
    expect(rows.Created).not.toBe("");
  });

  it("says when a cancel was requested, and has no error row without an error", () => {
    const job = create(JobSchema, { id: "8", state: JobState.RUNNING, cancelRequested: true, cancelReason: "stopped from the web client" });
    const rows = jobSummaryRows(job, 0);
    expect(rows[0]).toEqual(["State", "running (cancel requested: stopped from the web client)"]);
    expect(rows.some(([k]) => k === "Error")).toBe(false);
    expect(Object.fromEntries(rows).Created).toBe("");
    expect(rows.some(([k]) => k === "In line")).toBe(false);
  });

  it("shows a queued job's place in line (GetJob sets it only while queued)", () => {
    const job = create(JobSchema, {
      id: "9",
      state: JobState.QUEUED,
      queueStatus: { position: 4, estimatedStartTime: timestampFromMs(70_000), dispatchRate: 0.5 },
    });
    expect(Object.fromEntries(jobSummaryRows(job, 10_000))["In line"]).toBe("position 4, starts in ~1m 00s");
    const unknown = create(JobSchema, { id: "9", state: JobState.QUEUED, queueStatus: { position: 0 } });
    expect(Object.fromEntries(jobSummaryRows(unknown, 10_000))["In line"]).toBe("position 0");
  });
});
