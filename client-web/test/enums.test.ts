import { describe, expect, it } from "vitest";
import { Architecture, ChatMessage_Role, FinishReason, LearningRateSchedule, Optimizer } from "../src/gen/deephardway/v1/inputs_pb.js";
import { JobState } from "../src/gen/deephardway/v1/jobs_pb.js";
import {
  ARCHITECTURE_OPTIONS,
  OPTIMIZER_OPTIONS,
  SCHEDULE_OPTIONS,
  architectureName,
  enumFromToken,
  enumToken,
  finishReasonName,
  optimizerName,
  roleName,
  scheduleName,
} from "../src/lib/enums.js";

describe("enums", () => {
  it("maps values to form tokens and back", () => {
    expect(enumToken(Architecture, Architecture.CNN)).toBe("cnn");
    expect(enumToken(Optimizer, Optimizer.ADAMW)).toBe("adamw");
    expect(enumToken(LearningRateSchedule, LearningRateSchedule.COSINE)).toBe("cosine");
    expect(enumToken(JobState, JobState.RUNNING)).toBe("running");
    expect(enumToken(Architecture, 42)).toBe("");
    expect(enumFromToken(Architecture, "cnn")).toBe(Architecture.CNN);
    expect(enumFromToken(Optimizer, " AdamW ")).toBe(Optimizer.ADAMW);
    expect(enumFromToken(Architecture, "rnn")).toBeUndefined();
    expect(enumFromToken(Architecture, "")).toBeUndefined();
    // The reverse mapping's numeric keys are not tokens.
    expect(enumFromToken(Architecture, "2")).toBeUndefined();
    for (const [v] of [...ARCHITECTURE_OPTIONS, ...OPTIMIZER_OPTIONS, ...SCHEDULE_OPTIONS]) {
      expect(v).not.toBe(0);
    }
    for (const [v] of ARCHITECTURE_OPTIONS) expect(enumFromToken(Architecture, enumToken(Architecture, v))).toBe(v);
  });

  it("labels values readably, unset as the service reads it", () => {
    expect(architectureName(Architecture.MLP)).toBe("mlp");
    expect(architectureName(Architecture.CNN)).toBe("cnn");
    expect(architectureName(Architecture.UNSPECIFIED)).toBe("mlp");
    expect(optimizerName(Optimizer.ADAMW)).toBe("AdamW");
    expect(optimizerName(Optimizer.UNSPECIFIED)).toBe("SGD");
    expect(OPTIMIZER_OPTIONS.map(([, t]) => t)).toEqual(["SGD", "AdamW"]);
    expect(scheduleName(LearningRateSchedule.UNSPECIFIED)).toBe("constant");
    expect(SCHEDULE_OPTIONS.map(([, t]) => t)).toEqual(["constant", "cosine"]);
    expect(roleName(ChatMessage_Role.ASSISTANT)).toBe("assistant");
    expect(finishReasonName(FinishReason.EOS)).toBe("eos");
    expect(finishReasonName(FinishReason.LENGTH)).toBe("length");
    expect(finishReasonName(FinishReason.UNSPECIFIED)).toBe("unknown");
    expect(finishReasonName(9 as FinishReason)).toBe("finish reason 9");
  });
});
