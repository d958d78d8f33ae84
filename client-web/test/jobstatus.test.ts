import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { JobEventSchema } from "../src/gen/deephardway/v1/jobs_pb.js";
import {
  cancelReason,
  cancelRequestedText,
  durationSuffix,
  endedText,
  finalState,
  isActive,
  queuedText,
  queuePlaceText,
  queueStatusText,
  runningText,
} from "../src/lib/jobstatus.js";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";

describe("jobstatus", () => {
  it("maps a final event to the status line's data-state", () => {
    const result = create(JobEventSchema, { jobId: "7", event: { case: "result", value: {} } });
    const failed = create(JobEventSchema, { jobId: "7", event: { case: "failed", value: { code: 13, message: "x" } } });
    const cancelled = create(JobEventSchema, { jobId: "7", event: { case: "cancelled", value: { reason: "r" } } });
    expect(finalState(result)).toBe("succeeded");
    expect(finalState(failed)).toBe("failed");
    expect(finalState(cancelled)).toBe("cancelled");
    expect(finalState(create(JobEventSchema, { jobId: "7" }))).toBe("");
  });

  it("knows which states can be cancelled", () => {
    expect(isActive("queued")).toBe(true);
    expect(isActive("running")).toBe(true);
    expect(isActive("succeeded")).toBe(false);
    expect(isActive("cancelled")).toBe(false);
    expect(isActive(undefined)).toBe(false);
  });

  it("words queued and running", () => {
    expect(queuedText("7")).toBe("Job 7 queued");
    expect(queuedText("7", 2)).toBe("Job 7 queued (position 2)");
    expect(queuedText("7", 0)).toBe("Job 7 queued (position 0)");
    const started = { workerId: "w-1", workerName: "gpu box", device: "cuda:0" };
    expect(runningText("7", started, false)).toBe("Job 7 running on cuda:0");
    expect(runningText("7", started, true)).toBe("Job 7 running on gpu box (cuda:0)");
    expect(runningText("7", { ...started, workerName: "" }, true)).toBe("Job 7 running on w-1 (cuda:0)");
  });

  it("words the live place in line, with the estimate when there is one", () => {
    const now = 1_000_000;
    expect(queuePlaceText({ position: 3 }, now)).toBe("position 3");
    expect(queuePlaceText({ position: 0, estimatedStartTime: timestampFromMs(now + 12_300) }, now)).toBe(
      "position 0, starts in ~12.3 s",
    );
    expect(queuePlaceText({ position: 19, estimatedStartTime: timestampFromMs(now + 200_000) }, now)).toBe(
      "position 19, starts in ~3m 20s",
    );
    // An estimate already past reads as any moment now, not as a negative wait.
    expect(queuePlaceText({ position: 1, estimatedStartTime: timestampFromMs(now - 5_000) }, now)).toBe(
      "position 1, starts in under 1 s",
    );
    expect(queueStatusText("7", { position: 2, estimatedStartTime: timestampFromMs(now + 4_000) }, now)).toBe(
      "Job 7 queued (position 2, starts in ~4.0 s)",
    );
    expect(queueStatusText("7", { position: 2 }, now)).toBe("Job 7 queued (position 2)");
  });

  it("words a cancelled job and the cancel request", () => {
    expect(endedText("Cancelled", "")).toBe("Cancelled");
    expect(endedText("Cancelled", "cancelled from the web client")).toBe("Cancelled: cancelled from the web client");
    expect(endedText("Stopped", "timeout")).toBe("Stopped: timeout");
    expect(cancelReason("cancel")).toBe("cancelled from the web client");
    expect(cancelReason("stop")).toBe("stopped from the web client");
    expect(cancelRequestedText("7", "cancel")).toBe("Job 7: cancel requested");
    expect(cancelRequestedText("7", "stop")).toBe("Job 7: stop requested");
  });

  it("words the duration, or nothing when a time is unknown", () => {
    expect(durationSuffix(1000, 2500)).toBe(" in 1.5 s");
    expect(durationSuffix(1000, 1950)).toBe(" in 950 ms");
    expect(durationSuffix(undefined, 2500)).toBe("");
    expect(durationSuffix(1000, undefined)).toBe("");
    expect(durationSuffix(0, Number.NaN)).toBe("");
  });
});
