// Describes job events for the event log. Pure.
import type { JobEvent } from "../gen/deephardway/v1/jobs_pb.js";
import { finishReasonName } from "./enums.js";
import { failureText } from "./format.js";

export interface LogLine {
  /** First and last sequence numbers the line covers (outputs are merged). */
  fromSeq: bigint;
  toSeq: bigint;
  kind: string;
  detail: string;
  time?: JobEvent["time"];
}

function describe(ev: JobEvent): string {
  const e = ev.event;
  switch (e.case) {
    case "queued":
      return `position ${e.value.position}, attempt ${e.value.attempt}${e.value.reason ? `, ${e.value.reason}` : ""}`;
    case "started":
      return `worker ${e.value.workerName || e.value.workerId} on ${e.value.device}, attempt ${e.value.attempt}`;
    case "progress": {
      const metrics = Object.entries(e.value.metrics)
        .map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toFixed(3)}`)
        .join(" ");
      return [`${(e.value.fraction * 100).toFixed(1)}%`, e.value.message, metrics].filter(Boolean).join(" · ");
    }
    case "output":
      return e.value.text;
    case "result": {
      const r = e.value.value;
      switch (r.case) {
        case "diagnostic":
          return `diagnostic: ${r.value.steps} steps${r.value.echo ? `, echo "${r.value.echo}"` : ""}`;
        case "generate":
          return `generate: ${r.value.promptTokens} prompt + ${r.value.completionTokens} completion tokens, ${finishReasonName(r.value.finishReason)}`;
        case "embed":
          return `embed: ${r.value.embeddings.length} vectors of ${r.value.embeddings[0]?.values.length ?? 0}`;
        case "classify":
          return `classify: ${r.value.predictions.map((p) => p.label).join(", ")}`;
        case "train":
          return `train: model ${r.value.model} v${r.value.version}, validation accuracy ${(r.value.validationAccuracy * 100).toFixed(1)}%`;
        default:
          return "result";
      }
    }
    case "failed":
      return failureText(e.value);
    case "cancelled":
      return e.value.reason || "cancelled";
    default:
      return "";
  }
}

/** Appends an event to the log, merging consecutive outputs into one line. */
export function appendEvent(lines: LogLine[], ev: JobEvent): LogLine[] {
  const kind = ev.event.case ?? "unknown";
  const last = lines[lines.length - 1];
  if (kind === "output" && last && last.kind === "output" && last.toSeq + 1n === ev.seq) {
    last.toSeq = ev.seq;
    last.detail += describe(ev);
    return lines;
  }
  lines.push({ fromSeq: ev.seq, toSeq: ev.seq, kind, detail: describe(ev), time: ev.time });
  return lines;
}
