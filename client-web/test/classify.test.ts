import { describe, expect, it } from "vitest";
import { Architecture } from "../src/gen/deephardway/v1/inputs_pb.js";
import {
  brushWidth,
  describeTrained,
  formatProbability,
  inkOnBlack,
  isClassifiableImage,
  parseModelRef,
  rankProbabilities,
  topWithRest,
} from "../src/lib/classify.js";

describe("classify", () => {
  it("sorts probabilities from the most likely, ties in label order", () => {
    const ranked = rankProbabilities({ cat: 0.2, "non-cat": 0.8 });
    expect(ranked).toEqual([
      { label: "non-cat", probability: 0.8 },
      { label: "cat", probability: 0.2 },
    ]);
    const tied = rankProbabilities({ b: 0.25, a: 0.25, c: 0.5, d: NaN }, ["c", "b", "a"]);
    expect(tied.map((r) => r.label)).toEqual(["c", "b", "a", "d"]);
    expect(tied[3].probability).toBe(0);
    expect(rankProbabilities({ z: 0.5, y: 0.5 }).map((r) => r.label)).toEqual(["y", "z"]);
    expect(rankProbabilities({})).toEqual([]);
  });

  it("keeps the top n and sums the rest", () => {
    const ranked = rankProbabilities({ a: 0.5, b: 0.3, c: 0.15, d: 0.05 });
    const { top, rest, restCount } = topWithRest(ranked, 2);
    expect(top.map((r) => r.label)).toEqual(["a", "b"]);
    expect(rest).toBeCloseTo(0.2);
    expect(restCount).toBe(2);
    expect(topWithRest(ranked, 10).restCount).toBe(0);
  });

  it("formats probabilities", () => {
    expect(formatProbability(0.9876)).toBe("98.8%");
    expect(formatProbability(0.00001)).toBe("<0.1%");
    expect(formatProbability(0)).toBe("0%");
    expect(formatProbability(1)).toBe("100%");
    expect(formatProbability(NaN)).toBe("0%");
  });

  it("describes trained models", () => {
    const digits = {
      version: 1,
      architecture: Architecture.CNN,
      hiddenSizes: [],
      inputSize: 8,
      channels: 1,
      labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
      dataset: "digits",
      validationAccuracy: 0.8586,
    };
    expect(describeTrained(digits)).toBe("cnn · 8×8 grayscale · 10 labels · validation accuracy 85.9% · version 1, trained on digits");
    expect(describeTrained({ ...digits, architecture: Architecture.MLP, hiddenSizes: [20, 7, 5], inputSize: 64, channels: 3, labels: ["cat", "non-cat"], version: 3, dataset: "" })).toBe(
      "mlp [20, 7, 5] · 64×64 RGB · 2 labels · validation accuracy 85.9% · version 3",
    );
    // Unset is an MLP.
    expect(describeTrained({ ...digits, architecture: Architecture.UNSPECIFIED, hiddenSizes: [8] })).toMatch(/^mlp \[8\] · /);
    expect(inkOnBlack(digits)).toBe(true);
    expect(inkOnBlack({ channels: 3 })).toBe(false);
    expect(inkOnBlack(undefined)).toBe(true);
  });

  it("sizes the brush to the model's pixels", () => {
    expect(brushWidth(224, 8)).toBe(34);
    expect(brushWidth(224, 64)).toBe(6);
    expect(brushWidth(224, 1)).toBe(37);
    expect(brushWidth(224, 0)).toBe(10);
  });

  it("takes PNG and JPEG images, by type or name", () => {
    expect(isClassifiableImage({ name: "a.png", type: "image/png" })).toBe(true);
    expect(isClassifiableImage({ name: "scan", type: "image/jpeg" })).toBe(true);
    expect(isClassifiableImage({ name: "photo.JPG", type: "" })).toBe(true);
    expect(isClassifiableImage({ name: "b.gif", type: "image/gif" })).toBe(false);
    expect(isClassifiableImage({ name: "notes.txt", type: "text/plain" })).toBe(false);
  });

  it("parses model references", () => {
    expect(parseModelRef("digits@2")).toEqual({ name: "digits", version: 2 });
    expect(parseModelRef(" digits ")).toEqual({ name: "digits" });
    expect(parseModelRef("a@b")).toEqual({ name: "a@b" });
  });
});
