// The Keys (admin) page's logic: the create form -> CreateKeyRequest, and the texts of
// the keys table (KeyService.ListKeys) and the usage table (UsageService.ListUsage).
// Pure, no DOM.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Role, type CreateKeyRequestSchema, type Key, type Quota, type Usage } from "../gen/deephardway/v1/access_pb.js";
import { tsMs } from "./format.js";

/** The roles a key can have, in the form's order, with their labels. */
export const ROLE_OPTIONS: [Role, string][] = [
  [Role.SUBMITTER, "submitter"],
  [Role.VIEWER, "viewer"],
  [Role.ADMIN, "admin"],
  [Role.WORKER, "worker"],
];

/** Role.SUBMITTER -> "submitter". */
export function keyRoleName(role: Role): string {
  return ROLE_OPTIONS.find(([r]) => r === role)?.[1] ?? (role === Role.UNSPECIFIED ? "unspecified" : `role ${role}`);
}

/** What the create form holds, as typed. */
export interface KeyFormValues {
  name: string;
  role: Role;
  tenant: string;
  maxActiveJobs: string;
  submitsPerSecond: string;
  submitBurst: string;
  /** Absent (older callers) means no limit. */
  maxRunningJobs?: string;
}

export type CreateKeyInit = MessageInitShape<typeof CreateKeyRequestSchema>;

function uintField(what: string, text: string): number {
  const t = text.trim();
  if (t === "") return 0;
  if (!/^\d+$/.test(t)) throw new Error(`${what}: "${t}" is not a whole number ≥ 0`);
  const n = Number(t);
  if (n > 0xffffffff) throw new Error(`${what}: at most 4294967295`);
  return n;
}

function rateField(what: string, text: string): number {
  const t = text.trim();
  if (t === "") return 0;
  const n = Number(t);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${what}: "${t}" is not a number ≥ 0`);
  return n;
}

/**
 * The CreateKey request from the form. The name is required (the service checks its
 * and the tenant's characters and length, so its message is what the user sees); an
 * empty tenant is the service's `default`; empty quota fields are 0 (no limit), and the
 * quota is left unset when every field is; junk in a quota field is an error, not 0 (no
 * limit). Throws an Error saying which field is wrong.
 */
export function createKeyRequest(v: KeyFormValues): CreateKeyInit {
  const name = v.name.trim();
  if (!name) throw new Error("name: required");
  const tenant = v.tenant.trim();
  if (!ROLE_OPTIONS.some(([r]) => r === v.role)) throw new Error("role: pick one");
  const quota = {
    maxActiveJobs: uintField("max active jobs", v.maxActiveJobs),
    submitsPerSecond: rateField("submits per second", v.submitsPerSecond),
    submitBurst: uintField("burst", v.submitBurst),
    maxRunningJobs: uintField("max running jobs", v.maxRunningJobs ?? ""),
  };
  const anyLimit = quota.maxActiveJobs || quota.submitsPerSecond || quota.submitBurst || quota.maxRunningJobs;
  return { name, role: v.role, tenant, quota: anyLimit ? quota : undefined };
}

/** A key's quota: "none", or e.g. "5 active jobs · 1.5 submits/s, burst 3". */
export function quotaText(q: Quota | undefined): string {
  if (!q) return "none";
  const parts: string[] = [];
  if (q.maxActiveJobs) parts.push(`${q.maxActiveJobs} active job${q.maxActiveJobs === 1 ? "" : "s"}`);
  if (q.maxRunningJobs) parts.push(`${q.maxRunningJobs} running`);
  if (q.submitsPerSecond) parts.push(`${formatRate(q.submitsPerSecond)} submits/s` + (q.submitBurst ? `, burst ${q.submitBurst}` : ""));
  else if (q.submitBurst) parts.push(`burst ${q.submitBurst}`);
  return parts.length ? parts.join(" · ") : "none";
}

function formatRate(n: number): string {
  return String(Number(n.toPrecision(6)));
}

/** The keys table's columns. */
export const KEY_COLUMNS = ["Name", "Role", "Tenant", "Quota", "Created", "Creator"];

/** A key's cells, in KEY_COLUMNS order. */
export function keyCells(k: Key, formatTime: (ms: number) => string = localTime): string[] {
  const created = tsMs(k.createTime);
  return [k.name, keyRoleName(k.role), k.tenant, quotaText(k.quota), created === undefined ? "" : formatTime(created), k.creator];
}

/** The usage table's columns. */
export const USAGE_COLUMNS = [
  "Tenant",
  "Key",
  "Jobs (kind/outcome)",
  "Prompt tokens",
  "Generated tokens",
  "Embedded texts",
  "Classified images",
  "Training image-epochs",
  "Worker-seconds",
];

/** 1234567n -> "1,234,567". */
export function formatCount(n: bigint | number): string {
  const s = BigInt(n).toString();
  return s.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** Finished jobs by kind and outcome: "diagnostic/succeeded 3, generate/failed 1" (sorted), "" for none. */
export function jobsText(jobs: { [kindOutcome: string]: bigint }): string {
  return Object.entries(jobs)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, n]) => `${k} ${formatCount(n)}`)
    .join(", ");
}

/** A usage entry's cells, in USAGE_COLUMNS order. */
export function usageCells(u: Usage): string[] {
  return [
    u.tenant,
    u.key,
    jobsText(u.jobs),
    formatCount(u.promptTokens),
    formatCount(u.generatedTokens),
    formatCount(u.embeddedTexts),
    formatCount(u.classifiedImages),
    formatCount(u.trainingImageEpochs),
    u.workerSeconds.toFixed(1),
  ];
}

/** The revoke confirmation's question. */
export function revokeQuestion(name: string): string {
  return `Revoke the API key "${name}"? Every call made with it will be refused, and its open streams end.`;
}

/** What the page says under a new key's secret. */
export const SECRET_WARNING = "Copy this secret now: it is not stored and will not be shown again.";

function localTime(ms: number): string {
  return new Date(ms).toLocaleString();
}
