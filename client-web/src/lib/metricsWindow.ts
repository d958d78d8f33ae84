// Metrics over time, from scrapes taken by the browser: a ring buffer, the window of
// recent scrapes, counter increases and rates (a counter that goes down was reset by a
// restart), and histogram quantiles from bucket increases the way Prometheus's
// histogram_quantile computes them. Pure, no DOM.
import { parseNumber, seriesKey, type Labels, type Sample, type Scrape } from "./openmetrics.js";

/** A fixed number of the latest items; the oldest falls out when a new one comes and it is full. */
export class Ring<T> {
  private items: (T | undefined)[];
  private next = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError(`ring capacity ${capacity}`);
    this.items = new Array(capacity);
  }

  push(item: T) {
    this.items[this.next] = item;
    this.next = (this.next + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
  }

  get size(): number {
    return this.count;
  }

  /** The `i`-th newest item (0: the latest). */
  fromEnd(i: number): T | undefined {
    if (i < 0 || i >= this.count) return undefined;
    return this.items[(this.next - 1 - i + this.capacity * 2) % this.capacity];
  }

  /** The items, oldest first. */
  toArray(): T[] {
    const out: T[] = [];
    for (let i = this.count - 1; i >= 0; i--) out.push(this.fromEnd(i) as T);
    return out;
  }

  clear() {
    this.items = new Array(this.capacity);
    this.next = 0;
    this.count = 0;
  }
}

/** A scrape and when it was taken (ms since the epoch). */
export interface Snapshot {
  t: number;
  scrape: Scrape;
}

/** The recent scrapes: enough of them to look back `spanMs` at the given poll interval. */
export class SampleWindow {
  private ring: Ring<Snapshot>;

  constructor(
    readonly spanMs: number,
    intervalMs: number,
  ) {
    // One more than the span needs so that a snapshot at least spanMs old is kept,
    // and some slack for polls that come early.
    this.ring = new Ring(Math.ceil(spanMs / intervalMs) + 4);
  }

  push(snapshot: Snapshot) {
    this.ring.push(snapshot);
  }

  latest(): Snapshot | undefined {
    return this.ring.fromEnd(0);
  }

  previous(): Snapshot | undefined {
    return this.ring.fromEnd(1);
  }

  get size(): number {
    return this.ring.size;
  }

  /**
   * Where a look back of `ms` from the latest snapshot starts: the newest snapshot at
   * least `ms` older than the latest, else the oldest one kept (a shorter look back, as
   * when the page has been open less long); undefined with fewer than two snapshots.
   */
  baseFor(ms: number): Snapshot | undefined {
    const latest = this.latest();
    if (!latest || this.ring.size < 2) return undefined;
    for (let i = 1; i < this.ring.size; i++) {
      const s = this.ring.fromEnd(i) as Snapshot;
      if (latest.t - s.t >= ms) return s;
    }
    return this.ring.fromEnd(this.ring.size - 1);
  }

  clear() {
    this.ring.clear();
  }
}

/**
 * How much a counter went up from `before` to `after`. A counter only goes up, so a
 * drop means it started again from 0 (the service restarted): all of `after` is new. A
 * series missing before (created since, or the service restarted) counts from 0 too.
 */
export function counterIncrease(before: number | undefined, after: number): number {
  if (!Number.isFinite(after)) return 0;
  if (before === undefined || !Number.isFinite(before) || after < before) return after;
  return after - before;
}

const matches = (labels: Labels, match: Labels) => Object.keys(match).every((k) => labels[k] === match[k]);

/** Samples by series (their labels but `omit`). */
function bySeries(samples: Sample[] | undefined, omit: readonly string[] = []): Map<string, Sample[]> {
  const out = new Map<string, Sample[]>();
  for (const s of samples ?? []) {
    const k = seriesKey(s.labels, omit);
    const list = out.get(k);
    if (list) list.push(s);
    else out.set(k, [s]);
  }
  return out;
}

/**
 * The increase of counter `name` from one scrape to another, summed over its series
 * whose labels match `match`, series by series (so one series' reset does not hide
 * another's growth), per value of the label `by` (one group, "", without it).
 */
export function increaseBy(before: Scrape, after: Scrape, name: string, by: string | undefined, match: Labels = {}): Map<string, number> {
  const old = new Map<string, number>();
  for (const s of before.get(name) ?? []) old.set(seriesKey(s.labels), s.value);
  const out = new Map<string, number>();
  for (const s of after.get(name) ?? []) {
    if (!matches(s.labels, match)) continue;
    const group = by === undefined ? "" : (s.labels[by] ?? "");
    out.set(group, (out.get(group) ?? 0) + counterIncrease(old.get(seriesKey(s.labels)), s.value));
  }
  return out;
}

/** The increase of counter `name` (its series matching `match`, summed) from one scrape to another; undefined when `after` has no such series. */
export function increase(before: Scrape, after: Scrape, name: string, match: Labels = {}): number | undefined {
  const groups = increaseBy(before, after, name, undefined, match);
  return groups.size ? [...groups.values()].reduce((a, b) => a + b, 0) : undefined;
}

