// The Jobs page's live table: JobService.WatchJobs (a snapshot, then every change; no
// polling), reduced by src/lib/jobsTable.ts, with a Cancel button per active job. A lost
// stream is retried with backoff and starts over from a fresh snapshot.
import { Code, ConnectError } from "@connectrpc/connect";
import type { AppContext } from "../../page.js";
import { JobState, type Job } from "../../gen/deephardway/v1/jobs_pb.js";
import { h, progressBar, setChildren } from "../../ui.js";
import { errorText, formatDuration, formatPercent, isFinished, jobDurationMs, kindName, stateName } from "../../lib/format.js";
import { applyUpdate, emptyTable, queuePositions, sortedJobs, trimFinished, type JobsTable } from "../../lib/jobsTable.js";
import { abortableSleep, backoffMs, isRetryable } from "../../lib/watch.js";

/** Jobs in the WatchJobs snapshot. */
const SNAPSHOT_SIZE = 100;
/** The most rows kept: beyond it, the oldest finished jobs are dropped. */
const MAX_ROWS = 200;
/** The banner's name of the stream. */
const BANNER_KEY = "jobs table";

export interface JobsTableView {
  /** The "live" / "connection lost" indicator for the heading. */
  live: HTMLElement;
  /** The table. */
  el: HTMLElement;
  /** Starts watching (from a fresh snapshot) and the duration ticker; nothing when already started. */
  start(): void;
  /** Stops watching. */
  stop(): void;
}

export interface JobsTableOptions {
  error: { show(text: string): void; clear(): void };
  /** A row's Cancel button. */
  cancelJob(id: string): void;
}

export function jobsTableView(ctx: AppContext, opts: JobsTableOptions): JobsTableView {
  const { error } = opts;
  const live = h("span", { class: "live", "data-testid": "live" }, "connecting…");
  const tbody = h("tbody");
  const el = h(
    "table",
    { class: "jobs", "data-testid": "jobs-table" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["Id", "Kind", "State", "Model", "Queue", "Progress", "Worker / device", "Duration", ""].map((t) => h("th", null, t)),
      ),
    ),
    tbody,
  );

  let table: JobsTable = emptyTable();
  let controller: AbortController | undefined;
  let renderQueued = false;
  let tick: ReturnType<typeof setInterval> | undefined;

  function row(job: Job, position: number | undefined, now: number): HTMLTableRowElement {
    const bar = progressBar();
    bar.set(job.progress, job.state === JobState.SUCCEEDED ? "100%" : formatPercent(job.progress));
    const state = stateName(job.state) + (job.cancelRequested && !isFinished(job.state) ? " (cancelling)" : "");
    const canCancel = job.state === JobState.QUEUED || job.state === JobState.RUNNING;
    return h(
      "tr",
      { "data-job-id": job.id, class: `state-${stateName(job.state)}` },
      h("td", null, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, job.id)),
      h("td", null, kindName(job.kind)),
      h("td", { class: "state", title: job.error ? `${job.error.message}` : "" }, state),
      h("td", null, job.model),
      h("td", { class: "num" }, position === undefined ? "" : String(position)),
      h("td", null, bar.el),
      h("td", { title: job.workerId }, [job.workerName || job.workerId, job.device].filter(Boolean).join(" / ")),
      h("td", { class: "num" }, formatDuration(jobDurationMs(job, now))),
      h(
        "td",
        null,
        canCancel ? h("button", { class: "small", onclick: () => opts.cancelJob(job.id), "data-testid": "cancel" }, "Cancel") : null,
      ),
    );
  }

  function render() {
    renderQueued = false;
    const now = Date.now();
    const jobs = sortedJobs(table);
    const positions = queuePositions(jobs);
    const rows = jobs.map((job) => row(job, positions.get(job.id), now));
    setChildren(tbody, rows.length ? rows : h("tr", null, h("td", { colspan: 9, class: "empty" }, "No jobs yet.")));
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(render);
  }

  function setLive(text: string, ok: boolean) {
    live.textContent = text;
    live.className = `live ${ok ? "ok" : "bad"}`;
  }

  async function watchLoop(signal: AbortSignal) {
    let attempt = 0;
    while (!signal.aborted) {
      try {
        let first = true;
        for await (const update of ctx.api.jobs.watchJobs({ snapshotSize: SNAPSHOT_SIZE }, { signal })) {
          if (first) {
            // A new stream starts with a fresh snapshot.
            first = false;
            table = emptyTable();
            attempt = 0;
            setLive("live", true);
            ctx.banner.report(BANNER_KEY, { kind: "connected" });
            error.clear();
          }
          if (applyUpdate(table, update)) {
            trimFinished(table, MAX_ROWS);
            scheduleRender();
          }
        }
        throw new ConnectError("the jobs stream ended", Code.Unavailable);
      } catch (err) {
        if (signal.aborted) return;
        if (!isRetryable(err)) {
          error.show(`WatchJobs: ${errorText(err)}`);
          setLive("stopped", false);
          return;
        }
        const delayMs = backoffMs(attempt++);
        setLive(`connection lost, retrying in ${formatDuration(delayMs)}`, false);
        ctx.banner.report(BANNER_KEY, { kind: "retrying", attempt, delayMs, error: err });
        try {
          await abortableSleep(delayMs, signal);
        } catch {
          return;
        }
      }
    }
  }

  return {
    live,
    el,
    start() {
      if (controller) return;
      controller = new AbortController();
      table = emptyTable();
      live.textContent = "connecting…";
      live.className = "live";
      // A restart (after signing in, say) begins clean: an old stream's error is stale.
      error.clear();
      render();
      void watchLoop(controller.signal);
      // Running and queued jobs' durations grow: redraw every second while there are some.
      tick = setInterval(() => {
        for (const j of table.jobs.values()) {
          if (!isFinished(j.state)) return scheduleRender();
        }
      }, 1000);
    },
    stop() {
      controller?.abort();
      controller = undefined;
      if (tick) clearInterval(tick);
      ctx.banner.clear(BANNER_KEY);
    },
  };
}
