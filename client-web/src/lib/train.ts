// The train form: its values, presets, and their mapping to a TrainInput. Pure, no DOM.
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Architecture,
  LearningRateSchedule,
  Optimizer,
  type TrainInputSchema,
  type TrainResult,
} from "../gen/deephardway/v1/inputs_pb.js";
import type { Dataset } from "../gen/deephardway/v1/datasets_pb.js";
import { parseSeed } from "./params.js";

/** The form's fields: numbers as typed (text, so that the service validates ranges), choices as the API's enums. */
export interface TrainForm {
  dataset: string;
  architecture: Architecture;
  hiddenSizes: string;
  inputSize: string;
  epochs: string;
  batchSize: string;
  optimizer: Optimizer;
  learningRate: string;
  learningRateSchedule: LearningRateSchedule;
  validationSplit: string;
  /** Empty: the service picks one (the result says which). */
  seed: string;
  augmentShift: string;
  outputModel: string;
}

/** The defaults: the original project's cats network (12288→20→7→5→1, gradient descent at 0.0075). */
export const DEFAULT_FORM: TrainForm = {
  dataset: "",
  architecture: Architecture.MLP,
  hiddenSizes: "20, 7, 5",
  inputSize: "64",
  epochs: "2500",
  batchSize: "0",
  optimizer: Optimizer.SGD,
  learningRate: "0.0075",
  learningRateSchedule: LearningRateSchedule.CONSTANT,
  validationSplit: "0",
  seed: "1",
  augmentShift: "0",
  outputModel: "",
};

export interface Preset {
  id: string;
  title: string;
  /** Picks the first dataset whose name contains this, when there is one. */
  datasetHint: string;
  values: Omit<TrainForm, "dataset" | "outputModel">;
}

export const PRESETS: Preset[] = [
  {
    id: "cats",
    title: "cats: seed network",
    datasetHint: "cat",
    values: { ...DEFAULT_FORM },
  },
  {
    id: "digits",
    title: "digits: cnn",
    datasetHint: "digit",
    values: {
      architecture: Architecture.CNN,
      hiddenSizes: "",
      inputSize: "0",
      epochs: "20",
      batchSize: "32",
      optimizer: Optimizer.ADAMW,
      learningRate: "0.002",
      learningRateSchedule: LearningRateSchedule.COSINE,
      validationSplit: "0",
      seed: "1",
      augmentShift: "1",
    },
  },
];

/** The dataset a preset suggests among `names`: the first containing its hint, else `current`. */
export function presetDataset(preset: Preset, names: string[], current: string): string {
  return names.find((n) => n.toLowerCase().includes(preset.datasetHint)) ?? current;
}

function whole(label: string, text: string, max = 0xffffffff): number {
  const t = text.trim();
  if (t === "") return 0;
  const n = Number(t);
  if (!Number.isFinite(n) || !Number.isInteger(n) || n < 0) throw new Error(`${label}: "${t}" is not a whole number`);
  // Values above the range are sent clamped, so the service's message explains the limit.
  return Math.min(max, n);
}

function decimal(label: string, text: string): number {
  const t = text.trim();
  if (t === "") return 0;
  const n = Number(t);
  if (!Number.isFinite(n)) throw new Error(`${label}: "${t}" is not a number`);
  return n;
}

/** "20, 7, 5" (or spaces, or "20x7x5") -> [20, 7, 5]; empty -> []. */
export function parseHiddenSizes(text: string): number[] {
  return text
    .split(/[\s,;x×]+/)
    .filter(Boolean)
    .map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n <= 0) throw new Error(`hidden sizes: "${s}" is not a positive whole number`);
      return Math.min(0xffffffff, n);
    });
}

/** The TrainInput of the form's values; throws an Error naming the first bad field. */
export function trainInput(form: TrainForm): MessageInitShape<typeof TrainInputSchema> {
  const seed = parseSeed(form.seed);
  return {
    dataset: form.dataset.trim(),
    architecture: form.architecture,
    // Hidden sizes only shape an mlp; a cnn's hidden layer is fixed.
    hiddenSizes: form.architecture === Architecture.CNN ? [] : parseHiddenSizes(form.hiddenSizes),
    inputSize: whole("input size", form.inputSize),
    epochs: whole("epochs", form.epochs),
    batchSize: whole("batch size", form.batchSize),
    optimizer: form.optimizer,
    learningRate: decimal("learning rate", form.learningRate),
    learningRateSchedule: form.learningRateSchedule,
    validationSplit: decimal("validation split", form.validationSplit),
    // Unset (not 0) when the field is empty: the service picks a seed.
    ...(seed === undefined ? {} : { seed }),
    augmentShift: whole("augment shift", form.augmentShift),
    outputModel: form.outputModel.trim(),
  };
}

/** A dataset name from an archive's file name: "my digits.tar.gz" -> "my_digits". */
export function datasetNameFromFile(fileName: string): string {
  const base = fileName.split(/[\\/]/).pop() ?? "";
  const stem = base.replace(/\.(tar\.gz|tgz|tar|zip|gz)$/i, "");
  return stem
    .replace(/[^A-Za-z0-9._-]+/g, "_")
    .replace(/^[._-]+|[._-]+$/g, "")
    .slice(0, 128);
}

/** The first `max` class names, comma-separated, with ", …" when there are more. */
export function classList(classes: string[], max: number): string {
  return classes.length <= max ? classes.join(", ") : `${classes.slice(0, max).join(", ")}, …`;
}

/** "10 classes (0, 1, …), 1500 train images, 297 test images, 1.8 MiB". */
export function datasetSummary(d: Pick<Dataset, "classes" | "trainImages" | "testImages" | "archiveBytes">): string {
  return `${d.classes.length} classes (${classList(d.classes, 12)}), ${d.trainImages} train images, ${d.testImages} test images, ${formatBytes(d.archiveBytes)}`;
}

/** 1852928 -> "1.8 MiB". */
export function formatBytes(n: number | bigint): string {
  const v = Number(n);
  if (!Number.isFinite(v) || v < 0) return "";
  if (v < 1024) return `${v} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let x = v / 1024;
  let i = 0;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${x < 10 ? x.toFixed(1) : Math.round(x)} ${units[i]}`;
}

/** A train result's one-line summary. */
export function trainSummary(
  r: Pick<TrainResult, "model" | "version" | "loss" | "trainAccuracy" | "validationAccuracy" | "validationImages" | "epochMs" | "seed">,
): string {
  const pct = (f: number) => `${(f * 100).toFixed(1)}%`;
  const parts = [`${r.model}@${r.version}`, `loss ${r.loss.toFixed(4)}`, `train accuracy ${pct(r.trainAccuracy)}`];
  parts.push(r.validationImages > 0 ? `validation accuracy ${pct(r.validationAccuracy)} on ${r.validationImages} images` : "no validation set");
  if (r.epochMs > 0) parts.push(`${r.epochMs < 10 ? r.epochMs.toFixed(2) : r.epochMs.toFixed(0)} ms/epoch`);
  parts.push(`seed ${r.seed}`);
  return parts.join(", ");
}
