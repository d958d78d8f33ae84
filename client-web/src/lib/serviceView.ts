// What the Service page shows, computed from the service's metrics (GET /metrics): the
// workers table, the queue's bars, a throughput sample per poll, and latency quantiles
// over the last minute, with the texts of their numbers. Any metric may be missing (no
// worker ever connected, an older service): each comes out empty or undefined then.
// Pure, no DOM.
import { formatDuration } from "./format.js";
import { select, sumOf, type Scrape } from "./openmetrics.js";
import { bucketIncrease, histogramQuantile, increase, increaseBy, observations, type BucketGroup, type Snapshot } from "./metricsWindow.js";

/** The metric names the page reads (histograms and counters by their family name). */
export const M = {
  workersConnected: "deephardway_workers_connected",
  workerInfo: "deephardway_worker_info",
  workerSlots: "deephardway_worker_slots",
  workerRunning: "deephardway_worker_running_jobs",
  batchSize: "deephardway_batch_size",
  kvCacheTokens: "deephardway_kv_cache_tokens",
  trainingImages: "deephardway_training_images_total",
  jobs: "deephardway_jobs",
  finished: "deephardway_jobs_finished_total",
  latency: "deephardway_job_latency_seconds",
  queueWait: "deephardway_job_queue_wait_seconds",
  firstOutput: "deephardway_time_to_first_output_seconds",
  perToken: "deephardway_time_per_output_token_seconds",
  generatedTokens: "deephardway_generated_tokens_total",
  promptTokens: "deephardway_prompt_tokens_total",
  embeddedTexts: "deephardway_embedded_texts_total",
} as const;

/** Whether the page needs a sample of this name (the rest of a scrape is not kept). */
export function isUsed(name: string): boolean {
  return USED.has(name) || USED.has(name.replace(/_(bucket|sum|count)$/, ""));
}
const USED = new Set<string>(Object.values(M));

export interface WorkerRow {
  /** The session id (the worker_info's `worker` label). */
  worker: string;
  name: string;
  device: string;
  slots?: number;
  running?: number;
  /** Per model: the mean batch size over the last poll interval; undefined without batches in it. */
  batches: { model: string; mean?: number }[];
  kvCacheTokens?: number;
  /** Training images per second over the last poll interval, over all models. */
  trainingImagesPerSecond?: number;
}

/**
 * One row per connected worker (a deephardway_worker_info series), by name. Rates and
 * batch means compare the latest scrape with the one before (none: undefined).
 */
export function workerRows(latest: Snapshot, previous?: Snapshot): WorkerRow[] {
  const now = latest.scrape;
  const seconds = previous ? (latest.t - previous.t) / 1000 : 0;
  const seen = new Set<string>();
  const rows: WorkerRow[] = [];
  for (const info of now.get(M.workerInfo) ?? []) {
    const worker = info.labels.worker ?? "";
    if (seen.has(worker)) continue;
    seen.add(worker);
    const mine = { worker };
    const models = [...new Set(select(now, `${M.batchSize}_count`, mine).map((s) => s.labels.model ?? ""))].sort();
    const batches = models.map((model) => {
      if (!previous) return { model };
      const count = increase(previous.scrape, now, `${M.batchSize}_count`, { worker, model }) ?? 0;
      const sum = increase(previous.scrape, now, `${M.batchSize}_sum`, { worker, model }) ?? 0;
      return { model, mean: count > 0 ? sum / count : undefined };
    });
    const images = previous && seconds > 0 ? increase(previous.scrape, now, M.trainingImages, mine) : undefined;
    rows.push({
      worker,
      name: info.labels.name || worker,
      device: info.labels.device ?? "",
      slots: sumOf(now, M.workerSlots, mine),
      running: sumOf(now, M.workerRunning, mine),
      batches,
      kvCacheTokens: sumOf(now, M.kvCacheTokens, mine),
      trainingImagesPerSecond: images === undefined ? undefined : images / seconds,
    });
  }
  return rows.sort((a, b) => a.name.localeCompare(b.name) || a.worker.localeCompare(b.worker));
}

export interface ClusterSummary {
  /** deephardway_workers_connected, else the worker_info series counted. */
  workers: number;
  /** Slots of all workers, when the service reports them. */
  slots?: number;
  running: number;
  queued: number;
}

export function clusterSummary(scrape: Scrape): ClusterSummary {
  const infos = new Set((scrape.get(M.workerInfo) ?? []).map((s) => s.labels.worker));
  return {
    workers: sumOf(scrape, M.workersConnected) ?? infos.size,
    slots: sumOf(scrape, M.workerSlots),
    running: sumOf(scrape, M.jobs, { state: "running" }) ?? 0,
    queued: sumOf(scrape, M.jobs, { state: "queued" }) ?? 0,
  };
}

export type QueueState = "running" | "queued";

export interface QueueBar {
  model: string;
  state: QueueState;
  value: number;
}

/** Running and queued jobs of every model that has some (deephardway_jobs), by model, running first. */
export function queueBars(scrape: Scrape): QueueBar[] {
  const counts = new Map<string, Record<QueueState, number>>();
  for (const s of scrape.get(M.jobs) ?? []) {
    const state = s.labels.state;
    if (state !== "running" && state !== "queued") continue;
    const model = s.labels.model ?? "";
    const c = counts.get(model) ?? { running: 0, queued: 0 };
    c[state] += Number.isFinite(s.value) ? s.value : 0;
    counts.set(model, c);
  }
  const bars: QueueBar[] = [];
  for (const model of [...counts.keys()].sort()) {
    const c = counts.get(model) as Record<QueueState, number>;
    // A model whose queue drained stays in the exposition at 0: not worth a bar.
    if (c.running + c.queued === 0) continue;
    bars.push({ model, state: "running", value: c.running }, { model, state: "queued", value: c.queued });
  }
  return bars;
}

