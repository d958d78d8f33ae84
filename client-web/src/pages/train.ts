// Train: upload and manage datasets, train a classifier on one with live loss and
// accuracy curves, Stop, and the result with a link to Classify with the new model.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, progressBar, setChildren } from "../ui.js";
import { errorText, tsMs } from "../lib/format.js";
import { jobControls } from "../jobControls.js";
import { durationSuffix, endedText } from "../lib/jobstatus.js";
import type { Dataset } from "../gen/deephardway/v1/datasets_pb.js";
import { lineChart } from "../chart.js";
import { addMetrics, emptyCurves, type TrainCurves } from "../lib/curves.js";
import {
  DEFAULT_FORM,
  PRESETS,
  datasetNameFromFile,
  formatBytes,
  presetDataset,
  trainInput,
  trainSummary,
  type TrainForm,
} from "../lib/train.js";

const COLORS = { loss: "#c0392b", train: "#2f5fd0", validation: "#1d9a4a" };

function select(name: string, options: [string, string][]): HTMLSelectElement {
  return h("select", { name }, options.map(([value, text]) => h("option", { value }, text)));
}

function datasetSummary(d: Dataset): string {
  const classes = d.classes.length <= 12 ? d.classes.join(", ") : `${d.classes.slice(0, 12).join(", ")}, …`;
  return `${d.classes.length} classes (${classes}), ${d.trainImages} train images, ${d.testImages} test images, ${formatBytes(d.archiveBytes)}`;
}

