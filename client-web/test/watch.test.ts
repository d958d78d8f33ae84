import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { JobEventSchema, QueueStatusSchema, type JobEvent } from "../src/gen/deephardway/v1/jobs_pb.js";
import { FinishReason } from "../src/gen/deephardway/v1/inputs_pb.js";
import {
  backoffMs,
  isFinalEvent,
  isRetryable,
  jobEvents,
  ResumeState,
  retrying,
  watchResumable,
  type WatchStatus,
} from "../src/lib/watch.js";
import { appendEvent, type LogLine } from "../src/lib/eventlog.js";

const progress = (seq: number) =>
  create(JobEventSchema, { jobId: "j", seq: BigInt(seq), event: { case: "progress", value: { fraction: seq / 10 } } });
const output = (seq: number, text: string) =>
  create(JobEventSchema, { jobId: "j", seq: BigInt(seq), event: { case: "output", value: { text } } });
const result = (seq: number) =>
  create(JobEventSchema, {
    jobId: "j",
    seq: BigInt(seq),
    event: { case: "result", value: { value: { case: "diagnostic", value: { steps: 3 } } } },
  });

/** A fake WatchJob over a fixed log, which can fail after some events. */
function fakeWatch(log: JobEvent[], failures: { after: number; error: unknown }[]) {
  const calls: bigint[] = [];
  const open = (afterSeq: bigint) => {
    calls.push(afterSeq);
    const failure = failures.shift();
    return (async function* () {
      let sent = 0;
      // Re-send one old event to check deduplication.
      if (afterSeq > 0n) yield log[Number(afterSeq) - 1];
      for (const ev of log) {
        if (ev.seq <= afterSeq) continue;
        if (failure && sent === failure.after) throw failure.error;
        sent++;
        yield ev;
      }
      if (failure && failure.after >= sent) throw failure.error;
    })();
  };
  return { open, calls };
}

describe("resume bookkeeping", () => {
  it("accepts events once, in order", () => {
    const s = new ResumeState();
    expect(s.accept(progress(1))).toBe(true);
    expect(s.accept(progress(1))).toBe(false);
    expect(s.accept(progress(3))).toBe(true);
    expect(s.accept(progress(2))).toBe(false);
    expect(s.lastSeq).toBe(3n);
    expect(s.finished).toBe(false);
    expect(s.accept(result(4))).toBe(true);
    expect(s.finished).toBe(true);
    expect(isFinalEvent(result(4))).toBe(true);
    expect(isFinalEvent(progress(1))).toBe(false);
  });

  it("classifies errors and backs off", () => {
    expect(isRetryable(new ConnectError("Failed to fetch", Code.Unknown))).toBe(true);
    expect(isRetryable(new ConnectError("x", Code.Unavailable))).toBe(true);
    expect(isRetryable(new ConnectError("x", Code.InvalidArgument))).toBe(false);
    expect(isRetryable(new ConnectError("x", Code.NotFound))).toBe(false);
    expect(isRetryable(new TypeError("network"))).toBe(true);
    expect([0, 1, 2, 3].map((a) => backoffMs(a))).toEqual([500, 1000, 2000, 4000]);
    expect(backoffMs(50)).toBe(10_000);
  });

  it("resumes from the last sequence number after a lost connection", async () => {
    const log = [progress(1), output(2, "a"), progress(3), output(4, "b"), result(5)];
    const lost = new ConnectError("Failed to fetch", Code.Unknown);
    const { open, calls } = fakeWatch(log, [
      { after: 2, error: lost },
      { after: 0, error: lost },
      { after: 1, error: lost },
    ]);
    const seen: bigint[] = [];
    const statuses: WatchStatus[] = [];
    const sleeps: number[] = [];
    const final = await watchResumable({
      open,
      onEvent: (ev) => seen.push(ev.seq),
      onStatus: (s) => statuses.push(s),
      sleep: async (ms) => void sleeps.push(ms),
    });
    expect(final.seq).toBe(5n);
    expect(seen).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(calls).toEqual([0n, 2n, 2n, 3n]);
    // Backoff grows while no progress is made, and resets after progress.
    expect(sleeps).toEqual([500, 1000, 500]);
    expect(statuses.filter((s) => s.kind === "retrying")).toHaveLength(3);
    expect(statuses.at(-1)?.kind).toBe("connected");
  });

  it("treats a stream that ends early as lost", async () => {
    let n = 0;
    const final = await watchResumable({
      open: (after) =>
        (async function* () {
          n++;
          if (after === 0n) yield progress(1); // then ends without a final event
          else yield result(2);
        })(),
      onEvent: () => {},
      sleep: async () => {},
    });
    expect(final.seq).toBe(2n);
    expect(n).toBe(2);
  });

  it("gives up on errors that are not the connection's", async () => {
    const { open } = fakeWatch([progress(1)], [{ after: 0, error: new ConnectError("no such job", Code.NotFound) }]);
    await expect(watchResumable({ open, onEvent: () => {}, sleep: async () => {} })).rejects.toThrow(/no such job/);
  });

  it("stops when aborted", async () => {
    const ctl = new AbortController();
    const p = watchResumable({
      open: () =>
        (async function* () {
          throw new ConnectError("down", Code.Unavailable);
        })(),
      onEvent: () => {},
      signal: ctl.signal,
    });
    ctl.abort(new Error("aborted"));
    await expect(p).rejects.toThrow(/aborted/);
  });
});

