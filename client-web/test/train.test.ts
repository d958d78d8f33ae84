import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { Architecture, LearningRateSchedule, Optimizer, TrainInputSchema } from "../src/gen/deephardway/v1/inputs_pb.js";
import {
  DEFAULT_FORM,
  PRESETS,
  datasetNameFromFile,
  formatBytes,
  classList,
  datasetSummary,
  parseHiddenSizes,
  presetDataset,
  trainInput,
  trainSummary,
} from "../src/lib/train.js";

describe("train form", () => {
  it("maps the defaults to the seed cats network", () => {
    const input = trainInput({ ...DEFAULT_FORM, dataset: "catvnoncat" });
    expect(input).toEqual({
      dataset: "catvnoncat",
      architecture: Architecture.MLP,
      hiddenSizes: [20, 7, 5],
      inputSize: 64,
      epochs: 2500,
      batchSize: 0,
      optimizer: Optimizer.SGD,
      learningRate: 0.0075,
      learningRateSchedule: LearningRateSchedule.CONSTANT,
      validationSplit: 0,
      seed: 1n,
      augmentShift: 0,
      outputModel: "",
    });
    // It is a valid TrainInput init.
    expect(create(TrainInputSchema, input).hiddenSizes).toEqual([20, 7, 5]);
  });

  it("maps the digits preset, dropping hidden sizes for a cnn", () => {
    const digits = PRESETS.find((p) => p.id === "digits")!;
    const input = trainInput({ ...digits.values, hiddenSizes: "64", dataset: " digits ", outputModel: " my-digits " });
    expect(input.architecture).toBe(Architecture.CNN);
    expect(input.hiddenSizes).toEqual([]);
    expect(input.optimizer).toBe(Optimizer.ADAMW);
    expect(input.learningRate).toBe(0.002);
    expect(input.batchSize).toBe(32);
    expect(input.learningRateSchedule).toBe(LearningRateSchedule.COSINE);
    expect(input.dataset).toBe("digits");
    expect(input.outputModel).toBe("my-digits");
  });

  it("treats empty numbers as the service's defaults and rejects bad ones", () => {
    const input = trainInput({ ...DEFAULT_FORM, epochs: "", learningRate: " ", seed: "" });
    expect(input.epochs).toBe(0);
    expect(input.learningRate).toBe(0);
    // An empty seed is left unset (the service picks one), not sent as 0.
    expect("seed" in input).toBe(false);
    expect(create(TrainInputSchema, input).seed).toBeUndefined();
    expect(trainInput({ ...DEFAULT_FORM, seed: "0" }).seed).toBe(0n);
    expect(() => trainInput({ ...DEFAULT_FORM, seed: "x" })).toThrow(/seed/);
    expect(() => trainInput({ ...DEFAULT_FORM, epochs: "1.5" })).toThrow(/epochs: "1.5"/);
    expect(() => trainInput({ ...DEFAULT_FORM, batchSize: "-1" })).toThrow(/batch size/);
    expect(() => trainInput({ ...DEFAULT_FORM, learningRate: "fast" })).toThrow(/learning rate/);
    // Out of range is clamped to uint32 and left to the service to refuse.
    expect(trainInput({ ...DEFAULT_FORM, epochs: "99999999999" }).epochs).toBe(0xffffffff);
  });

  it("parses hidden sizes", () => {
    expect(parseHiddenSizes("20, 7, 5")).toEqual([20, 7, 5]);
    expect(parseHiddenSizes("20 7x5")).toEqual([20, 7, 5]);
    expect(parseHiddenSizes(" ")).toEqual([]);
    expect(() => parseHiddenSizes("20, 0")).toThrow(/"0"/);
    expect(() => parseHiddenSizes("a")).toThrow(/hidden sizes/);
  });

  it("suggests a preset's dataset", () => {
    const [cats, digits] = PRESETS;
    expect(presetDataset(cats, ["digits", "catvnoncat"], "digits")).toBe("catvnoncat");
    expect(presetDataset(digits, ["catvnoncat", "Digits-8x8"], "catvnoncat")).toBe("Digits-8x8");
    expect(presetDataset(digits, ["other"], "other")).toBe("other");
  });

  it("names datasets after their archives", () => {
    expect(datasetNameFromFile("digits.tar")).toBe("digits");
    expect(datasetNameFromFile("C:\\data\\my cats.tar.gz")).toBe("my_cats");
    expect(datasetNameFromFile("set.v2.zip")).toBe("set.v2");
    expect(datasetNameFromFile("x.TGZ")).toBe("x");
    expect(datasetNameFromFile("__.zip")).toBe("");
  });

  it("formats sizes and results", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(1852928n)).toBe("1.8 MiB");
    expect(formatBytes(20 * 1024)).toBe("20 KiB");
    expect(
      trainSummary({ model: "digits", version: 2, loss: 0.24313, trainAccuracy: 0.9273, validationAccuracy: 0.8586, validationImages: 297, epochMs: 172.88, seed: 1n }),
    ).toBe("digits@2, loss 0.2431, train accuracy 92.7%, validation accuracy 85.9% on 297 images, 173 ms/epoch, seed 1");
    expect(
      trainSummary({ model: "m", version: 1, loss: 1, trainAccuracy: 1, validationAccuracy: 0, validationImages: 0, epochMs: 0, seed: 18446744073709551615n }),
    ).toBe("m@1, loss 1.0000, train accuracy 100.0%, no validation set, seed 18446744073709551615");
  });

  it("summarises datasets", () => {
    const digits = { classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], trainImages: 1500, testImages: 297, archiveBytes: 1852928n };
    expect(datasetSummary(digits)).toBe("10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), 1500 train images, 297 test images, 1.8 MiB");
    expect(classList(digits.classes, 3)).toBe("0, 1, 2, …");
    expect(classList(["cat"], 3)).toBe("cat");
    expect(classList([], 3)).toBe("");
  });
});
