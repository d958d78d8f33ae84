// The API's enums in the forms and on the page: form tokens (a <select>'s option
// values) and readable labels. Pure, no DOM.
import { Architecture, ChatMessage_Role, FinishReason, LearningRateSchedule, Optimizer } from "../gen/deephardway/v1/inputs_pb.js";

/** A TypeScript numeric enum object as protoc-gen-es generates it (with reverse mapping). */
export type EnumObject = { [key: string]: string | number };

/**
 * An enum value's form token: its short name in lower case (Architecture.CNN -> "cnn",
 * Optimizer.ADAMW -> "adamw"); "" for a value the enum does not have.
 */
export function enumToken(e: EnumObject, value: number): string {
  const name = e[value];
  return typeof name === "string" ? name.toLowerCase() : "";
}

/** The enum value of a form token ("cnn" -> Architecture.CNN); undefined for an unknown token. */
export function enumFromToken<E extends number>(e: EnumObject, token: string): E | undefined {
  const t = token.trim().toUpperCase();
  if (t === "" || /^\d/.test(t)) return undefined; // not the reverse mapping's numeric keys
  const v = e[t];
  return typeof v === "number" ? (v as E) : undefined;
}

/** "mlp" or "cnn"; unset is an MLP (as the service reads it). */
export function architectureName(a: Architecture): string {
  return a === Architecture.UNSPECIFIED ? "mlp" : enumToken(Architecture, a) || `architecture ${a}`;
}

const OPTIMIZER_LABELS: { [K in Optimizer]?: string } = { [Optimizer.SGD]: "SGD", [Optimizer.ADAMW]: "AdamW" };

/** "SGD" or "AdamW"; unset is SGD. */
export function optimizerName(o: Optimizer): string {
  return OPTIMIZER_LABELS[o === Optimizer.UNSPECIFIED ? Optimizer.SGD : o] ?? `optimizer ${o}`;
}

/** "constant" or "cosine"; unset is constant. */
export function scheduleName(s: LearningRateSchedule): string {
  return s === LearningRateSchedule.UNSPECIFIED ? "constant" : enumToken(LearningRateSchedule, s) || `schedule ${s}`;
}

/** "system", "user" or "assistant". */
export function roleName(r: ChatMessage_Role): string {
  return r === ChatMessage_Role.UNSPECIFIED ? "unspecified" : enumToken(ChatMessage_Role, r) || `role ${r}`;
}

/** "length", "stop" or "eos"; "unknown" when unset. */
export function finishReasonName(f: FinishReason): string {
  return f === FinishReason.UNSPECIFIED ? "unknown" : enumToken(FinishReason, f) || `finish reason ${f}`;
}

/** The options of the train form's enum <select>s: value and text. */
export const ARCHITECTURE_OPTIONS: [Architecture, string][] = [
  [Architecture.MLP, "mlp (fully connected)"],
  [Architecture.CNN, "cnn (small convolutional)"],
];
export const OPTIMIZER_OPTIONS: [Optimizer, string][] = [Optimizer.SGD, Optimizer.ADAMW].map((o) => [o, optimizerName(o)]);
export const SCHEDULE_OPTIONS: [LearningRateSchedule, string][] = [LearningRateSchedule.CONSTANT, LearningRateSchedule.COSINE].map(
  (s) => [s, scheduleName(s)],
);