describe("WatchJob responses", () => {
  it("unwraps each response's event", async () => {
    async function* stream() {
      yield { event: progress(1) };
      yield {}; // no event: skipped
      yield { event: result(2) };
    }
    const seqs: bigint[] = [];
    for await (const ev of jobEvents(stream())) seqs.push(ev.seq);
    expect(seqs).toEqual([1n, 2n]);
  });

  it("hands queue statuses, which are not events, to their own callback", async () => {
    async function* stream() {
      yield { queueStatus: create(QueueStatusSchema, { position: 2 }) };
      yield { event: progress(1) };
      yield { queueStatus: create(QueueStatusSchema, { position: 0, dispatchRate: 1.5 }) };
      yield { event: result(2) };
    }
    const seqs: bigint[] = [];
    const positions: number[] = [];
    for await (const ev of jobEvents(stream(), (s) => positions.push(s.position))) seqs.push(ev.seq);
    expect(seqs).toEqual([1n, 2n]);
    expect(positions).toEqual([2, 0]);
    // Without a callback they are skipped.
    const again: bigint[] = [];
    for await (const ev of jobEvents(stream())) again.push(ev.seq);
    expect(again).toEqual([1n, 2n]);
  });

  it("resumes through the unwrapping", async () => {
    const log = [progress(1), progress(2), result(3)];
    let opened = 0;
    const final = await watchResumable({
      open: (after) =>
        jobEvents(
          (async function* () {
            opened++;
            for (const ev of log) {
              if (ev.seq <= after) continue;
              yield { event: ev };
              if (opened === 1 && ev.seq === 1n) throw new ConnectError("cut", Code.Unavailable);
            }
          })(),
        ),
      onEvent: () => {},
      sleep: async () => {},
    });
    expect(final.seq).toBe(3n);
    expect(opened).toBe(2);
  });
});

describe("event log", () => {
  it("merges consecutive outputs", () => {
    const lines: LogLine[] = [];
    for (const ev of [progress(1), output(2, "Hel"), output(3, "lo"), progress(4), output(5, "!"), result(6)]) {
      appendEvent(lines, ev);
    }
    expect(lines.map((l) => [l.kind, l.fromSeq, l.toSeq, l.detail])).toEqual([
      ["progress", 1n, 1n, "10.0%"],
      ["output", 2n, 3n, "Hello"],
      ["progress", 4n, 4n, "40.0%"],
      ["output", 5n, 5n, "!"],
      ["result", 6n, 6n, "diagnostic: 3 steps"],
    ]);
  });

  it("describes failures, cancellations and generate results", () => {
    const failed = create(JobEventSchema, { seq: 1n, event: { case: "failed", value: { code: 4, message: "timed out" } } });
    const cancelled = create(JobEventSchema, { seq: 1n, event: { case: "cancelled", value: { reason: "" } } });
    const generated = create(JobEventSchema, {
      seq: 1n,
      event: {
        case: "result",
        value: { value: { case: "generate", value: { promptTokens: 5, completionTokens: 24, finishReason: FinishReason.STOP } } },
      },
    });
    expect(appendEvent([], failed)[0].detail).toBe("DEADLINE_EXCEEDED: timed out");
    expect(appendEvent([], cancelled)[0].detail).toBe("cancelled");
    expect(appendEvent([], generated)[0].detail).toBe("generate: 5 prompt + 24 completion tokens, stop");
  });
});

describe("retrying", () => {
  it("retries connection errors, then succeeds", async () => {
    let calls = 0;
    const sleeps: number[] = [];
    const v = await retrying(
      async () => {
        if (++calls < 3) throw new ConnectError("Failed to fetch", Code.Unknown);
        return "ok";
      },
      { sleep: async (ms) => void sleeps.push(ms) },
    );
    expect(v).toBe("ok");
    expect(calls).toBe(3);
    expect(sleeps).toEqual([500, 1000]);
  });

  it("does not retry request errors, and stops after maxAttempts", async () => {
    let calls = 0;
    await expect(
      retrying(async () => {
        calls++;
        throw new ConnectError("diagnostic.steps: bad", Code.InvalidArgument);
      }),
    ).rejects.toThrow(/diagnostic.steps/);
    expect(calls).toBe(1);
    calls = 0;
    await expect(
      retrying(
        async () => {
          calls++;
          throw new ConnectError("down", Code.Unavailable);
        },
        { maxAttempts: 2, sleep: async () => {} },
      ),
    ).rejects.toThrow(/down/);
    expect(calls).toBe(2);
  });
});
