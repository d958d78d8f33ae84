import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { CreateKeyRequestSchema, KeySchema, QuotaSchema, Role, UsageSchema } from "../src/gen/deephardway/v1/access_pb.js";
import {
  createKeyRequest,
  formatCount,
  jobsText,
  KEY_COLUMNS,
  keyCells,
  keyRoleName,
  quotaText,
  revokeQuestion,
  ROLE_OPTIONS,
  USAGE_COLUMNS,
  usageCells,
  type KeyFormValues,
} from "../src/lib/keys.js";

const blank: KeyFormValues = {
  name: "",
  role: Role.SUBMITTER,
  tenant: "",
  maxActiveJobs: "",
  submitsPerSecond: "",
  submitBurst: "",
};

describe("create key form", () => {
  it("builds a request without a quota when no limit is set", () => {
    const req = createKeyRequest({ ...blank, name: "  ci-bot ", tenant: " team-a " });
    expect(req).toEqual({ name: "ci-bot", role: Role.SUBMITTER, tenant: "team-a", quota: undefined });
    // It is a valid CreateKeyRequest init.
    expect(create(CreateKeyRequestSchema, req).quota).toBeUndefined();
  });

  it("builds the quota from the fields (empty is 0, no limit)", () => {
    const req = createKeyRequest({ ...blank, name: "k", role: Role.VIEWER, maxActiveJobs: "5", submitsPerSecond: "1.5", submitBurst: " 3 " });
    expect(req.role).toBe(Role.VIEWER);
    expect(req.tenant).toBe("");
    expect(req.quota).toEqual({ maxActiveJobs: 5, submitsPerSecond: 1.5, submitBurst: 3, maxRunningJobs: 0 });
    expect(createKeyRequest({ ...blank, name: "k", maxRunningJobs: "2" }).quota).toMatchObject({ maxRunningJobs: 2 });
    expect(() => createKeyRequest({ ...blank, name: "k", maxRunningJobs: "x" })).toThrow(/max running jobs/);
    expect(createKeyRequest({ ...blank, name: "k", maxActiveJobs: "0", submitBurst: "0" }).quota).toBeUndefined();
    expect(createKeyRequest({ ...blank, name: "k", submitBurst: "2" }).quota).toEqual({
      maxActiveJobs: 0,
      submitsPerSecond: 0,
      submitBurst: 2,
      maxRunningJobs: 0,
    });
  });

  it("refuses a missing name and junk in the quota", () => {
    expect(() => createKeyRequest(blank)).toThrow(/name: required/);
    expect(() => createKeyRequest({ ...blank, name: "   " })).toThrow(/name: required/);
    expect(() => createKeyRequest({ ...blank, name: "k", maxActiveJobs: "-1" })).toThrow(/max active jobs/);
    expect(() => createKeyRequest({ ...blank, name: "k", maxActiveJobs: "2.5" })).toThrow(/max active jobs/);
    expect(() => createKeyRequest({ ...blank, name: "k", submitBurst: "lots" })).toThrow(/burst/);
    expect(() => createKeyRequest({ ...blank, name: "k", maxActiveJobs: "4294967296" })).toThrow(/at most 4294967295/);
    expect(() => createKeyRequest({ ...blank, name: "k", submitsPerSecond: "-0.5" })).toThrow(/submits per second/);
    expect(() => createKeyRequest({ ...blank, name: "k", submitsPerSecond: "fast" })).toThrow(/submits per second/);
    expect(() => createKeyRequest({ ...blank, name: "k", role: Role.UNSPECIFIED })).toThrow(/role/);
  });

  it("offers every role, submitter first", () => {
    expect(ROLE_OPTIONS.map(([, label]) => label)).toEqual(["submitter", "viewer", "admin", "worker"]);
    expect(keyRoleName(Role.ADMIN)).toBe("admin");
    expect(keyRoleName(Role.WORKER)).toBe("worker");
    expect(keyRoleName(Role.UNSPECIFIED)).toBe("unspecified");
    expect(keyRoleName(42 as Role)).toBe("role 42");
  });
});

describe("keys table", () => {
  it("describes quotas", () => {
    expect(quotaText(undefined)).toBe("none");
    expect(quotaText(create(QuotaSchema, {}))).toBe("none");
    expect(quotaText(create(QuotaSchema, { maxActiveJobs: 5, submitsPerSecond: 1.5, submitBurst: 3 }))).toBe(
      "5 active jobs · 1.5 submits/s, burst 3",
    );
    expect(quotaText(create(QuotaSchema, { maxActiveJobs: 1 }))).toBe("1 active job");
    expect(quotaText(create(QuotaSchema, { submitsPerSecond: 0.1 + 0.2 }))).toBe("0.3 submits/s");
    expect(quotaText(create(QuotaSchema, { submitBurst: 4 }))).toBe("burst 4");
    expect(quotaText(create(QuotaSchema, { maxActiveJobs: 3, maxRunningJobs: 1 }))).toBe("3 active jobs · 1 running");
  });

  it("renders a key's cells in column order", () => {
    const k = create(KeySchema, {
      name: "ci",
      role: Role.SUBMITTER,
      tenant: "team-a",
      quota: { maxActiveJobs: 2 },
      createTime: timestampFromMs(Date.UTC(2025, 0, 2, 3, 4, 5)),
      creator: "bootstrap",
    });
    const cells = keyCells(k, (ms) => new Date(ms).toISOString());
    expect(cells).toHaveLength(KEY_COLUMNS.length);
    expect(cells).toEqual(["ci", "submitter", "team-a", "2 active jobs", "2025-01-02T03:04:05.000Z", "bootstrap"]);
    // No creation time: empty cell.
    expect(keyCells(create(KeySchema, { name: "x", role: Role.ADMIN }))[4]).toBe("");
  });

  it("asks before revoking", () => {
    expect(revokeQuestion("ci")).toMatch(/^Revoke the API key "ci"\?/);
  });
});

describe("usage table", () => {
  it("formats counts and jobs by kind/outcome", () => {
    expect(formatCount(0n)).toBe("0");
    expect(formatCount(999n)).toBe("999");
    expect(formatCount(1234567n)).toBe("1,234,567");
    expect(formatCount(18446744073709551615n)).toBe("18,446,744,073,709,551,615");
    expect(jobsText({})).toBe("");
    expect(jobsText({ "generate/failed": 1n, "diagnostic/succeeded": 1200n, "diagnostic/cancelled": 2n })).toBe(
      "diagnostic/cancelled 2, diagnostic/succeeded 1,200, generate/failed 1",
    );
  });

  it("renders a usage entry's cells in column order", () => {
    const u = create(UsageSchema, {
      tenant: "default",
      key: "ci",
      jobs: { "train/succeeded": 1n, "classify/succeeded": 3n },
      promptTokens: 1500n,
      generatedTokens: 250n,
      embeddedTexts: 12n,
      classifiedImages: 7n,
      trainingImageEpochs: 6000n,
      workerSeconds: 12.345,
    });
    const cells = usageCells(u);
    expect(cells).toHaveLength(USAGE_COLUMNS.length);
    expect(cells).toEqual(["default", "ci", "classify/succeeded 3, train/succeeded 1", "1,500", "250", "12", "7", "6,000", "12.3"]);
  });
});
