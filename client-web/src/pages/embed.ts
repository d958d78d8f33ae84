// Embed: sentences in, cosine similarity matrix out as a heat map.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, setChildren } from "../ui.js";
import { errorText } from "../lib/format.js";
import { jobControls } from "../jobControls.js";
import { durationSuffix } from "../lib/jobstatus.js";
import { JobKind } from "../gen/deephardway/v1/jobs_pb.js";
import { fillModelSelect } from "../models.js";
import { heatColor, heatTextColor, parseSentences, similarityMatrix } from "../lib/similarity.js";

const EXAMPLE = [
  "The cat sits on the mat.",
  "A kitten is resting on a rug.",
  "Stock markets fell sharply today.",
  "Shares dropped at the close of trading.",
  "I love pizza.",
].join("\n");

function short(s: string, n = 28): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

export function heatMap(sentences: string[], matrix: number[][]): HTMLTableElement {
  const head = h(
    "tr",
    null,
    h("th", null, ""),
    sentences.map((s, j) => h("th", { title: s, class: "col" }, `${j + 1}`)),
  );
  const rows = sentences.map((s, i) =>
    h(
      "tr",
      null,
      h("th", { title: s, class: "rowhead" }, `${i + 1}. ${short(s)}`),
      matrix[i].map((v) =>
        h(
          "td",
          { style: { background: heatColor(v), color: heatTextColor(v) }, title: `${v.toFixed(4)}` },
          v.toFixed(2),
        ),
      ),
    ),
  );
  return h("table", { class: "heatmap", "data-testid": "heatmap" }, h("thead", null, head), h("tbody", null, rows));
}

export function embedPage(ctx: AppContext): Page {
  const model = h("select", { name: "model" });
  const texts = h("textarea", { name: "texts", rows: 7 }, EXAMPLE);
  const run = h("button", { type: "submit", class: "primary", "data-testid": "run" }, "Embed");
  const status = h("div", { class: "status", "data-testid": "status" });
  const result = h("div", { class: "result", "data-testid": "result" });
  const error = messageBox();

  const form = h(
    "form",
    { class: "form", novalidate: true },
    h("div", { class: "row" }, field("Model", model)),
    field("Sentences, one per line", texts),
    h("div", { class: "actions" }, run),
  );

  const job = jobControls(ctx, { status, error, run });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setChildren(result);
    const sentences = parseSentences(texts.value);
    job.start({
      spec: () => ({ input: { case: "embed", value: { texts: sentences } }, model: model.value }),
      onResult: (r, final, t) => {
        if (r.case !== "embed") return;
        const vectors = r.value.embeddings.map((e) => e.values);
        const dim = vectors[0]?.length ?? 0;
        status.textContent = `Job ${final.jobId}: ${vectors.length} vectors of ${dim} dimensions${durationSuffix(t.startedMs, t.endMs)}`;
        setChildren(result, heatMap(sentences, similarityMatrix(vectors)));
      },
    });
  });

  const el = h(
    "section",
    { class: "page", id: "page-embed" },
    h("h2", null, "Embed"),
    h("p", { class: "hint" }, "Cosine similarity of the sentences' embeddings (the vectors are L2-normalised, so these are dot products)."),
    form,
    error.el,
    status,
    result,
  );
  return {
    id: "embed",
    title: "Embed",
    el,
    show() {
      ctx.models
        .ofKind(JobKind.EMBED, true)
        .then((models) => fillModelSelect(model, models))
        .catch((err) => error.show(`ListModels: ${errorText(err)}`));
    },
  };
}