export const OUTCOMES = ["succeeded", "failed", "cancelled"] as const;
export type Outcome = (typeof OUTCOMES)[number];

/** Rates (per second) from one poll to the next. */
export interface ThroughputSample {
  /** When (ms since the epoch): the later poll's. */
  t: number;
  finished: Record<Outcome, number>;
  generatedTokens: number;
  promptTokens: number;
  embeddedTexts: number;
}

/** The throughput between two polls; undefined when no time passed between them. A missing counter reads 0 per second. */
export function throughputSample(before: Snapshot, after: Snapshot): ThroughputSample | undefined {
  const seconds = (after.t - before.t) / 1000;
  if (!(seconds > 0)) return undefined;
  const per = (n: number | undefined) => (n ?? 0) / seconds;
  const byOutcome = increaseBy(before.scrape, after.scrape, M.finished, "outcome");
  return {
    t: after.t,
    finished: { succeeded: per(byOutcome.get("succeeded")), failed: per(byOutcome.get("failed")), cancelled: per(byOutcome.get("cancelled")) },
    generatedTokens: per(increase(before.scrape, after.scrape, M.generatedTokens)),
    promptTokens: per(increase(before.scrape, after.scrape, M.promptTokens)),
    embeddedTexts: per(increase(before.scrape, after.scrape, M.embeddedTexts)),
  };
}

export interface LatencyRow {
  model: string;
  /** Jobs that finished in the window (the latency histogram's observations). */
  finished: number;
  /** Seconds; undefined without observations in the window. */
  latencyP50?: number;
  latencyP95?: number;
  queueWaitP50?: number;
  queueWaitP95?: number;
  firstOutputP50?: number;
  perTokenP50?: number;
}

/**
 * Per model, quantiles of what was observed between `base` and `latest` (bucket
 * increases, every kind and outcome together): end-to-end latency, queue wait, time
 * to first output and time per output token. One row for every model any of these
 * histograms has a series of, by name.
 */
export function latencyRows(base: Snapshot | undefined, latest: Snapshot): LatencyRow[] {
  const quantiles = (name: string) => {
    const groups = base ? bucketIncrease(base.scrape, latest.scrape, name, ["model"]) : new Map<string, BucketGroup>();
    const byModel = new Map<string, { count: number; q: (q: number) => number | undefined }>();
    for (const g of groups.values()) {
      const q = (x: number) => {
        const v = histogramQuantile(x, g.buckets);
        return Number.isFinite(v) ? v : undefined;
      };
      byModel.set(g.labels.model, { count: observations(g.buckets), q });
    }
    return byModel;
  };
  const latency = quantiles(M.latency);
  const wait = quantiles(M.queueWait);
  const first = quantiles(M.firstOutput);
  const perToken = quantiles(M.perToken);
  const models = new Set<string>();
  for (const name of [M.latency, M.queueWait, M.firstOutput, M.perToken]) {
    for (const s of latest.scrape.get(`${name}_count`) ?? []) models.add(s.labels.model ?? "");
  }
  return [...models].sort().map((model) => ({
    model,
    finished: latency.get(model)?.count ?? 0,
    latencyP50: latency.get(model)?.q(0.5),
    latencyP95: latency.get(model)?.q(0.95),
    queueWaitP50: wait.get(model)?.q(0.5),
    queueWaitP95: wait.get(model)?.q(0.95),
    firstOutputP50: first.get(model)?.q(0.5),
    perTokenP50: perToken.get(model)?.q(0.5),
  }));
}

/** "2 workers · 8 slots · 3 running · 5 queued". */
export function summaryText(s: ClusterSummary): string {
  const parts = [`${formatCount(s.workers)} worker${s.workers === 1 ? "" : "s"}`];
  if (s.slots !== undefined) parts.push(`${formatCount(s.slots)} slot${s.slots === 1 ? "" : "s"}`);
  parts.push(`${formatCount(s.running)} running`, `${formatCount(s.queued)} queued`);
  return parts.join(" · ");
}

/** What a cell shows for a missing number. */
export const NONE = "—";

/** Seconds: "0.42 ms" below a millisecond, else as formatDuration ("950 ms", "12.3 s", "2m 05s"); "—" when undefined. */
export function formatSeconds(s: number | undefined): string {
  if (s === undefined || !Number.isFinite(s)) return NONE;
  if (s < 0.001) return `${(Math.max(0, s) * 1000).toFixed(2)} ms`;
  return formatDuration(s * 1000);
}

/** A rate or a mean: 3 significant digits at most ("0.125", "12.5", "1234"); "—" when undefined. */
export function formatAmount(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return NONE;
  if (v === 0) return "0";
  const a = Math.abs(v);
  const text = a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(2);
  return String(Number(text));
}

/** A count: an integer with thousands grouped by thin spaces ("12 345"); "—" when undefined. */
export function formatCount(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return NONE;
  return Math.round(v)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, "\u2009");
}
