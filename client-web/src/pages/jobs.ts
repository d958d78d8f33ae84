// Jobs: a live table from Jobs.WatchJobs, with Cancel buttons and a detail view that
// replays a job's event log through Jobs.Watch (resuming after lost connections).
import type { AppContext, Page } from "../page.js";
import { h, messageBox, progressBar, setChildren } from "../ui.js";
import {
  errorText,
  failureText,
  formatDuration,
  formatPercent,
  isFinished,
  jobDurationMs,
  kindName,
  stateName,
  tsMs,
} from "../lib/format.js";
import { applyUpdate, emptyTable, queuePositions, sortedJobs, trimFinished, type JobsTable } from "../lib/jobsTable.js";
import { abortableSleep, backoffMs, isRetryable } from "../lib/watch.js";
import { appendEvent, type LogLine } from "../lib/eventlog.js";
import { followJob } from "../jobrun.js";
import { JobState, type Job } from "../gen/deephardway/v1/jobs_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";

const MAX_ROWS = 200;

export function jobsPage(ctx: AppContext): Page {
  const error = messageBox();
  const live = h("span", { class: "live", "data-testid": "live" }, "connecting…");
  const tbody = h("tbody");
  const table = h(
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
  const detail = h("div", { class: "detail", hidden: true, "data-testid": "detail" });

  let tableState: JobsTable = emptyTable();
  let controller: AbortController | undefined;
  let renderQueued = false;
  let tick: ReturnType<typeof setInterval> | undefined;

  function cancelJob(id: string) {
    ctx.api.jobs
      .cancel({ jobId: id, reason: "cancelled from the jobs table" })
      .catch((err) => error.show(`Cancel ${id}: ${errorText(err)}`));
  }

  function render() {
    renderQueued = false;
    const now = Date.now();
    const jobs = sortedJobs(tableState);
    const positions = queuePositions(jobs);
    const rows = jobs.map((job) => {
      const bar = progressBar();
      bar.set(job.progress, job.state === JobState.SUCCEEDED ? "100%" : formatPercent(job.progress));
      const pos = positions.get(job.id);
      const state = stateName(job.state) + (job.cancelRequested && !isFinished(job.state) ? " (cancelling)" : "");
      const canCancel = job.state === JobState.QUEUED || job.state === JobState.RUNNING;
      return h(
        "tr",
        { "data-job-id": job.id, class: `state-${stateName(job.state)}` },
        h("td", null, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, job.id)),
        h("td", null, kindName(job.kind)),
        h("td", { class: "state", title: job.failure ? `${job.failure.message}` : "" }, state),
        h("td", null, job.model),
        h("td", { class: "num" }, pos === undefined ? "" : String(pos)),
        h("td", null, bar.el),
        h("td", { title: job.workerId }, [job.workerName || job.workerId, job.device].filter(Boolean).join(" / ")),
        h("td", { class: "num" }, formatDuration(jobDurationMs(job, now))),
        h("td", null, canCancel ? h("button", { class: "small", onclick: () => cancelJob(job.id), "data-testid": "cancel" }, "Cancel") : null),
      );
    });
    setChildren(tbody, rows.length ? rows : h("tr", null, h("td", { colspan: 9, class: "empty" }, "No jobs yet.")));
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(render);
  }

  async function watchLoop(signal: AbortSignal) {
    let attempt = 0;
    while (!signal.aborted) {
      try {
        let first = true;
        for await (const update of ctx.api.jobs.watchJobs({ limit: 100 }, { signal })) {
          if (first) {
            // A new stream starts with a fresh snapshot.
            first = false;
            tableState = emptyTable();
            attempt = 0;
            live.textContent = "live";
            live.className = "live ok";
            ctx.banner.report("jobs table", { kind: "connected" });
            error.clear();
          }
          if (applyUpdate(tableState, update)) {
            trimFinished(tableState, MAX_ROWS);
            scheduleRender();
          }
        }
        throw new ConnectError("the jobs stream ended", Code.Unavailable);
      } catch (err) {
        if (signal.aborted) return;
        if (!isRetryable(err)) {
          error.show(`WatchJobs: ${errorText(err)}`);
          live.textContent = "stopped";
          live.className = "live bad";
          return;
        }
        const delayMs = backoffMs(attempt++);
        live.textContent = `connection lost, retrying in ${formatDuration(delayMs)}`;
        live.className = "live bad";
        ctx.banner.report("jobs table", { kind: "retrying", attempt, delayMs, error: err });
        try {
          await abortableSleep(delayMs, signal);
        } catch {
          return;
        }
      }
    }
  }

  // --- detail view ---
  let detailController: AbortController | undefined;

  function showDetail(id: string) {
    detailController?.abort();
    const ctl = new AbortController();
    detailController = ctl;
    detail.hidden = false;
    const derror = messageBox();
    const summary = h("div", { class: "summary" }, "Loading…");
    const logBody = h("tbody");
    const logStatus = h("div", { class: "status", "data-testid": "log-status" }, "Replaying events…");
    const cancel = h("button", { class: "small", onclick: () => cancelJob(id) }, "Cancel");
    setChildren(
      detail,
      h("div", { class: "detail-head" }, h("h3", null, `Job ${id}`), cancel, h("a", { href: "#/jobs" }, "close")),
      derror.el,
      summary,
      logStatus,
      h(
        "table",
        { class: "log", "data-testid": "event-log" },
        h("thead", null, h("tr", null, ["Seq", "Time", "Event", "Detail"].map((t) => h("th", null, t)))),
        logBody,
      ),
    );
    ctx.api.jobs
      .get({ jobId: id }, { signal: ctl.signal })
      .then((job) => setChildren(summary, describeJob(job)))
      .catch((err) => {
        if (!ctl.signal.aborted) {
          summary.textContent = "";
          derror.show(errorText(err));
        }
      });
    const lines: LogLine[] = [];
    let rendered = 0;
    let lastRow: HTMLTableRowElement | undefined;
    const renderLine = (l: LogLine) =>
      h(
        "tr",
        { class: `ev-${l.kind}` },
        h("td", { class: "num" }, l.fromSeq === l.toSeq ? `${l.fromSeq}` : `${l.fromSeq}–${l.toSeq}`),
        h("td", { class: "mono" }, l.time ? new Date(tsMs(l.time) ?? 0).toLocaleTimeString() : ""),
        h("td", null, l.kind),
        h("td", { class: l.kind === "output" ? "pre" : "" }, l.detail),
      );
    followJob(ctx.api, id, 0n, {
      signal: ctl.signal,
      banner: ctx.banner,
      label: `job ${id} log`,
      onEvent: (ev) => {
        const before = lines.length;
        appendEvent(lines, ev);
        if (lines.length === before && lastRow) {
          // merged into the last line
          const updated = renderLine(lines[lines.length - 1]);
          lastRow.replaceWith(updated);
          lastRow = updated;
        } else {
          for (; rendered < lines.length; rendered++) {
            lastRow = renderLine(lines[rendered]);
            logBody.appendChild(lastRow);
          }
        }
        logStatus.textContent = `${ev.seq} events`;
      },
    })
      .then((final) => {
        logStatus.textContent = `${final.seq} events, ended with ${final.event.case}`;
        cancel.disabled = true;
        return ctx.api.jobs.get({ jobId: id }, { signal: ctl.signal }).then((job) => setChildren(summary, describeJob(job)));
      })
      .catch((err) => {
        if (!ctl.signal.aborted) derror.show(errorText(err));
      });
  }

  function hideDetail() {
    detailController?.abort();
    detailController = undefined;
    detail.hidden = true;
    detail.replaceChildren();
  }

  const el = h(
    "section",
    { class: "page", id: "page-jobs" },
    h("h2", null, "Jobs ", live),
    error.el,
    detail,
    h("div", { class: "scroll" }, table),
  );

  return {
    id: "jobs",
    title: "Jobs",
    el,
    show(args) {
      if (!controller) {
        controller = new AbortController();
        tableState = emptyTable();
        render();
        void watchLoop(controller.signal);
        tick = setInterval(() => {
          for (const j of tableState.jobs.values()) {
            if (!isFinished(j.state)) return scheduleRender();
          }
        }, 1000);
      }
      if (args[0]) showDetail(decodeURIComponent(args[0]));
      else hideDetail();
    },
    hide() {
      controller?.abort();
      controller = undefined;
      if (tick) clearInterval(tick);
      ctx.banner.clear("jobs table");
      hideDetail();
    },
  };
}

function describeJob(job: Job): HTMLElement {
  const created = tsMs(job.createdAt);
  const rows: [string, string][] = [
    ["State", stateName(job.state) + (job.cancelRequested ? ` (cancel requested${job.cancelReason ? `: ${job.cancelReason}` : ""})` : "")],
    ["Kind", kindName(job.kind)],
    ["Model", job.model],
    ["Attempts", `${job.attempts} of ${job.maxAttempts}`],
    ["Worker / device", [job.workerName, job.workerId, job.device].filter(Boolean).join(" / ")],
    ["Created", created ? new Date(created).toLocaleString() : ""],
    ["Duration", formatDuration(jobDurationMs(job, Date.now()))],
    ["Progress", formatPercent(job.progress)],
    ["Last seq", String(job.lastSeq)],
  ];
  if (job.failure) rows.push(["Failure", failureText(job.failure)]);
  return h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}
