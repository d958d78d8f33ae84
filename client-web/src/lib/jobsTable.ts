// The jobs table's state, reduced from JobService.WatchJobs updates. Pure, no DOM.
//
// Updates of one job can arrive more than once and, around the snapshot, out of order:
// we keep the one with the highest job.last_seq (the later one when equal). A removal
// deletes the row and leaves a tombstone so that a stale update arriving after it does
// not bring the row back.
import { JobState, type Job, type WatchJobsResponse } from "../gen/deephardway/v1/jobs_pb.js";
import { tsMs } from "./format.js";

export interface JobsTable {
  /** Current jobs by id. */
  readonly jobs: Map<string, Job>;
  /** Ids removed (retention ended); updates for them are ignored. */
  readonly removed: Set<string>;
}

/** One message of the WatchJobs stream (what the reduction reads of it). */
export type Update = Pick<WatchJobsResponse, "job" | "removed">;

export function emptyTable(): JobsTable {
  return { jobs: new Map(), removed: new Set() };
}

/**
 * Applies one update in place; returns true when the table changed.
 */
export function applyUpdate(table: JobsTable, update: Update): boolean {
  const job = update.job;
  if (!job || !job.id) return false;
  if (update.removed) {
    table.removed.add(job.id);
    return table.jobs.delete(job.id);
  }
  if (table.removed.has(job.id)) return false;
  const current = table.jobs.get(job.id);
  if (current && job.lastSeq < current.lastSeq) return false;
  table.jobs.set(job.id, job);
  return true;
}

/** Applies many updates; returns true when any changed the table. */
export function applyUpdates(table: JobsTable, updates: Iterable<Update>): boolean {
  let changed = false;
  for (const u of updates) changed = applyUpdate(table, u) || changed;
  return changed;
}

function createdMs(job: Job): number {
  return tsMs(job.createTime) ?? 0;
}

/** The rows to show: newest first (by creation time, then id). */
export function sortedJobs(table: JobsTable): Job[] {
  return [...table.jobs.values()].sort((a, b) => {
    const d = createdMs(b) - createdMs(a);
    if (d !== 0) return d;
    return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
  });
}

/**
 * Queue positions of the queued jobs, as the service orders its line: per model,
 * higher priority first, then creation order. 0 means next. Only the jobs the table
 * knows about are counted, so this is a lower bound when older queued jobs are not in
 * the table.
 */
export function queuePositions(jobs: Iterable<Job>): Map<string, number> {
  const byModel = new Map<string, Job[]>();
  for (const job of jobs) {
    if (job.state !== JobState.QUEUED) continue;
    const line = byModel.get(job.model) ?? [];
    line.push(job);
    byModel.set(job.model, line);
  }
  const positions = new Map<string, number>();
  for (const line of byModel.values()) {
    line.sort((a, b) => {
      const pa = a.spec?.priority ?? 0;
      const pb = b.spec?.priority ?? 0;
      if (pa !== pb) return pb - pa;
      const d = createdMs(a) - createdMs(b);
      if (d !== 0) return d;
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
    line.forEach((job, i) => positions.set(job.id, i));
  }
  return positions;
}

/** Drops the oldest finished jobs beyond `max` rows; returns how many were dropped. */
export function trimFinished(table: JobsTable, max: number): number {
  const rows = sortedJobs(table);
  let dropped = 0;
  for (let i = rows.length - 1; i >= 0 && table.jobs.size > max; i--) {
    const s = rows[i].state;
    if (s === JobState.SUCCEEDED || s === JobState.FAILED || s === JobState.CANCELLED) {
      table.jobs.delete(rows[i].id);
      dropped++;
    }
  }
  return dropped;
}
