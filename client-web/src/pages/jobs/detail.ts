// The Jobs page's detail view (#/jobs/<id>): the job's summary from JobService.GetJob
// (the FULL view) and its whole event log replayed through JobService.WatchJob, which
// resumes after lost connections from the last sequence number seen.
import type { AppContext } from "../../page.js";
import type { Job, JobEvent } from "../../gen/deephardway/v1/jobs_pb.js";
import { h, messageBox, setChildren } from "../../ui.js";
import { errorText, tsMs } from "../../lib/format.js";
import { queuePlaceText } from "../../lib/jobstatus.js";
import { appendEvent, type LogLine } from "../../lib/eventlog.js";
import { jobSummaryRows } from "../../lib/jobdetail.js";
import { followJob } from "../../jobrun.js";

export interface JobDetailView {
  el: HTMLElement;
  /** Shows a job (and stops following the one shown before). */
  show(id: string): void;
  /** Stops following the job and hides the view. */
  hide(): void;
}

function summaryList(job: Job): HTMLElement {
  return h(
    "dl",
    { class: "kv" },
    jobSummaryRows(job, Date.now()).flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]),
  );
}

function logRow(l: LogLine): HTMLTableRowElement {
  return h(
    "tr",
    { class: `ev-${l.kind}` },
    h("td", { class: "num" }, l.fromSeq === l.toSeq ? `${l.fromSeq}` : `${l.fromSeq}–${l.toSeq}`),
    h("td", { class: "mono" }, l.time ? new Date(tsMs(l.time) ?? 0).toLocaleTimeString() : ""),
    h("td", null, l.kind),
    h("td", { class: l.kind === "output" ? "pre" : "" }, l.detail),
  );
}

/** The event log's table body, appending rows as events arrive (consecutive outputs merged into one). */
function eventLog() {
  const body = h("tbody");
  const lines: LogLine[] = [];
  let rendered = 0;
  let lastRow: HTMLTableRowElement | undefined;
  const el = h(
    "table",
    { class: "log", "data-testid": "event-log" },
    h("thead", null, h("tr", null, ["Seq", "Time", "Event", "Detail"].map((t) => h("th", null, t)))),
    body,
  );
  return {
    el,
    add(ev: JobEvent) {
      const before = lines.length;
      appendEvent(lines, ev);
      if (lines.length === before && lastRow) {
        // merged into the last line
        const updated = logRow(lines[lines.length - 1]);
        lastRow.replaceWith(updated);
        lastRow = updated;
      } else {
        for (; rendered < lines.length; rendered++) {
          lastRow = logRow(lines[rendered]);
          body.appendChild(lastRow);
        }
      }
    },
  };
}

export function jobDetailView(ctx: AppContext, cancelJob: (id: string) => void): JobDetailView {
  const el = h("div", { class: "detail", hidden: true, "data-testid": "detail" });
  let controller: AbortController | undefined;

  function show(id: string) {
    controller?.abort();
    const ctl = new AbortController();
    controller = ctl;
    el.hidden = false;
    const derror = messageBox();
    const summary = h("div", { class: "summary" }, "Loading…");
    const log = eventLog();
    const logStatus = h("div", { class: "status", "data-testid": "log-status" }, "Replaying events…");
    // The live place in line while the job waits (WatchJob's queue statuses).
    const inLine = h("div", { class: "status", "data-testid": "queue-status", hidden: true });
    const cancel = h("button", { class: "small", onclick: () => cancelJob(id) }, "Cancel");
    setChildren(
      el,
      h("div", { class: "detail-head" }, h("h3", null, `Job ${id}`), cancel, h("a", { href: "#/jobs" }, "close")),
      derror.el,
      summary,
      inLine,
      logStatus,
      log.el,
    );
    const loadSummary = () =>
      ctx.api.jobs.getJob({ jobId: id }, { signal: ctl.signal }).then((r) => {
        if (r.job) setChildren(summary, summaryList(r.job));
      });
    loadSummary().catch((err) => {
      if (!ctl.signal.aborted) {
        summary.textContent = "";
        derror.show(errorText(err));
      }
    });
    followJob(ctx.api, id, 0n, {
      signal: ctl.signal,
      banner: ctx.banner,
      label: `job ${id} log`,
      onEvent: (ev) => {
        log.add(ev);
        logStatus.textContent = `${ev.seq} events`;
        if (ev.event.case === "started" && !inLine.hidden) {
          inLine.hidden = true;
          // Seen waiting live: the summary's state and "In line" row are out of date now.
          loadSummary().catch(() => {});
        }
      },
      onQueueStatus: (queue) => {
        inLine.hidden = false;
        inLine.textContent = `In line: ${queuePlaceText(queue, Date.now())}`;
      },
    })
      .then((final) => {
        logStatus.textContent = `${final.seq} events, ended with ${final.event.case}`;
        cancel.disabled = true;
        return loadSummary();
      })
      .catch((err) => {
        if (!ctl.signal.aborted) derror.show(errorText(err));
      });
  }

  function hide() {
    controller?.abort();
    controller = undefined;
    el.hidden = true;
    el.replaceChildren();
  }

  return { el, show, hide };
}
