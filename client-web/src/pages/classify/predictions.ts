// The Classify page's results: one card per image with its thumbnail, the predicted
// label and per-class probability bars (the top ten, then the rest summed).
import type { Prediction } from "../../gen/deephardway/v1/inputs_pb.js";
import { h } from "../../ui.js";
import { formatProbability, rankProbabilities, topWithRest } from "../../lib/classify.js";
import type { ImageItem } from "./images.js";

const MAX_BARS = 10;

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

/** The card of the `index`-th image's prediction; `labels` order ties. */
export function predictionCard(pred: Prediction, item: ImageItem | undefined, index: number, labels: string[]): HTMLElement {
  return h(
    "div",
    { class: "prediction", "data-testid": "prediction", "data-label": pred.label, "data-source": item?.name ?? "" },
    h("img", { src: item?.src ?? "", alt: item?.name ?? "", class: "thumb" }),
    h(
      "div",
      { class: "prediction-body" },
      h("div", { class: "prediction-name", title: item?.name }, item?.name ?? `image ${index + 1}`),
      h("div", { class: "prediction-label", "data-testid": "label" }, pred.label),
      probabilityBars(pred, labels),
    ),
  );
}
