// The generate form: its values and their mapping to a GenerateInput, and the result's
// summary. Pure, no DOM.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ChatMessage_Role, type GenerateInputSchema, type GenerateResult } from "../gen/deephardway/v1/inputs_pb.js";
import { finishReasonName } from "./enums.js";
import { numberValue, parseSeed, parseStops, uintValue } from "./params.js";

/** The form's fields as typed. */
export interface GenerateForm {
  /** A chat (system + user messages) or a raw prompt. */
  mode: "chat" | "prompt";
  system: string;
  user: string;
  prompt: string;
  maxTokens: string;
  temperature: string;
  topP: string;
  topK: string;
  repetitionPenalty: string;
  /** Empty: the service picks one. */
  seed: string;
  /** Comma-separated, with escapes (parseStops). */
  stop: string;
}

/** The GenerateInput of the form's values; throws an Error naming a bad field. */
export function generateInput(form: GenerateForm): MessageInitShape<typeof GenerateInputSchema> {
  const input: MessageInitShape<typeof GenerateInputSchema> = {
    maxTokens: uintValue(form.maxTokens),
    temperature: numberValue(form.temperature),
    topP: numberValue(form.topP),
    topK: uintValue(form.topK),
    repetitionPenalty: numberValue(form.repetitionPenalty),
    stop: parseStops(form.stop),
  };
  const seed = parseSeed(form.seed);
  if (seed !== undefined) input.seed = seed;
  if (form.mode === "chat") {
    const messages: { role: ChatMessage_Role; content: string }[] = [];
    if (form.system.trim()) messages.push({ role: ChatMessage_Role.SYSTEM, content: form.system });
    messages.push({ role: ChatMessage_Role.USER, content: form.user });
    input.messages = messages;
  } else {
    input.prompt = form.prompt;
  }
  return input;
}

/**
 * A generate result's one-line summary: "5 prompt tokens, 24 completion tokens, 31.2
 * tokens/s (last progress: 30.0 tokens/s), finish reason: length, seed 42".
 */
export function generateSummary(
  r: Pick<GenerateResult, "promptTokens" | "completionTokens" | "finishReason" | "seed">,
  rate: number | undefined,
  lastRate: number | undefined,
): string {
  return [
    `${r.promptTokens} prompt tokens, ${r.completionTokens} completion tokens`,
    rate !== undefined ? `, ${rate.toFixed(1)} tokens/s` : "",
    lastRate !== undefined ? ` (last progress: ${lastRate.toFixed(1)} tokens/s)` : "",
    `, finish reason: ${finishReasonName(r.finishReason)}`,
    `, seed ${r.seed}`,
  ].join("");
}
