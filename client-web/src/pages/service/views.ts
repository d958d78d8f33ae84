// The Service page's sections, each made once and redrawn from the numbers of
// src/lib/serviceView.ts on every poll: the workers table, the queue's bars, the
// throughput charts and the latency table.
import { lineChart } from "../../chart.js";
import type { Series } from "../../lib/chart.js";
import { h, setChildren } from "../../ui.js";
import {
  formatAmount,
  formatCount,
  formatSeconds,
  NONE,
  OUTCOMES,
  type ClusterSummary,
  type LatencyRow,
  type QueueBar,
  type ThroughputSample,
  type WorkerRow,
} from "../../lib/serviceView.js";

const WORKER_COLUMNS = ["Name", "Device", "Slots", "Running", "Mean batch", "KV-cache tokens", "Training images/s"];

export function workersTable() {
  const body = h("tbody");
  const el = h(
    "table",
    { class: "workers", "data-testid": "workers-table" },
    h("thead", null, h("tr", null, WORKER_COLUMNS.map((t) => h("th", null, t)))),
    body,
  );
  const num = (col: string, text: string) => h("td", { class: "num", "data-col": col }, text);

  function row(w: WorkerRow): HTMLTableRowElement {
    // One line per model the worker batches for; "—" for a model without batches in the interval.
    const batches = w.batches.length
      ? w.batches.map((b) => h("div", { "data-model": b.model }, h("span", { class: "model" }, b.model), " ", formatAmount(b.mean)))
      : NONE;
    return h(
      "tr",
      { "data-testid": "worker", "data-worker": w.worker, "data-device": w.device },
      h("td", { "data-col": "name", title: w.worker }, w.name),
      h("td", { class: "mono", "data-col": "device" }, w.device),
      num("slots", formatCount(w.slots)),
      num("running", formatCount(w.running)),
      h("td", { class: "num batches", "data-col": "batch" }, batches),
      num("kv-cache", formatCount(w.kvCacheTokens)),
      num("images", formatAmount(w.trainingImagesPerSecond)),
    );
  }

  return {
    el,
    update(rows: WorkerRow[], summary: ClusterSummary) {
      if (rows.length) return setChildren(body, rows.map(row));
      // An older service counts workers without describing them.
      const text =
        summary.workers > 0
          ? `${summary.workers} worker${summary.workers === 1 ? " is" : "s are"} connected, but the service does not describe them`
          : "No worker is connected";
      setChildren(body, h("tr", null, h("td", { colspan: WORKER_COLUMNS.length, class: "empty" }, text)));
    },
  };
}

/** The running and queued jobs per model as bars, all to one scale (the largest count fills its track). */
export function queueView() {
  const el = h("div", { class: "queue-bars", "data-testid": "queue-bars" });
  return {
    el,
    update(bars: QueueBar[]) {
      if (!bars.length) return setChildren(el, h("p", { class: "empty" }, "No jobs queued or running"));
      const max = Math.max(1, ...bars.map((b) => b.value));
      setChildren(
        el,
        bars.map((b, i) =>
          h(
            "div",
            { class: `bar-row ${b.state}`, "data-testid": "queue", "data-model": b.model, "data-state": b.state, "data-value": b.value },
            // The model's name once, on its first bar.
            h("span", { class: "bar-model", title: b.model }, i > 0 && bars[i - 1].model === b.model ? "" : b.model),
            h("span", { class: "bar-state" }, b.state),
            h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: { width: `${((b.value / max) * 100).toFixed(1)}%` } })),
            h("span", { class: "bar-value" }, formatCount(b.value)),
          ),
        ),
      );
    },
  };
}

/** The charts' time window, in seconds back from the latest poll. */
export const THROUGHPUT_WINDOW_S = 300;

const OUTCOME_COLORS: Record<(typeof OUTCOMES)[number], string> = { succeeded: "#1d7a3a", failed: "#b42323", cancelled: "#c9a227" };

/** Jobs finished, tokens and embedded texts per second over the last five minutes. */
export function throughputView() {
  const chart = (title: string, testId: string) =>
    lineChart({
      title,
      xLabel: "seconds from now",
      xDomain: [-THROUGHPUT_WINDOW_S, 0],
      width: 360,
      height: 170,
      testId,
      valueText: (y) => `${formatAmount(y)}/s`,
    });
  const jobs = chart("Jobs finished / s", "throughput-jobs");
  const tokens = chart("Tokens / s", "throughput-tokens");
  const texts = chart("Embedded texts / s", "throughput-texts");
  const el = h("div", { class: "charts" }, jobs.el, tokens.el, texts.el);
  return {
    el,
    /** Redraws from the samples (oldest first); `now` is the latest poll's time. */
    update(samples: ThroughputSample[], now: number) {
      const recent = samples.filter((s) => now - s.t <= THROUGHPUT_WINDOW_S * 1000);
      const series = (name: string, color: string, y: (s: ThroughputSample) => number): Series => ({
        name,
        color,
        points: recent.map((s) => ({ x: (s.t - now) / 1000, y: y(s) })),
      });
      jobs.update(OUTCOMES.map((o) => series(o, OUTCOME_COLORS[o], (s) => s.finished[o])));
      tokens.update([
        series("generated", "#2f5fd0", (s) => s.generatedTokens),
        series("prompt", "#8fb0ec", (s) => s.promptTokens),
      ]);
      texts.update([series("texts", "#7a3fb0", (s) => s.embeddedTexts)]);
    },
  };
}

const LATENCY_COLUMNS = ["Model", "Finished", "Latency p50", "Latency p95", "Queue wait p50", "Queue wait p95", "First output p50", "Per token p50"];

export function latencyTable() {
  const body = h("tbody");
  const el = h(
    "table",
    { class: "latency", "data-testid": "latency-table" },
    h("thead", null, h("tr", null, LATENCY_COLUMNS.map((t) => h("th", null, t)))),
    body,
  );
  const num = (col: string, text: string) => h("td", { class: "num", "data-col": col }, text);
  return {
    el,
    update(rows: LatencyRow[]) {
      if (!rows.length) {
        return setChildren(body, h("tr", null, h("td", { colspan: LATENCY_COLUMNS.length, class: "empty" }, "No job has run yet")));
      }
      setChildren(
        body,
        rows.map((r) =>
          h(
            "tr",
            { "data-model": r.model },
            h("td", { "data-col": "model" }, r.model),
            num("finished", formatCount(r.finished)),
            num("latency-p50", formatSeconds(r.latencyP50)),
            num("latency-p95", formatSeconds(r.latencyP95)),
            num("wait-p50", formatSeconds(r.queueWaitP50)),
            num("wait-p95", formatSeconds(r.queueWaitP95)),
            num("first-output-p50", formatSeconds(r.firstOutputP50)),
            num("per-token-p50", formatSeconds(r.perTokenP50)),
          ),
        ),
      );
    },
  };
}
