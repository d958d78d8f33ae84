// Classify: pick a trained model, then drop or pick images, or draw one, and see each
// image's predicted label with per-class probability bars.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, setChildren } from "../ui.js";
import { errorText } from "../lib/format.js";
import { jobControls } from "../jobControls.js";
import { durationSuffix } from "../lib/jobstatus.js";
import { JobKind, type Prediction } from "../gen/deephardway/v1/jobs_pb.js";
import type { ModelInfo } from "../gen/deephardway/v1/models_pb.js";
import { fillModelSelect } from "../models.js";
import {
  brushWidth,
  describeTrained,
  formatProbability,
  inkOnBlack,
  parseModelRef,
  rankProbabilities,
  topWithRest,
} from "../lib/classify.js";

const CANVAS_SIZE = 224;
const MAX_BARS = 10;
/** Prediction cards kept on the page. */
const MAX_RESULTS = 48;

interface Item {
  /** Shown under the thumbnail. */
  name: string;
  /** A URL for the thumbnail (object URL or data URL). */
  src: string;
  bytes: Uint8Array;
}

function probabilityBars(pred: Prediction, labels: string[]): HTMLElement {
  const { top, rest, restCount } = topWithRest(rankProbabilities(pred.probabilities, labels), MAX_BARS);
  const row = (label: string, p: number, cls = "") =>
    h(
      "div",
      { class: `prob ${cls}`, "data-label": label },
      h("span", { class: "prob-label", title: label }, label),
      h("span", { class: "prob-bar" }, h("span", { class: "prob-fill", style: { width: `${(Math.min(1, Math.max(0, p)) * 100).toFixed(1)}%` } })),
      h("span", { class: "prob-value" }, formatProbability(p)),
    );
  return h(
    "div",
    { class: "probs", "data-testid": "probabilities" },
    top.map((r) => row(r.label, r.probability, r.label === pred.label ? "top" : "")),
    restCount > 0 ? row(`${restCount} others`, rest, "rest") : null,
  );
}

