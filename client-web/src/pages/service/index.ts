// Service: an operator's picture of the running cluster from the service's Prometheus
// endpoint (GET /metrics, polled every 2 s while the page is shown): the connected
// workers, the jobs queued and running per model, throughput over the last five minutes
// and latency quantiles over the last minute. Rates and quantiles come from the
// differences between polls (src/lib/metricsWindow.ts), so they start after the second
// poll. Reading the metrics takes an admin or viewer key: 401 and 403 show a message
// instead of the page.
import type { AppContext, Page } from "../../page.js";
import { h, messageBox } from "../../ui.js";
import { indexByName, parseExposition } from "../../lib/openmetrics.js";
import { Ring, SampleWindow, type Snapshot } from "../../lib/metricsWindow.js";
import { MetricsHttpError, metricsErrorText } from "../../lib/metricsFetch.js";
import {
  clusterSummary,
  isUsed,
  latencyRows,
  queueBars,
  summaryText,
  throughputSample,
  workerRows,
  type ThroughputSample,
} from "../../lib/serviceView.js";
import { latencyTable, queueView, THROUGHPUT_WINDOW_S, throughputView, workersTable } from "./views.js";

/** The latency quantiles' look back. */
const LATENCY_WINDOW_MS = 60_000;
/** A scrape that takes longer is abandoned (the next poll tries again). */
const FETCH_TIMEOUT_MS = 10_000;

export interface ServicePageOptions {
  /** Between the starts of two polls; 2 s by default. */
  intervalMs?: number;
  /** The clock (ms since the epoch); Date.now by default. */
  now?: () => number;
}

export function servicePage(ctx: AppContext, opts: ServicePageOptions = {}): Page {
  const intervalMs = opts.intervalMs ?? 2000;
  const now = opts.now ?? (() => Date.now());
  const error = messageBox();
  error.el.dataset.testid = "service-error";
  const status = h("span", { class: "live", "data-testid": "service-status" }, "connecting…");
  const summary = h("p", { class: "summary-line", "data-testid": "summary" });

  const workers = workersTable();
  const queue = queueView();
  const throughput = throughputView();
  const latency = latencyTable();
  const throughputSection = h(
    "section",
    { class: "service-section", "data-testid": "throughput", "data-polls": 0 },
    h("h3", null, "Throughput ", h("small", null, "last 5 minutes, between polls")),
    throughput.el,
  );
  const content = h(
    "div",
    { class: "service", hidden: true },
    summary,
    h("section", { class: "service-section", "data-testid": "workers" }, h("h3", null, "Workers"), h("div", { class: "scroll" }, workers.el)),
    h("section", { class: "service-section", "data-testid": "queues" }, h("h3", null, "Queue ", h("small", null, "jobs per model")), queue.el),
    throughputSection,
    h(
      "section",
      { class: "service-section", "data-testid": "latency" },
      h("h3", null, "Latency ", h("small", null, "last minute: end to end (submitted to finished), in the queue, to the first output")),
      h("div", { class: "scroll" }, latency.el),
    ),
  );

  // Kept across hide and show: coming back shows the recent past at once.
  const history = new SampleWindow(LATENCY_WINDOW_MS, intervalMs);
  const samples = new Ring<ThroughputSample>(Math.ceil((THROUGHPUT_WINDOW_S * 1000) / intervalMs) + 4);
  let polls = 0;

  function ingest(text: string, t: number): Snapshot {
    // Only what the page reads is kept (the rest, store timings and such, is most of it).
    const snapshot = { t, scrape: indexByName(parseExposition(text).filter((s) => isUsed(s.name))) };
    const before = history.latest();
    history.push(snapshot);
    const sample = before && throughputSample(before, snapshot);
    if (sample) samples.push(sample);
    polls++;
    return snapshot;
  }

  function render(latest: Snapshot) {
    const cluster = clusterSummary(latest.scrape);
    summary.textContent = summaryText(cluster);
    workers.update(workerRows(latest, history.previous()), cluster);
    queue.update(queueBars(latest.scrape));
    throughput.update(samples.toArray(), latest.t);
    throughputSection.dataset.polls = String(polls);
    throughputSection.dataset.samples = String(samples.size);
    latency.update(latencyRows(history.baseFor(LATENCY_WINDOW_MS), latest));
    status.textContent = `updated ${new Date(latest.t).toLocaleTimeString()}`;
    status.className = "live ok";
  }

  let controller: AbortController | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;

  /** One scrape with a time limit; rejects with the fetcher's error, or "no answer" after the limit. */
  async function scrape(signal: AbortSignal): Promise<string> {
    const req = new AbortController();
    const stop = () => req.abort();
    signal.addEventListener("abort", stop);
    const limit = setTimeout(stop, FETCH_TIMEOUT_MS);
    try {
      return await ctx.metrics(req.signal);
    } catch (err) {
      if (req.signal.aborted && !signal.aborted) throw new Error(`no answer in ${FETCH_TIMEOUT_MS / 1000} s`);
      throw err;
    } finally {
      clearTimeout(limit);
      signal.removeEventListener("abort", stop);
    }
  }

  async function poll(signal: AbortSignal) {
    const started = now();
    try {
      const text = await scrape(signal);
      if (signal.aborted) return;
      error.clear();
      content.hidden = false;
      render(ingest(text, now()));
    } catch (err) {
      if (signal.aborted) return;
      error.show(metricsErrorText(err));
      status.textContent = "not updated";
      status.className = "live bad";
      if (err instanceof MetricsHttpError && err.isAuth) {
        // The same key gets the same answer: stop. Signing in shows the page afresh.
        content.hidden = true;
        return;
      }
      // No connection or a server error: the last picture stays, the next poll retries.
    }
    if (!signal.aborted) timer = setTimeout(() => void poll(signal), Math.max(0, intervalMs - (now() - started)));
  }

  const el = h(
    "section",
    { class: "page", id: "page-service" },
    h("h2", null, "Service ", status),
    h("p", { class: "hint" }, `The running cluster from the service's metrics (GET /metrics), read every ${intervalMs / 1000} s while this page is shown. It takes an admin or viewer key when the service checks keys.`),
    error.el,
    content,
  );

  return {
    id: "service",
    title: "Service",
    el,
    show() {
      if (controller) return;
      controller = new AbortController();
      // Another key may be signed in now: what the last one was told is stale.
      error.clear();
      status.textContent = "connecting…";
      status.className = "live";
      void poll(controller.signal);
    },
    hide() {
      controller?.abort();
      controller = undefined;
      if (timer) clearTimeout(timer);
      timer = undefined;
    },
  };
}