/** Per second from one snapshot to the next; undefined when there is no such series or no time between them. */
export function rate(before: Snapshot, after: Snapshot, name: string, match: Labels = {}): number | undefined {
  const dt = (after.t - before.t) / 1000;
  if (!(dt > 0)) return undefined;
  const inc = increase(before.scrape, after.scrape, name, match);
  return inc === undefined ? undefined : inc / dt;
}

/** A histogram bucket: observations at most `le` (cumulative, as exposed). */
export interface Bucket {
  le: number;
  count: number;
}

/**
 * The q-quantile (0 ≤ q ≤ 1) of a histogram's observations, as Prometheus's
 * histogram_quantile: the bucket holding the rank q × total, linear interpolation
 * inside it (the first bucket from 0, unless its bound is ≤ 0); a rank in the +Inf
 * bucket is the highest finite bound. NaN without observations, without a +Inf bucket
 * or with fewer than two buckets. Counts that go down from one bucket to the next (a
 * scrape racing an observation) are raised to keep them cumulative.
 */
export function histogramQuantile(q: number, buckets: Bucket[]): number {
  if (Number.isNaN(q)) return NaN;
  if (q < 0) return -Infinity;
  if (q > 1) return Infinity;
  const sorted = [...buckets].filter((b) => !Number.isNaN(b.le)).sort((a, b) => a.le - b.le);
  // Same bound twice: one bucket (their counts add, as Prometheus's coalesceBuckets).
  const bs: Bucket[] = [];
  for (const b of sorted) {
    const last = bs[bs.length - 1];
    if (last && last.le === b.le) last.count += b.count;
    else bs.push({ ...b });
  }
  if (bs.length < 2 || bs[bs.length - 1].le !== Infinity) return NaN;
  for (let i = 1; i < bs.length; i++) if (bs[i].count < bs[i - 1].count) bs[i].count = bs[i - 1].count;
  const total = bs[bs.length - 1].count;
  if (!(total > 0)) return NaN;
  let rank = q * total;
  let b = bs.findIndex((x, i) => i < bs.length - 1 && x.count >= rank);
  if (b < 0) b = bs.length - 1;
  if (b === bs.length - 1) return bs[bs.length - 2].le;
  if (b === 0 && bs[0].le <= 0) return bs[0].le;
  let start = 0;
  let count = bs[b].count;
  if (b > 0) {
    start = bs[b - 1].le;
    count -= bs[b - 1].count;
    rank -= bs[b - 1].count;
  }
  return start + (bs[b].le - start) * (rank / count);
}

/** A group's bucket increases (by `le`, ascending) and the labels it was grouped by. */
export interface BucketGroup {
  labels: Labels;
  buckets: Bucket[];
}

/**
 * How much each bucket of histogram `name` (its NAME_bucket samples) went up from one
 * scrape to another, summed per value of the labels `by` over the other labels (like
 * `sum by (le, model) (increase(NAME_bucket[…]))`), for the series matching `match`. A
 * series whose +Inf bucket went down was reset: its buckets count in full.
 */
export function bucketIncrease(before: Scrape, after: Scrape, name: string, by: readonly string[], match: Labels = {}): Map<string, BucketGroup> {
  const bucketName = `${name}_bucket`;
  const old = bySeries(before.get(bucketName), ["le"]);
  const groups = new Map<string, { labels: Labels; byLe: Map<number, number> }>();
  for (const [key, samples] of bySeries(after.get(bucketName), ["le"])) {
    const labels = samples[0].labels;
    if (!matches(labels, match)) continue;
    const prev = new Map<number, number>();
    for (const s of old.get(key) ?? []) {
      const le = parseNumber(s.labels.le ?? "");
      if (le !== undefined) prev.set(le, s.value);
    }
    const inf = samples.find((s) => parseNumber(s.labels.le ?? "") === Infinity)?.value ?? 0;
    const reset = inf < (prev.get(Infinity) ?? 0);
    const groupLabels: Labels = {};
    for (const l of by) groupLabels[l] = labels[l] ?? "";
    const gk = seriesKey(groupLabels);
    let group = groups.get(gk);
    if (!group) groups.set(gk, (group = { labels: groupLabels, byLe: new Map() }));
    for (const s of samples) {
      const le = parseNumber(s.labels.le ?? "");
      if (le === undefined || Number.isNaN(le)) continue;
      const inc = reset ? s.value : Math.max(0, s.value - (prev.get(le) ?? 0));
      group.byLe.set(le, (group.byLe.get(le) ?? 0) + inc);
    }
  }
  const out = new Map<string, BucketGroup>();
  for (const [k, g] of groups) {
    const buckets = [...g.byLe].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
    out.set(k, { labels: g.labels, buckets });
  }
  return out;
}

/** The number of observations in bucket increases (the +Inf bucket's). */
export function observations(buckets: Bucket[]): number {
  return buckets.find((b) => b.le === Infinity)?.count ?? 0;
}
