// Embed: sentences in, cosine similarity matrix out as a heat map.
import type { AppContext, Page } from "../page.js";
import { field, h, messageBox, setChildren } from "../ui.js";
import { errorText, formatDuration, rpcCodeName, tsMs } from "../lib/format.js";
import { requestId, submitAndFollow } from "../jobrun.js";
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
  let controller: AbortController | undefined;

  const form = h(
    "form",
    { class: "form", novalidate: true },
    h("div", { class: "row" }, field("Model", model)),
    field("Sentences, one per line", texts),
    h("div", { class: "actions" }, run),
  );

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    controller?.abort();
    const ctl = new AbortController();
    controller = ctl;
    error.clear();
    setChildren(result);
    const sentences = parseSentences(texts.value);
    status.textContent = "Submitting…";
    run.disabled = true;
    let started: number | undefined;
    try {
      const final = await submitAndFollow(
        ctx.api,
        { input: { case: "embed", value: { texts: sentences } }, model: model.value, requestId: requestId() },
        {
          signal: ctl.signal,
          banner: ctx.banner,
          onSubmitted: (job) => (status.textContent = `Job ${job.id} queued`),
          onEvent: (ev) => {
            if (ev.event.case === "started") {
              started = tsMs(ev.time);
              status.textContent = `Job ${ev.jobId} running on ${ev.event.value.device}`;
            }
          },
        },
      );
      switch (final.event.case) {
        case "result": {
          const r = final.event.value.value;
          if (r.case !== "embed") break;
          const vectors = r.value.embeddings.map((e) => e.values);
          const dim = vectors[0]?.length ?? 0;
          const end = tsMs(final.time);
          status.textContent = `Job ${final.jobId}: ${vectors.length} vectors of ${dim} dimensions${
            started !== undefined && end !== undefined ? ` in ${formatDuration(end - started)}` : ""
          }`;
          setChildren(result, heatMap(sentences, similarityMatrix(vectors)));
          break;
        }
        case "failed":
          status.textContent = `Job ${final.jobId} failed`;
          error.show(`${rpcCodeName(final.event.value.code)}: ${final.event.value.message}`);
          break;
        case "cancelled":
          status.textContent = `Job ${final.jobId} cancelled`;
          break;
      }
    } catch (err) {
      if (!ctl.signal.aborted) {
        status.textContent = "";
        error.show(errorText(err));
      }
    } finally {
      if (controller === ctl) run.disabled = false;
    }
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
        .catch((err) => error.show(`Models.List: ${errorText(err)}`));
    },
  };
}
