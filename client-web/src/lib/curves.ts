// Training curves built from a train job's progress metrics. Pure, no DOM.
//
// Progress events carry "loss", "train_accuracy", "images_per_second", "epoch" and
// "step" (the optimisation step, counted from 1), and "validation_accuracy" at the end
// of each epoch. Points are placed at their step; an event for a step already seen
// replaces that step's values, so a replayed or repeated event adds nothing.
import type { Point } from "./chart.js";

export interface TrainCurves {
  loss: Point[];
  trainAccuracy: Point[];
  validationAccuracy: Point[];
  /** The latest values seen. */
  last: { epoch?: number; step?: number; imagesPerSecond?: number };
}

export function emptyCurves(): TrainCurves {
  return { loss: [], trainAccuracy: [], validationAccuracy: [], last: {} };
}

function finite(v: number | undefined): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

/** Sets the point at x, keeping the points sorted by x. */
export function upsertPoint(points: Point[], x: number, y: number) {
  let i = points.length;
  while (i > 0 && points[i - 1].x > x) i--;
  if (i > 0 && points[i - 1].x === x) points[i - 1].y = y;
  else points.splice(i, 0, { x, y });
}

/**
 * Adds one progress event's metrics; returns true when a curve changed. Without a
 * "step" the point goes after the last one seen.
 */
export function addMetrics(curves: TrainCurves, metrics: { [key: string]: number }): boolean {
  const hasAny = finite(metrics.loss) || finite(metrics.train_accuracy) || finite(metrics.validation_accuracy);
  if (finite(metrics.epoch)) curves.last.epoch = metrics.epoch;
  if (finite(metrics.images_per_second)) curves.last.imagesPerSecond = metrics.images_per_second;
  if (!hasAny) return false;
  const x = finite(metrics.step) ? metrics.step : (curves.last.step ?? 0) + 1;
  curves.last.step = Math.max(curves.last.step ?? 0, x);
  if (finite(metrics.loss)) upsertPoint(curves.loss, x, metrics.loss);
  if (finite(metrics.train_accuracy)) upsertPoint(curves.trainAccuracy, x, metrics.train_accuracy);
  if (finite(metrics.validation_accuracy)) upsertPoint(curves.validationAccuracy, x, metrics.validation_accuracy);
  return true;
}

/** The number of points over all the curves. */
export function pointCount(curves: TrainCurves): number {
  return curves.loss.length + curves.trainAccuracy.length + curves.validationAccuracy.length;
}
