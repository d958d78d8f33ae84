// Train: upload and manage datasets (datasets.ts), train a classifier on one (form.ts)
// with live loss and accuracy curves (charts.ts), Stop, and the result with a link to
// Classify with the new model.
import type { AppContext, Page } from "../../page.js";
import { h, messageBox, progressBar, setChildren } from "../../ui.js";
import { jobControls } from "../../jobControls.js";
import { durationSuffix, endedText } from "../../lib/jobstatus.js";
import { trainInput, trainSummary } from "../../lib/train.js";
import type { TrainResult } from "../../gen/deephardway/v1/inputs_pb.js";
import { datasetsSection } from "./datasets.js";
import { trainFormView } from "./form.js";
import { trainCharts } from "./charts.js";

export function trainPage(ctx: AppContext): Page {
  const form = trainFormView();
  const datasets = datasetsSection(ctx, {
    onListed: (list, choose) => form.setDatasets(list.map((d) => d.name), choose),
    onUse: (name) => form.chooseDataset(name),
  });
  const bar = progressBar();
  const status = h("div", { class: "status", "data-testid": "status" });
  const result = h("div", { class: "result", "data-testid": "result" });
  const error = messageBox();
  const charts = trainCharts();

  function showResult(r: TrainResult) {
    setChildren(
      result,
      h("span", { "data-testid": "summary" }, `Trained ${trainSummary(r)}`),
      " ",
      h(
        "a",
        { href: `#/classify/${encodeURIComponent(r.model)}`, class: "button", "data-testid": "classify-link" },
        `Classify with ${r.model}@${r.version} →`,
      ),
    );
  }

  const job = jobControls(ctx, { status, error, run: form.run, stop: form.stop, stopVerb: "stop", showWorker: true });

  form.el.addEventListener("submit", (e) => {
    e.preventDefault();
    bar.set(0);
    setChildren(result);
    charts.reset();
    job.start({
      spec: () => ({ input: { case: "train", value: trainInput(form.read()) } }),
      onEvent: (ev) => {
        if (ev.event.case !== "progress") return;
        const p = ev.event.value;
        bar.set(p.fraction);
        charts.add(p.metrics);
        const rate = charts.last().imagesPerSecond;
        if (p.message) status.textContent = `Job ${ev.jobId}: ${p.message}${rate !== undefined ? ` · ${Math.round(rate)} images/s` : ""}`;
      },
      onFinal: () => charts.draw(),
      onResult: (r, final, t) => {
        if (r.case !== "train") return;
        bar.set(1);
        status.textContent = `Job ${final.jobId} succeeded${durationSuffix(t.startedMs, t.endMs ?? Date.now())}`;
        showResult(r.value);
        // ListModels now has the new model; refresh the cache for the other pages.
        ctx.models.list(true).catch(() => {});
      },
      onCancelled: (reason) => {
        const epoch = charts.last().epoch;
        setChildren(result, endedText("Stopped", reason), epoch !== undefined ? ` in epoch ${epoch}` : "");
      },
    });
  });

  const el = h(
    "section",
    { class: "page", id: "page-train" },
    h("h2", null, "Train"),
    h("h3", null, "Datasets"),
    h("p", { class: "hint" }, "Labelled images for training, uploaded as one archive."),
    datasets.els,
    h("h3", null, "Training"),
    form.el,
    error.el,
    bar.el,
    status,
    charts.el,
    result,
  );

  return {
    id: "train",
    title: "Train",
    el,
    show() {
      void datasets.refresh();
    },
  };
}
