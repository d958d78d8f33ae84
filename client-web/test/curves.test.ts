import { describe, expect, it } from "vitest";
import { addMetrics, emptyCurves, pointCount, upsertPoint } from "../src/lib/curves.js";

describe("training curves", () => {
  it("builds loss and accuracy series from progress metrics", () => {
    const c = emptyCurves();
    expect(addMetrics(c, {})).toBe(false); // "reading the dataset"
    addMetrics(c, { loss: 2.35, train_accuracy: 0.06, step: 1, images_per_second: 5885, epoch: 1 });
    addMetrics(c, { loss: 1.82, train_accuracy: 0.48, validation_accuracy: 0.75, step: 47, epoch: 1 });
    addMetrics(c, { loss: 0.57, train_accuracy: 0.87, validation_accuracy: 0.82, step: 94, epoch: 2, images_per_second: 9425 });
    expect(c.loss).toEqual([
      { x: 1, y: 2.35 },
      { x: 47, y: 1.82 },
      { x: 94, y: 0.57 },
    ]);
    expect(c.trainAccuracy.map((p) => p.y)).toEqual([0.06, 0.48, 0.87]);
    expect(c.validationAccuracy).toEqual([
      { x: 47, y: 0.75 },
      { x: 94, y: 0.82 },
    ]);
    expect(c.last).toEqual({ epoch: 2, step: 94, imagesPerSecond: 9425 });
    expect(pointCount(c)).toBe(8);
  });

  it("replaces a step seen again and keeps points sorted", () => {
    const c = emptyCurves();
    addMetrics(c, { loss: 1, step: 10 });
    addMetrics(c, { loss: 0.9, step: 10, validation_accuracy: 0.5 });
    addMetrics(c, { loss: 2, step: 5 });
    expect(c.loss).toEqual([
      { x: 5, y: 2 },
      { x: 10, y: 0.9 },
    ]);
    expect(c.last.step).toBe(10);
  });

  it("places points without a step after the last one", () => {
    const c = emptyCurves();
    addMetrics(c, { loss: 1 });
    addMetrics(c, { loss: 0.5, train_accuracy: 0.7 });
    expect(c.loss.map((p) => p.x)).toEqual([1, 2]);
    expect(c.trainAccuracy).toEqual([{ x: 2, y: 0.7 }]);
  });

  it("ignores non-finite values", () => {
    const c = emptyCurves();
    expect(addMetrics(c, { loss: NaN, step: 3 })).toBe(false);
    expect(pointCount(c)).toBe(0);
    const pts = [{ x: 1, y: 1 }];
    upsertPoint(pts, 0, 3);
    expect(pts).toEqual([
      { x: 0, y: 3 },
      { x: 1, y: 1 },
    ]);
  });
});
