// Jobs: a live table from JobService.WatchJobs with Cancel buttons (table.ts), and a
// detail view that replays a job's event log through JobService.WatchJob (detail.ts).
import type { AppContext, Page } from "../../page.js";
import { h, messageBox } from "../../ui.js";
import { errorText } from "../../lib/format.js";
import { jobsTableView } from "./table.js";
import { jobDetailView } from "./detail.js";

export function jobsPage(ctx: AppContext): Page {
  const error = messageBox();

  function cancelJob(id: string) {
    ctx.api.jobs
      .cancelJob({ jobId: id, reason: "cancelled from the jobs table" })
      .catch((err) => error.show(`Cancel ${id}: ${errorText(err)}`));
  }

  const table = jobsTableView(ctx, { error, cancelJob });
  const detail = jobDetailView(ctx, cancelJob);

  const el = h(
    "section",
    { class: "page", id: "page-jobs" },
    h("h2", null, "Jobs ", table.live),
    error.el,
    detail.el,
    h("div", { class: "scroll" }, table.el),
  );

  return {
    id: "jobs",
    title: "Jobs",
    el,
    show(args) {
      table.start();
      if (args[0]) detail.show(decodeURIComponent(args[0]));
      else detail.hide();
    },
    hide() {
      table.stop();
      detail.hide();
    },
  };
}
