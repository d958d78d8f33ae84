// Classification results and trained models' descriptions. Pure, no DOM.
import { Architecture } from "../gen/deephardway/v1/inputs_pb.js";
import { architectureName } from "./enums.js";

export interface Ranked {
  label: string;
  probability: number;
}

/**
 * The probabilities sorted from the most likely; ties keep the model's label order
 * (`labels`), then the names' order. Non-finite values count as 0.
 */
export function rankProbabilities(probabilities: { [label: string]: number }, labels: string[] = []): Ranked[] {
  const order = new Map(labels.map((l, i) => [l, i]));
  return Object.entries(probabilities)
    .map(([label, p]) => ({ label, probability: Number.isFinite(p) ? p : 0 }))
    .sort(
      (a, b) =>
        b.probability - a.probability ||
        (order.get(a.label) ?? Infinity) - (order.get(b.label) ?? Infinity) ||
        (a.label < b.label ? -1 : a.label > b.label ? 1 : 0),
    );
}

/** The top `n` of a ranking plus, when there are more, their summed rest. */
export function topWithRest(ranked: Ranked[], n: number): { top: Ranked[]; rest: number; restCount: number } {
  const top = ranked.slice(0, n);
  const others = ranked.slice(n);
  return { top, rest: others.reduce((s, r) => s + r.probability, 0), restCount: others.length };
}

/** 0.9876 -> "98.8%", 0.00001 -> "<0.1%". */
export function formatProbability(p: number): string {
  if (!Number.isFinite(p) || p <= 0) return "0%";
  if (p < 0.001) return "<0.1%";
  if (p >= 1) return "100%";
  return `${(p * 100).toFixed(1)}%`;
}

export interface TrainedInfo {
  version: number;
  architecture: Architecture;
  hiddenSizes: number[];
  inputSize: number;
  channels: number;
  labels: string[];
  dataset: string;
  validationAccuracy: number;
}

/** "cnn · 8×8 grayscale · 10 labels · validation accuracy 85.9% · version 1, trained on digits". */
export function describeTrained(t: TrainedInfo): string {
  const name = architectureName(t.architecture);
  const isMlp = t.architecture === Architecture.MLP || t.architecture === Architecture.UNSPECIFIED;
  const arch = isMlp && t.hiddenSizes.length ? `${name} [${t.hiddenSizes.join(", ")}]` : name;
  const colour = t.channels === 1 ? "grayscale" : t.channels === 3 ? "RGB" : `${t.channels} channels`;
  const parts = [
    arch,
    `${t.inputSize}×${t.inputSize} ${colour}`,
    `${t.labels.length} labels`,
    `validation accuracy ${(t.validationAccuracy * 100).toFixed(1)}%`,
    `version ${t.version}${t.dataset ? `, trained on ${t.dataset}` : ""}`,
  ];
  return parts.join(" · ");
}

/** Whether to draw white ink on black (grayscale models such as digits) rather than black on white. */
export function inkOnBlack(t: Pick<TrainedInfo, "channels"> | undefined): boolean {
  return !t || t.channels === 1;
}

/**
 * A brush width for a drawing canvas of `canvasSize` pixels that the model sees at
 * `inputSize`: about 1.2 model pixels wide (digits' strokes are 1 to 2 pixels of 8),
 * at least 1/40 of the canvas.
 */
export function brushWidth(canvasSize: number, inputSize: number): number {
  const perPixel = canvasSize / Math.max(1, inputSize || 28);
  return Math.round(Math.max(canvasSize / 40, Math.min(canvasSize / 6, perPixel * 1.2)));
}

/** "digits@2" -> { name: "digits", version: 2 }; "digits" -> { name: "digits" }. */
export function parseModelRef(ref: string): { name: string; version?: number } {
  const m = /^(.*)@(\d+)$/.exec(ref.trim());
  if (m && m[1]) return { name: m[1], version: Number(m[2]) };
  return { name: ref.trim() };
}

/** Whether a file is an image a classify job takes: PNG or JPEG, by its type or else its name. */
export function isClassifiableImage(file: { name: string; type: string }): boolean {
  return /^image\/(png|jpeg)$/.test(file.type) || /\.(png|jpe?g)$/i.test(file.name);
}
