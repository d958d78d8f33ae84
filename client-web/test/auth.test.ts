import { describe, expect, it } from "vitest";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { JobService, JobState } from "../src/gen/deephardway/v1/jobs_pb.js";
import {
  authErrorText,
  authInterceptor,
  KeyStore,
  keyWasSent,
  normalizeKey,
  PERMISSION_TEXT,
  REFUSED_TEXT,
  SIGN_IN_TEXT,
  STORAGE_ITEM,
  type StorageLike,
} from "../src/lib/auth.js";
import { errorText } from "../src/lib/format.js";

class MemoryStorage implements StorageLike {
  items = new Map<string, string>();
  getItem(k: string) {
    return this.items.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    this.items.set(k, v);
  }
  removeItem(k: string) {
    this.items.delete(k);
  }
}

/**
 * An in-memory JobService that records the authorization header of every call and
 * answers like a service with auth on: no header -> UNAUTHENTICATED, "Bearer good" ->
 * OK, "Bearer viewer" -> PERMISSION_DENIED for CancelJob, any other key ->
 * UNAUTHENTICATED. WatchJobs sends one snapshot update, then ends with UNAUTHENTICATED when the
 * key is "Bearer revoked-later" (a key revoked while watching).
 */
function fakeService(keys: KeyStore, seen: (string | null)[], authErrors: [Code, string | undefined][] = []) {
  const check = (auth: string | null) => {
    if (auth === null) throw new ConnectError("missing authorization", Code.Unauthenticated);
    if (!["Bearer good", "Bearer viewer", "Bearer revoked-later"].includes(auth)) throw new ConnectError("unknown key", Code.Unauthenticated);
  };
  const transport = createRouterTransport(
    ({ service }) =>
      service(JobService, {
        getJob(req, ctx) {
          const auth = ctx.requestHeader.get("authorization");
          seen.push(auth);
          check(auth);
          return { job: { id: req.jobId, state: JobState.RUNNING } };
        },
        cancelJob(req, ctx) {
          const auth = ctx.requestHeader.get("authorization");
          seen.push(auth);
          check(auth);
          if (auth === "Bearer viewer") throw new ConnectError("role viewer may not cancel jobs", Code.PermissionDenied);
          return { job: { id: req.jobId } };
        },
        async *watchJobs(_req, ctx) {
          const auth = ctx.requestHeader.get("authorization");
          seen.push(auth);
          check(auth);
          yield { job: { id: "1" }, snapshot: true };
          if (auth === "Bearer revoked-later") throw new ConnectError("the API key was revoked", Code.Unauthenticated);
        },
      }),
    {
      transport: {
        interceptors: [authInterceptor({ key: () => keys.get(), onAuthError: (err, key) => authErrors.push([err.code, key]) })],
      },
    },
  );
  return createClient(JobService, transport);
}

describe("KeyStore", () => {
  it("keeps the key in the given storage and drops it on sign-out", () => {
    const storage = new MemoryStorage();
    const keys = new KeyStore(storage);
    expect(keys.get()).toBeUndefined();
    const changes: (string | undefined)[] = [];
    keys.subscribe((k) => changes.push(k));
    keys.set("  Bearer dhk_secret \n");
    expect(keys.get()).toBe("dhk_secret");
    expect(storage.getItem(STORAGE_ITEM)).toBe("dhk_secret");
    // A new store (a reload of the tab) finds it again.
    expect(new KeyStore(storage).get()).toBe("dhk_secret");
    keys.clear();
    expect(keys.get()).toBeUndefined();
    expect(storage.getItem(STORAGE_ITEM)).toBeNull();
    keys.set("   ");
    expect(keys.get()).toBeUndefined();
    expect(changes).toEqual(["dhk_secret", undefined, undefined]);
  });

  it("works in memory when the storage is missing or refuses", () => {
    const keys = new KeyStore();
    keys.set("k1");
    expect(keys.get()).toBe("k1");
    const broken: StorageLike = {
      getItem: () => {
        throw new Error("SecurityError");
      },
      setItem: () => {
        throw new Error("QuotaExceededError");
      },
      removeItem: () => {
        throw new Error("SecurityError");
      },
    };
    const k2 = new KeyStore(broken);
    expect(k2.get()).toBeUndefined();
    k2.set("k2");
    expect(k2.get()).toBe("k2");
    k2.clear();
    expect(k2.get()).toBeUndefined();
  });

  it("normalizes pasted keys", () => {
    expect(normalizeKey("abc")).toBe("abc");
    expect(normalizeKey(" bearer  abc ")).toBe("abc");
    expect(normalizeKey("")).toBeUndefined();
    expect(normalizeKey("Bearer ")).toBe("Bearer");
  });
});

