// Classify: pick a trained model, then drop or pick images (images.ts), or draw one
// (drawing.ts), and see each image's predicted label with per-class probability bars
// (predictions.ts).
import type { AppContext, Page } from "../../page.js";
import { JobKind } from "../../gen/deephardway/v1/jobs_pb.js";
import type { Model } from "../../gen/deephardway/v1/models_pb.js";
import { field, h, messageBox, setChildren } from "../../ui.js";
import { errorText } from "../../lib/format.js";
import { durationSuffix } from "../../lib/jobstatus.js";
import { describeTrained, parseModelRef } from "../../lib/classify.js";
import { jobControls } from "../../jobControls.js";
import { fillModelSelect } from "../../models.js";
import { imagePicker, type ImageItem } from "./images.js";
import { drawingPad } from "./drawing.js";
import { predictionCard } from "./predictions.js";

/** Prediction cards kept on the page. */
const MAX_RESULTS = 48;

export function classifyPage(ctx: AppContext): Page {
  const model = h("select", { name: "model" });
  const info = h("div", { class: "hint model-info", "data-testid": "model-info" });
  const clear = h("button", { type: "button", "data-testid": "clear" }, "Clear");
  const classifyDrawing = h("button", { type: "button", class: "primary", "data-testid": "classify-drawing" }, "Classify drawing");
  const clearResults = h("button", { type: "button", class: "small", "data-testid": "clear-results" }, "Clear results");
  const status = h("div", { class: "status", "data-testid": "status" });
  const results = h("div", { class: "predictions", "data-testid": "results" });
  const error = messageBox();

  let models: Model[] = [];
  let wanted = "";
  const current = () => models.find((m) => m.name === model.value);

  // --- model info ---
  function showInfo() {
    const m = current();
    if (!m) {
      info.textContent = models.length ? "" : "No classifier yet: train one on the Train page.";
      return;
    }
    const t = m.trained;
    if (!t) {
      info.textContent = m.description;
      return;
    }
    setChildren(
      info,
      h("div", null, describeTrained(t)),
      h("div", null, "Labels: ", h("span", { class: "mono" }, t.labels.join(", "))),
      m.workers === 0 ? h("div", null, "No worker can run it right now.") : null,
    );
  }

  // --- inputs: picked or dropped images, and the drawing ---
  const picker = imagePicker({ classify, onError: (text) => error.show(text) });
  const pad = drawingPad();
  const resetCanvas = () => pad.reset(current()?.trained);
  model.addEventListener("change", () => {
    showInfo();
    resetCanvas();
  });
  clear.addEventListener("click", resetCanvas);
  clearResults.addEventListener("click", () => setChildren(results));
  resetCanvas();
  classifyDrawing.addEventListener("click", async () => {
    const item = await pad.image();
    if (!item) {
      error.show("Could not read the drawing as PNG.");
      return;
    }
    classify([item]);
  });

  // --- the job ---
  const job = jobControls(ctx, { status, error });

  function classify(items: ImageItem[]) {
    job.abort();
    error.clear();
    const name = model.value;
    if (!name) {
      error.show("No classifier to use: train one on the Train page first.");
      return;
    }
    const labels = current()?.trained?.labels ?? [];
    job.start({
      spec: () => ({ input: { case: "classify", value: { images: items.map((i) => i.bytes) } }, model: name }),
      onResult: (r, final, t) => {
        if (r.case !== "classify") return;
        const n = r.value.predictions.length;
        status.textContent = `Job ${final.jobId}: ${n} image${n === 1 ? "" : "s"} classified with ${name}${durationSuffix(t.startedMs, t.endMs)}`;
        // The newest run first; earlier ones stay below it.
        results.prepend(...r.value.predictions.map((p, i) => predictionCard(p, items[i], i, labels)));
        while (results.children.length > MAX_RESULTS) results.lastElementChild?.remove();
      },
    });
  }

  const el = h(
    "section",
    { class: "page", id: "page-classify" },
    h("h2", null, "Classify"),
    h("div", { class: "form" }, h("div", { class: "row" }, field("Model", model)), info),
    h(
      "div",
      { class: "classify-inputs" },
      h("div", { class: "form" }, h("h3", null, "Images"), picker.drop, h("div", { class: "actions" }, picker.run)),
      h("div", { class: "form" }, h("h3", null, "Draw"), pad.canvas, h("div", { class: "actions" }, clear, classifyDrawing)),
    ),
    error.el,
    h("div", { class: "status-row" }, status, clearResults),
    results,
  );

  return {
    id: "classify",
    title: "Classify",
    el,
    show(args) {
      if (args[0]) wanted = parseModelRef(decodeURIComponent(args[0])).name;
      ctx.models
        .ofKind(JobKind.CLASSIFY, true)
        .then((list) => {
          const before = model.value;
          models = list;
          fillModelSelect(model, list);
          if (wanted && list.some((m) => m.name === wanted)) {
            model.value = wanted;
            wanted = "";
          }
          showInfo();
          if (model.value !== before) resetCanvas();
        })
        .catch((err) => error.show(`ListModels: ${errorText(err)}`));
    },
  };
}
