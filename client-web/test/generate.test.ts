import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { ChatMessage_Role, FinishReason, GenerateInputSchema } from "../src/gen/deephardway/v1/inputs_pb.js";
import { generateInput, generateSummary, type GenerateForm } from "../src/lib/generate.js";

const FORM: GenerateForm = {
  mode: "chat",
  system: "You are a helpful assistant.",
  user: "What is the capital of France?",
  prompt: "Once upon a time",
  maxTokens: "64",
  temperature: "0.7",
  topP: "0.9",
  topK: "0",
  repetitionPenalty: "1.1",
  seed: "",
  stop: "",
};

describe("generate form", () => {
  it("maps a chat to messages with roles", () => {
    const input = generateInput(FORM);
    expect(input.messages).toEqual([
      { role: ChatMessage_Role.SYSTEM, content: "You are a helpful assistant." },
      { role: ChatMessage_Role.USER, content: "What is the capital of France?" },
    ]);
    expect(input.prompt).toBeUndefined();
    expect(input).toMatchObject({ maxTokens: 64, temperature: 0.7, topP: 0.9, topK: 0, repetitionPenalty: 1.1, stop: [] });
    // No seed: left unset, so the service picks one.
    expect("seed" in input).toBe(false);
    expect(create(GenerateInputSchema, input).seed).toBeUndefined();
  });

  it("leaves out an empty system message", () => {
    expect(generateInput({ ...FORM, system: "  " }).messages).toEqual([{ role: ChatMessage_Role.USER, content: FORM.user }]);
  });

  it("maps a raw prompt, a seed and stop strings", () => {
    const input = generateInput({ ...FORM, mode: "prompt", seed: "42", stop: "\\n\\n, User:", maxTokens: "-5", topK: "2.5", temperature: "" });
    expect(input.prompt).toBe("Once upon a time");
    expect(input.messages).toBeUndefined();
    expect(input.seed).toBe(42n);
    expect(input.stop).toEqual(["\n\n", "User:"]);
    expect(input.maxTokens).toBe(0);
    expect(input.topK).toBe(2);
    expect(input.temperature).toBe(0);
    expect(() => generateInput({ ...FORM, seed: "abc" })).toThrow(/seed: "abc"/);
  });

  it("summarises a result", () => {
    const r = { promptTokens: 5, completionTokens: 24, finishReason: FinishReason.LENGTH, seed: 42n };
    expect(generateSummary(r, 31.25, 30)).toBe(
      "5 prompt tokens, 24 completion tokens, 31.3 tokens/s (last progress: 30.0 tokens/s), finish reason: length, seed 42",
    );
    expect(generateSummary({ ...r, finishReason: FinishReason.EOS }, undefined, undefined)).toBe(
      "5 prompt tokens, 24 completion tokens, finish reason: eos, seed 42",
    );
  });
});