describe("authInterceptor", () => {
  it("sends authorization: Bearer <key> exactly when a key is stored", async () => {
    const keys = new KeyStore(new MemoryStorage());
    const seen: (string | null)[] = [];
    const client = fakeService(keys, seen);
    await expect(client.getJob({ jobId: "1" })).rejects.toThrow(ConnectError);
    keys.set("good");
    expect((await client.getJob({ jobId: "2" })).job?.id).toBe("2");
    // Streams too.
    for await (const u of client.watchJobs({})) expect(u.snapshot).toBe(true);
    keys.clear();
    await expect(client.getJob({ jobId: "3" })).rejects.toThrow(ConnectError);
    expect(seen).toEqual([null, "Bearer good", "Bearer good", null]);
  });

  it("reports auth errors with the key the call carried, and marks them", async () => {
    const keys = new KeyStore(new MemoryStorage());
    const authErrors: [Code, string | undefined][] = [];
    const client = fakeService(keys, [], authErrors);

    const noKey = await client.getJob({ jobId: "1" }).catch((e) => e);
    expect(noKey.code).toBe(Code.Unauthenticated);
    expect(keyWasSent(noKey)).toBe(false);
    expect(errorText(noKey)).toBe(`${SIGN_IN_TEXT} (UNAUTHENTICATED: missing authorization)`);

    keys.set("unknown");
    const refused = await client.getJob({ jobId: "1" }).catch((e) => e);
    expect(keyWasSent(refused)).toBe(true);
    expect(errorText(refused)).toBe(`${REFUSED_TEXT} (UNAUTHENTICATED: unknown key)`);

    keys.set("viewer");
    const denied = await client.cancelJob({ jobId: "1" }).catch((e) => e);
    expect(errorText(denied)).toBe(`${PERMISSION_TEXT} (PERMISSION_DENIED: role viewer may not cancel jobs)`);

    expect(authErrors).toEqual([
      [Code.Unauthenticated, undefined],
      [Code.Unauthenticated, "unknown"],
      [Code.PermissionDenied, "viewer"],
    ]);
  });

  it("sees a stream that ends with UNAUTHENTICATED after some messages", async () => {
    const keys = new KeyStore(new MemoryStorage());
    const authErrors: [Code, string | undefined][] = [];
    const client = fakeService(keys, [], authErrors);
    keys.set("revoked-later");
    const updates: string[] = [];
    let caught: unknown;
    try {
      for await (const u of client.watchJobs({})) updates.push(u.job?.id ?? "");
    } catch (e) {
      caught = e;
    }
    expect(updates).toEqual(["1"]);
    expect(caught).toBeInstanceOf(ConnectError);
    expect(errorText(caught)).toBe(`${REFUSED_TEXT} (UNAUTHENTICATED: the API key was revoked)`);
    expect(authErrors).toEqual([[Code.Unauthenticated, "revoked-later"]]);
  });

  it("passes other errors through without reporting them", async () => {
    const keys = new KeyStore(new MemoryStorage());
    keys.set("good");
    const authErrors: [Code, string | undefined][] = [];
    const client = fakeService(keys, [], authErrors);
    // createJob is not implemented by the fake: UNIMPLEMENTED.
    const err = await client.createJob({}).catch((e) => e);
    expect(err.code).toBe(Code.Unimplemented);
    expect(errorText(err)).toMatch(/^UNIMPLEMENTED: /);
    expect(authErrors).toEqual([]);
  });
});

describe("auth error texts", () => {
  it("maps each code", () => {
    const unauth = new ConnectError("no key", Code.Unauthenticated);
    expect(authErrorText(unauth, false)).toBe("Sign in with an API key (UNAUTHENTICATED: no key)");
    expect(authErrorText(unauth, true)).toBe("The API key was refused (UNAUTHENTICATED: no key)");
    // Not through the interceptor: no key was sent.
    expect(authErrorText(unauth)).toBe("Sign in with an API key (UNAUTHENTICATED: no key)");
    expect(authErrorText(new ConnectError("", Code.Unauthenticated), true)).toBe("The API key was refused (UNAUTHENTICATED)");
    const denied = new ConnectError("role viewer may not create jobs", Code.PermissionDenied);
    expect(authErrorText(denied, true)).toBe("Your key's role does not allow this (PERMISSION_DENIED: role viewer may not create jobs)");
    expect(authErrorText(denied, false)).toBe("Your key's role does not allow this (PERMISSION_DENIED: role viewer may not create jobs)");
    for (const code of [Code.NotFound, Code.InvalidArgument, Code.ResourceExhausted, Code.Unavailable, Code.Internal]) {
      expect(authErrorText(new ConnectError("x", code), true)).toBeUndefined();
    }
    expect(authErrorText(new Error("x"))).toBeUndefined();
    expect(authErrorText("x")).toBeUndefined();
  });

  it("errorText uses them and leaves the other codes as CODE_NAME: message", () => {
    expect(errorText(new ConnectError("no key", Code.Unauthenticated))).toBe("Sign in with an API key (UNAUTHENTICATED: no key)");
    expect(errorText(new ConnectError("nope", Code.PermissionDenied))).toBe("Your key's role does not allow this (PERMISSION_DENIED: nope)");
    expect(errorText(new ConnectError("job 7 not found", Code.NotFound))).toBe("NOT_FOUND: job 7 not found");
    expect(errorText(new ConnectError("slow down", Code.ResourceExhausted))).toBe("RESOURCE_EXHAUSTED: slow down");
  });
});