export function trainPage(ctx: AppContext): Page {
  // --- datasets ---
  const dsName = h("input", { type: "text", name: "dataset_name", placeholder: "from the file's name" });
  const dsFile = h("input", {
    type: "file",
    name: "archive",
    accept: ".zip,.tar,.tar.gz,.tgz,application/zip,application/x-tar,application/gzip",
  });
  const upload = h("button", { type: "submit", class: "primary", "data-testid": "upload" }, "Upload");
  const dsInfo = h("div", { class: "result", "data-testid": "dataset-info" });
  const dsError = messageBox();
  dsError.el.dataset.testid = "dataset-error";
  const dsBody = h("tbody");
  const dsTable = h(
    "table",
    { class: "datasets", "data-testid": "datasets" },
    h("thead", null, h("tr", null, ["Name", "Classes", "Train", "Test", "Size", "Uploaded", ""].map((t) => h("th", null, t)))),
    dsBody,
  );
  let autoName = "";
  let datasets: Dataset[] = [];

  dsFile.addEventListener("change", () => {
    const f = dsFile.files?.[0];
    if (!f) return;
    // Follow the file's name unless the user typed one.
    if (!dsName.value || dsName.value === autoName) {
      autoName = datasetNameFromFile(f.name);
      dsName.value = autoName;
    }
  });

  const dsForm = h(
    "form",
    { class: "form", novalidate: true },
    h(
      "div",
      { class: "row" },
      field("Archive", dsFile, "zip, tar or tar.gz: one folder per class, or train/ and test/ holding them"),
      field("Name", dsName, "letters, digits and ._-"),
    ),
    h("div", { class: "actions" }, upload),
  );

  dsForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    dsError.clear();
    setChildren(dsInfo);
    const f = dsFile.files?.[0];
    if (!f) {
      dsError.show("Pick an archive first.");
      return;
    }
    const name = dsName.value.trim() || datasetNameFromFile(f.name);
    upload.disabled = true;
    dsInfo.textContent = `Uploading ${f.name} (${formatBytes(f.size)})…`;
    try {
      const archive = new Uint8Array(await f.arrayBuffer());
      const d = await ctx.api.datasets.upload({ name, archive });
      setChildren(dsInfo, `Dataset ${d.name}: ${datasetSummary(d)}`);
      dsInfo.dataset.dataset = d.name;
      await refreshDatasets(d.name);
    } catch (err) {
      setChildren(dsInfo);
      dsError.show(errorText(err));
    } finally {
      upload.disabled = false;
    }
  });

  async function deleteDataset(name: string) {
    dsError.clear();
    try {
      await ctx.api.datasets.delete({ name });
      if (dsInfo.dataset.dataset === name) {
        setChildren(dsInfo);
        delete dsInfo.dataset.dataset;
      }
      await refreshDatasets();
    } catch (err) {
      dsError.show(`Delete ${name}: ${errorText(err)}`);
    }
  }

  function renderDatasets() {
    const rows = datasets.map((d) => {
      const created = tsMs(d.createdAt);
      return h(
        "tr",
        { "data-dataset": d.name },
        h("td", { class: "mono" }, d.name),
        h("td", { title: d.classes.join(", ") }, `${d.classes.length}: ${d.classes.length <= 10 ? d.classes.join(", ") : `${d.classes.slice(0, 10).join(", ")}, …`}`),
        h("td", { class: "num" }, String(d.trainImages)),
        h("td", { class: "num" }, String(d.testImages)),
        h("td", { class: "num" }, formatBytes(d.archiveBytes)),
        h("td", null, created ? new Date(created).toLocaleString() : ""),
        h(
          "td",
          { class: "buttons" },
          h("button", { type: "button", class: "small", "data-testid": "use", onclick: () => (dataset.value = d.name) }, "Train on it"),
          h("button", { type: "button", class: "small", "data-testid": "delete", onclick: () => deleteDataset(d.name) }, "Delete"),
        ),
      );
    });
    setChildren(dsBody, rows.length ? rows : h("tr", null, h("td", { colspan: 7, class: "empty" }, "No datasets yet: upload one.")));
    const current = dataset.value;
    setChildren(
      dataset,
      datasets.length ? datasets.map((d) => h("option", { value: d.name }, d.name)) : h("option", { value: "" }, "(no dataset)"),
    );
    if (datasets.some((d) => d.name === current)) dataset.value = current;
  }

  /** Lists the datasets again; `choose` selects one for training. */
  async function refreshDatasets(choose?: string) {
    try {
      datasets = (await ctx.api.datasets.list({})).datasets;
      renderDatasets();
      if (choose && datasets.some((d) => d.name === choose)) dataset.value = choose;
    } catch (err) {
      dsError.show(`Datasets.List: ${errorText(err)}`);
    }
  }

  // --- training ---
  const dataset = h("select", { name: "dataset" });
  const architecture = select("architecture", [
    ["mlp", "mlp (fully connected)"],
    ["cnn", "cnn (small convolutional)"],
  ]);
  const hiddenSizes = h("input", { type: "text", name: "hidden_sizes" });
  const inputSize = h("input", { type: "number", name: "input_size", min: 0 });
  const epochs = h("input", { type: "number", name: "epochs", min: 1 });
  const batchSize = h("input", { type: "number", name: "batch_size", min: 0 });
  const optimizer = select("optimizer", [
    ["sgd", "sgd"],
    ["adamw", "adamw"],
  ]);
  const learningRate = h("input", { type: "number", name: "learning_rate", step: "0.0001" });
  const schedule = select("learning_rate_schedule", [
    ["constant", "constant"],
    ["cosine", "cosine"],
  ]);
  const validationSplit = h("input", { type: "number", name: "validation_split", step: "0.05", min: 0, max: 0.5 });
  const seed = h("input", { type: "text", name: "seed" });
  const augmentShift = h("input", { type: "number", name: "augment_shift", min: 0, max: 8 });
  const outputModel = h("input", { type: "text", name: "output_model", placeholder: "the dataset's name" });
  const hiddenField = field("Hidden sizes", hiddenSizes, "mlp layers, e.g. 20, 7, 5");

  const inputs: { [K in Exclude<keyof TrainForm, "dataset">]: HTMLInputElement | HTMLSelectElement } = {
    architecture,
    hiddenSizes,
    inputSize,
    epochs,
    batchSize,
    optimizer,
    learningRate,
    learningRateSchedule: schedule,
    validationSplit,
    seed,
    augmentShift,
    outputModel,
  };
  function setForm(values: Partial<TrainForm>) {
    for (const [k, v] of Object.entries(values)) {
      if (k === "dataset") continue;
      const el = inputs[k as keyof typeof inputs];
      if (el && v !== undefined) el.value = v;
    }
    hiddenField.hidden = architecture.value === "cnn";
  }
  function readForm(): TrainForm {
    const f = { dataset: dataset.value } as TrainForm;
    for (const [k, el] of Object.entries(inputs)) f[k as keyof typeof inputs] = el.value;
    return f;
  }
  setForm(DEFAULT_FORM);
  architecture.addEventListener("change", () => (hiddenField.hidden = architecture.value === "cnn"));

  const presets = h(
    "div",
    { class: "presets" },
    h("span", { class: "label" }, "Presets:"),
    PRESETS.map((p) =>
      h(
        "button",
        {
          type: "button",
          class: "small",
          "data-preset": p.id,
          onclick: () => {
            setForm(p.values);
            dataset.value = presetDataset(
              p,
              datasets.map((d) => d.name),
              dataset.value,
            );
          },
        },
        p.title,
      ),
    ),
  );

  const run = h("button", { type: "submit", class: "primary", "data-testid": "run" }, "Train");
  const stop = h("button", { type: "button", disabled: true, "data-testid": "stop" }, "Stop");
  const bar = progressBar();
  const status = h("div", { class: "status", "data-testid": "status" });
  const result = h("div", { class: "result", "data-testid": "result" });
  const error = messageBox();
  const lossChart = lineChart({ title: "Loss", xLabel: "step", testId: "chart-loss" });
  const accChart = lineChart({ title: "Accuracy", xLabel: "step", yDomain: [0, 1], testId: "chart-accuracy" });

  let curves: TrainCurves = emptyCurves();
  let drawQueued = false;
  function draw() {
    drawQueued = false;
    lossChart.update([{ name: "loss", color: COLORS.loss, points: curves.loss }]);
    accChart.update([
      { name: "train", color: COLORS.train, points: curves.trainAccuracy },
      { name: "validation", color: COLORS.validation, points: curves.validationAccuracy },
    ]);
  }
  function scheduleDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(draw);
  }

  const form = h(
    "form",
    { class: "form", novalidate: true },
    presets,
    h(
      "div",
      { class: "row" },
      field("Dataset", dataset),
      field("Architecture", architecture),
      hiddenField,
      field("Input size", inputSize, "pixels a side; 0: the dataset's"),
      field("Output model", outputModel),
    ),
    h(
      "div",
      { class: "row" },
      field("Epochs", epochs),
      field("Batch size", batchSize, "0: the whole set"),
      field("Optimizer", optimizer),
      field("Learning rate", learningRate),
      field("Schedule", schedule),
    ),
    h(
      "div",
      { class: "row" },
      field("Validation split", validationSplit, "0: the test/ images"),
      field("Augment shift", augmentShift, "pixels, 0 to 8"),
      field("Seed", seed),
    ),
    h("div", { class: "actions" }, run, stop),
  );

  const job = jobControls(ctx, { status, error, run, stop, stopVerb: "stop", showWorker: true });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    bar.set(0);
    setChildren(result);
    curves = emptyCurves();
    draw();
    job.start({
      request: () => ({ input: { case: "train", value: trainInput(readForm()) } }),
      onEvent: (ev) => {
        if (ev.event.case !== "progress") return;
        const p = ev.event.value;
        bar.set(p.fraction);
        if (addMetrics(curves, p.metrics)) scheduleDraw();
        const rate = curves.last.imagesPerSecond;
        if (p.message) status.textContent = `Job ${ev.jobId}: ${p.message}${rate !== undefined ? ` · ${Math.round(rate)} images/s` : ""}`;
      },
      onFinal: () => draw(),
      onResult: (r, final, t) => {
        if (r.case !== "train") return;
        bar.set(1);
        status.textContent = `Job ${final.jobId} succeeded${durationSuffix(t.startedMs, t.endMs ?? Date.now())}`;
        setChildren(
          result,
          h("span", { "data-testid": "summary" }, `Trained ${trainSummary(r.value)}`),
          " ",
          h(
            "a",
            { href: `#/classify/${encodeURIComponent(r.value.model)}`, class: "button", "data-testid": "classify-link" },
            `Classify with ${r.value.model}@${r.value.version} →`,
          ),
        );
        // Models.List now has the new model; refresh the cache for the other pages.
        ctx.models.list(true).catch(() => {});
      },
      onCancelled: (reason) =>
        setChildren(result, endedText("Stopped", reason), curves.last.epoch !== undefined ? ` in epoch ${curves.last.epoch}` : ""),
    });
  });

  const el = h(
    "section",
    { class: "page", id: "page-train" },
    h("h2", null, "Train"),
    h("h3", null, "Datasets"),
    h("p", { class: "hint" }, "Labelled images for training, uploaded as one archive."),
    dsForm,
    dsError.el,
    dsInfo,
    h("div", { class: "scroll" }, dsTable),
    h("h3", null, "Training"),
    form,
    error.el,
    bar.el,
    status,
    h("div", { class: "charts" }, lossChart.el, accChart.el),
    result,
  );

  return {
    id: "train",
    title: "Train",
    el,
    show() {
      refreshDatasets();
    },
  };
}