export function classifyPage(ctx: AppContext): Page {
  const model = h("select", { name: "model" });
  const info = h("div", { class: "hint model-info", "data-testid": "model-info" });
  const files = h("input", { type: "file", name: "images", multiple: true, accept: "image/png,image/jpeg" });
  const drop = h(
    "div",
    { class: "dropzone", "data-testid": "dropzone" },
    h("span", null, "Drop PNG or JPEG images here, or "),
    files,
  );
  const run = h("button", { type: "button", class: "primary", disabled: true, "data-testid": "run" }, "Classify images");
  const canvas = h("canvas", { width: CANVAS_SIZE, height: CANVAS_SIZE, class: "drawing", "data-testid": "canvas" });
  const clear = h("button", { type: "button", "data-testid": "clear" }, "Clear");
  const classifyDrawing = h("button", { type: "button", class: "primary", "data-testid": "classify-drawing" }, "Classify drawing");
  const clearResults = h("button", { type: "button", class: "small", "data-testid": "clear-results" }, "Clear results");
  const status = h("div", { class: "status", "data-testid": "status" });
  const results = h("div", { class: "predictions", "data-testid": "results" });
  const error = messageBox();

  let models: ModelInfo[] = [];
  let wanted = "";
  let picked: Item[] = [];

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
  model.addEventListener("change", () => {
    showInfo();
    resetCanvas();
  });

  // --- drawing ---
  const g = canvas.getContext("2d")!;
  let drawing = false;
  let last: [number, number] | undefined;
  let ink = "#fff";

  function resetCanvas() {
    const black = inkOnBlack(current()?.trained);
    ink = black ? "#fff" : "#000";
    g.fillStyle = black ? "#000" : "#fff";
    g.fillRect(0, 0, CANVAS_SIZE, CANVAS_SIZE);
    g.lineCap = "round";
    g.lineJoin = "round";
    g.lineWidth = brushWidth(CANVAS_SIZE, current()?.trained?.inputSize ?? 28);
  }
  function pos(e: PointerEvent): [number, number] {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * CANVAS_SIZE) / r.width, ((e.clientY - r.top) * CANVAS_SIZE) / r.height];
  }
  function lineTo(p: [number, number]) {
    const from = last ?? p;
    g.strokeStyle = ink;
    g.beginPath();
    g.moveTo(from[0], from[1]);
    g.lineTo(p[0] + (from === p ? 0.01 : 0), p[1]);
    g.stroke();
    last = p;
  }
  canvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    last = undefined;
    canvas.setPointerCapture(e.pointerId);
    lineTo(pos(e));
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (drawing) lineTo(pos(e));
  });
  const end = () => {
    drawing = false;
    last = undefined;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  clear.addEventListener("click", resetCanvas);
  clearResults.addEventListener("click", () => setChildren(results));
  resetCanvas();

  classifyDrawing.addEventListener("click", async () => {
    const blob = await new Promise<Blob | null>((res) => canvas.toBlob(res, "image/png"));
    if (!blob) {
      error.show("Could not read the drawing as PNG.");
      return;
    }
    classify([{ name: "drawing", src: canvas.toDataURL("image/png"), bytes: new Uint8Array(await blob.arrayBuffer()) }]);
  });

  // --- picked or dropped images ---
  async function pick(list: FileList | File[]) {
    const images = [...list].filter((f) => /^image\/(png|jpeg)$/.test(f.type) || /\.(png|jpe?g)$/i.test(f.name));
    if (images.length === 0) {
      error.show("Pick PNG or JPEG images.");
      return;
    }
    for (const it of picked) URL.revokeObjectURL(it.src);
    picked = await Promise.all(
      images.map(async (f) => ({ name: f.name, src: URL.createObjectURL(f), bytes: new Uint8Array(await f.arrayBuffer()) })),
    );
    run.disabled = false;
    classify(picked);
  }
  files.addEventListener("change", () => {
    if (files.files?.length) pick(files.files);
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer?.files.length) pick(e.dataTransfer.files);
  });
  run.addEventListener("click", () => {
    if (picked.length) classify(picked);
  });

  // --- the job ---
  const job = jobControls(ctx, { status, error });

  function classify(items: Item[]) {
    job.abort();
    error.clear();
    const name = model.value;
    if (!name) {
      error.show("No classifier to use: train one on the Train page first.");
      return;
    }
    const labels = current()?.trained?.labels ?? [];
    job.start({
      request: () => ({ input: { case: "classify", value: { images: items.map((i) => i.bytes) } }, model: name }),
      onResult: (r, final, t) => {
        if (r.case !== "classify") return;
        const n = r.value.predictions.length;
        status.textContent = `Job ${final.jobId}: ${n} image${n === 1 ? "" : "s"} classified with ${name}${durationSuffix(t.startedMs, t.endMs)}`;
        // The newest run first; earlier ones stay below it.
        results.prepend(
          ...r.value.predictions.map((p, i) =>
            h(
              "div",
              { class: "prediction", "data-testid": "prediction", "data-label": p.label, "data-source": items[i]?.name ?? "" },
              h("img", { src: items[i]?.src ?? "", alt: items[i]?.name ?? "", class: "thumb" }),
              h(
                "div",
                { class: "prediction-body" },
                h("div", { class: "prediction-name", title: items[i]?.name }, items[i]?.name ?? `image ${i + 1}`),
                h("div", { class: "prediction-label", "data-testid": "label" }, p.label),
                probabilityBars(p, labels),
              ),
            ),
          ),
        );
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
      h("div", { class: "form" }, h("h3", null, "Images"), drop, h("div", { class: "actions" }, run)),
      h(
        "div",
        { class: "form" },
        h("h3", null, "Draw"),
        canvas,
        h("div", { class: "actions" }, clear, classifyDrawing),
      ),
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
        .catch((err) => error.show(`Models.List: ${errorText(err)}`));
    },
  };
}
