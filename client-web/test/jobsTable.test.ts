import { describe, expect, it } from "vitest";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobSchema, JobState, WatchJobsResponseSchema, type Job } from "../src/gen/deephardway/v1/jobs_pb.js";
import { applyUpdate, applyUpdates, emptyTable, queuePositions, sortedJobs, trimFinished } from "../src/lib/jobsTable.js";

function job(id: string, lastSeq: number, state = JobState.RUNNING, extra: MessageInitShape<typeof JobSchema> = {}): Job {
  return create(JobSchema, { id, lastSeq: BigInt(lastSeq), state, model: "diagnostic", ...extra });
}
const upd = (j: Job, removed = false, snapshot = false) => create(WatchJobsResponseSchema, { job: j, removed, snapshot });

describe("jobs table reduction", () => {
  it("adds jobs and keeps the highest last_seq", () => {
    const t = emptyTable();
    expect(applyUpdate(t, upd(job("a", 3)))).toBe(true);
    expect(applyUpdate(t, upd(job("a", 5, JobState.SUCCEEDED)))).toBe(true);
    // A stale snapshot copy arriving late is ignored.
    expect(applyUpdate(t, upd(job("a", 4, JobState.RUNNING), false, true))).toBe(false);
    expect(t.jobs.get("a")?.state).toBe(JobState.SUCCEEDED);
    expect(t.jobs.get("a")?.lastSeq).toBe(5n);
  });

  it("takes the later update when last_seq is equal", () => {
    const t = emptyTable();
    applyUpdate(t, upd(job("a", 2, JobState.RUNNING)));
    applyUpdate(t, upd(job("a", 2, JobState.RUNNING, { cancelRequested: true })));
    expect(t.jobs.get("a")?.cancelRequested).toBe(true);
  });

  it("deletes removed jobs and does not resurrect them", () => {
    const t = emptyTable();
    applyUpdates(t, [upd(job("a", 3)), upd(job("b", 1))]);
    expect(applyUpdate(t, upd(create(JobSchema, { id: "a" }), true))).toBe(true);
    expect(t.jobs.has("a")).toBe(false);
    expect(applyUpdate(t, upd(job("a", 9), false, true))).toBe(false);
    expect(t.jobs.has("a")).toBe(false);
    expect(t.jobs.size).toBe(1);
  });

  it("ignores updates without a job", () => {
    const t = emptyTable();
    expect(applyUpdate(t, create(WatchJobsResponseSchema, {}))).toBe(false);
  });

  it("sorts newest first", () => {
    const t = emptyTable();
    applyUpdates(t, [
      upd(job("old", 1, JobState.SUCCEEDED, { createTime: timestampFromMs(1000) })),
      upd(job("new", 1, JobState.QUEUED, { createTime: timestampFromMs(3000) })),
      upd(job("mid", 1, JobState.RUNNING, { createTime: timestampFromMs(2000) })),
    ]);
    expect(sortedJobs(t).map((j) => j.id)).toEqual(["new", "mid", "old"]);
  });

  it("computes queue positions per model by priority then age", () => {
    const q = (id: string, ms: number, priority = 0, model = "diagnostic") =>
      job(id, 1, JobState.QUEUED, { createTime: timestampFromMs(ms), model, spec: { priority } });
    const positions = queuePositions([
      q("a", 1000),
      q("b", 2000),
      q("c", 3000, 10),
      q("x", 500, 0, "other"),
      job("r", 4, JobState.RUNNING),
    ]);
    expect(Object.fromEntries(positions)).toEqual({ c: 0, a: 1, b: 2, x: 0 });
  });

  it("trims the oldest finished jobs only", () => {
    const t = emptyTable();
    for (let i = 0; i < 5; i++) {
      applyUpdate(t, upd(job(`f${i}`, 1, JobState.SUCCEEDED, { createTime: timestampFromMs(i * 1000) })));
    }
    applyUpdate(t, upd(job("q", 1, JobState.QUEUED, { createTime: timestampFromMs(0) })));
    expect(trimFinished(t, 3)).toBe(3);
    expect([...t.jobs.keys()].sort()).toEqual(["f3", "f4", "q"]);
  });
});
