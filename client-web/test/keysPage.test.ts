// @vitest-environment happy-dom
// The Keys page and the header's sign-in, built in a DOM (happy-dom) against an
// in-memory KeyService / UsageService (connect's router transport, with the app's auth
// interceptor): no server.
import { beforeEach, describe, expect, it, vi } from "vitest";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { KeyService, Role, UsageService, type CreateKeyRequest, type Key } from "../src/gen/deephardway/v1/access_pb.js";
import { authInterceptor, KeyStore, REFUSED_TEXT, SIGN_IN_TEXT, type StorageLike } from "../src/lib/auth.js";
import { keysPage } from "../src/pages/keys/index.js";
import { SignIn } from "../src/signin.js";
import type { AppContext } from "../src/page.js";

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

interface Fake {
  keys: Key[];
  created: CreateKeyRequest[];
  revoked: string[];
  auth: (string | null)[];
  /** The role of the caller: anything but admin is PERMISSION_DENIED for KeyService. */
  callerIsAdmin: boolean;
}

function setup() {
  const fake: Fake = {
    keys: [
      {
        name: "admin",
        role: Role.ADMIN,
        tenant: "default",
        creator: "bootstrap",
        createTime: timestampFromMs(Date.UTC(2025, 0, 1)),
      } as Key,
    ],
    created: [],
    revoked: [],
    auth: [],
    callerIsAdmin: true,
  };
  const store = new KeyStore(new MemoryStorage());
  store.set("admin-secret");
  const admin = () => {
    if (!fake.callerIsAdmin) throw new ConnectError("role viewer may not manage keys", Code.PermissionDenied);
  };
  const transport = createRouterTransport(
    ({ service }) => {
      service(KeyService, {
        listKeys(_req, ctx) {
          fake.auth.push(ctx.requestHeader.get("authorization"));
          admin();
          return { keys: fake.keys };
        },
        createKey(req) {
          admin();
          if (fake.keys.some((k) => k.name === req.name)) throw new ConnectError(`key ${req.name} exists`, Code.AlreadyExists);
          fake.created.push(req);
          const key = { name: req.name, role: req.role, tenant: req.tenant || "default", quota: req.quota, creator: "admin" } as Key;
          fake.keys.push(key);
          return { key, secret: `dhk_secret_for_${req.name}` };
        },
        revokeKey(req) {
          admin();
          fake.revoked.push(req.name);
          const key = fake.keys.find((k) => k.name === req.name);
          fake.keys = fake.keys.filter((k) => k.name !== req.name);
          return { key };
        },
      });
      service(UsageService, {
        listUsage() {
          return {
            usage: [
              {
                tenant: "default",
                key: "admin",
                jobs: { "diagnostic/succeeded": 2n },
                promptTokens: 1000n,
                generatedTokens: 20n,
                workerSeconds: 3.25,
              },
            ],
          };
        },
      });
    },
    { transport: { interceptors: [authInterceptor({ key: () => store.get() })] } },
  );
  const ctx = {
    api: { keys: createClient(KeyService, transport), usage: createClient(UsageService, transport) },
  } as unknown as AppContext;
  let answer = true;
  const questions: string[] = [];
  const page = keysPage(ctx, {
    confirm: (q) => {
      questions.push(q);
      return answer;
    },
  });
  document.body.replaceChildren(page.el);
  const $ = <E extends Element = HTMLElement>(sel: string) => page.el.querySelector(sel) as E;
  const rows = (table: string) =>
    [...page.el.querySelectorAll(`[data-testid=${table}] tbody tr`)].map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent));
  return { fake, page, $, rows, questions, setAnswer: (a: boolean) => (answer = a) };
}

function submit(form: HTMLFormElement) {
  form.dispatchEvent(new Event("submit", { bubbles: true, cancelable: true }));
}

function fill(input: HTMLInputElement | HTMLSelectElement, value: string) {
  input.value = value;
  input.dispatchEvent(new Event("change", { bubbles: true }));
}

describe("keys page", () => {
  let t: ReturnType<typeof setup>;
  beforeEach(() => {
    t = setup();
  });

  it("lists the keys and the usage with the signed-in key", async () => {
    t.page.show?.([]);
    await vi.waitFor(() => expect(t.rows("keys-table")).toHaveLength(1));
    const [row] = t.rows("keys-table");
    expect(row.slice(0, 4)).toEqual(["admin", "admin", "default", "none"]);
    expect(row[5]).toBe("bootstrap");
    expect(row[6]).toBe("Revoke");
    expect(t.fake.auth).toEqual(["Bearer admin-secret"]);
    await vi.waitFor(() => expect(t.rows("usage-table")).toHaveLength(1));
    expect(t.rows("usage-table")[0]).toEqual(["default", "admin", "diagnostic/succeeded 2", "1,000", "20", "0", "0", "0", "3.3"]);
    expect(t.$("[data-testid=keys-error]").hidden).toBe(true);
  });

  it("creates a key and shows its secret once", async () => {
    t.page.show?.([]);
    fill(t.$("[name=key_name]"), "ci");
    fill(t.$("[name=role]"), "viewer");
    fill(t.$("[name=tenant]"), "team-a");
    fill(t.$("[name=max_active_jobs]"), "2");
    fill(t.$("[name=submits_per_second]"), "0.5");
    submit(t.$("[data-testid=create-key-form]"));
    const secret = t.$("[data-testid=secret]");
    await vi.waitFor(() => expect(secret.hidden).toBe(false));
    expect(t.fake.created).toHaveLength(1);
    expect(t.fake.created[0]).toMatchObject({ name: "ci", role: Role.VIEWER, tenant: "team-a" });
    expect(t.fake.created[0].quota).toMatchObject({ maxActiveJobs: 2, submitsPerSecond: 0.5, submitBurst: 0, maxRunningJobs: 0 });
    expect(t.$("[data-testid=secret-value]").textContent).toBe("dhk_secret_for_ci");
    expect(secret.textContent).toMatch(/New key ci \(viewer, tenant team-a\)/);
    expect(t.$("[data-testid=secret-warning]").textContent).toMatch(/will not be shown again/);
    expect(t.$<HTMLInputElement>("[name=key_name]").value).toBe("");
    // The list is read again and marks the new key.
    await vi.waitFor(() => expect(t.page.el.querySelector("tr.new[data-key=ci]")).not.toBeNull());
    expect(t.rows("keys-table").map((r) => r[0])).toEqual(["admin", "ci"]);
    expect(t.rows("keys-table")[1].slice(1, 4)).toEqual(["viewer", "team-a", "2 active jobs · 0.5 submits/s"]);
    // Done removes the secret from the page.
    t.$<HTMLButtonElement>("[data-testid=secret-done]").click();
    expect(secret.hidden).toBe(true);
    expect(t.$("[data-testid=secret-value]").textContent).toBe("");
  });

  it("forgets the secret when the page is left", async () => {
    fill(t.$("[name=key_name]"), "ci");
    submit(t.$("[data-testid=create-key-form]"));
    await vi.waitFor(() => expect(t.$("[data-testid=secret]").hidden).toBe(false));
    t.page.hide?.();
    expect(t.$("[data-testid=secret]").hidden).toBe(true);
    expect(t.page.el.textContent).not.toContain("dhk_secret_for_ci");
  });

  it("checks the form before calling the service and shows the service's errors", async () => {
    fill(t.$("[name=key_name]"), "ci");
    fill(t.$("[name=max_active_jobs]"), "-3");
    submit(t.$("[data-testid=create-key-form]"));
    const error = t.$("[data-testid=create-error]");
    expect(error.hidden).toBe(false);
    expect(error.textContent).toMatch(/^Invalid parameters: max active jobs/);
    expect(t.fake.created).toHaveLength(0);

    fill(t.$("[name=max_active_jobs]"), "");
    fill(t.$("[name=key_name]"), "admin");
    submit(t.$("[data-testid=create-key-form]"));
    await vi.waitFor(() => expect(error.textContent).toBe("CreateKey: ALREADY_EXISTS: key admin exists"));
    expect(t.$("[data-testid=secret]").hidden).toBe(true);
  });

  it("revokes a key after a confirm", async () => {
    fill(t.$("[name=key_name]"), "ci");
    submit(t.$("[data-testid=create-key-form]"));
    await vi.waitFor(() => expect(t.page.el.querySelector("tr[data-key=ci]")).not.toBeNull());
    const revoke = () => t.page.el.querySelector<HTMLButtonElement>("tr[data-key=ci] [data-testid=revoke]")!.click();

    t.setAnswer(false);
    revoke();
    expect(t.questions).toHaveLength(1);
    expect(t.questions[0]).toMatch(/^Revoke the API key "ci"\?/);
    expect(t.fake.revoked).toEqual([]);

    t.setAnswer(true);
    revoke();
    await vi.waitFor(() => expect(t.page.el.querySelector("tr[data-key=ci]")).toBeNull());
    expect(t.fake.revoked).toEqual(["ci"]);
    expect(t.$("[data-testid=keys-notice]").textContent).toBe("Revoked the key ci.");
    // The revoked key's secret is no longer shown.
    expect(t.$("[data-testid=secret]").hidden).toBe(true);
  });

  it("shows PERMISSION_DENIED for a key that is not an admin's, and the usage it may see", async () => {
    t.fake.callerIsAdmin = false;
    t.page.show?.([]);
    const error = t.$("[data-testid=keys-error]");
    await vi.waitFor(() => expect(error.hidden).toBe(false));
    expect(error.textContent).toBe("ListKeys: Your key's role does not allow this (PERMISSION_DENIED: role viewer may not manage keys)");
    expect(t.rows("keys-table")).toEqual([]);
    await vi.waitFor(() => expect(t.rows("usage-table")).toHaveLength(1));
  });
});

describe("sign-in", () => {
  it("stores the pasted key for the tab and signs out", () => {
    const storage = new MemoryStorage();
    const keys = new KeyStore(storage);
    const s = new SignIn(keys);
    document.body.replaceChildren(s.el);
    const q = <E extends Element = HTMLElement>(sel: string) => s.el.querySelector(sel) as E;
    expect(s.el.dataset.signedIn).toBe("false");
    expect(q("[data-testid=signin-form]").hidden).toBe(true);
    expect(q("[data-testid=signout]").hidden).toBe(true);

    q<HTMLButtonElement>("[data-testid=signin-open]").click();
    expect(q("[data-testid=signin-form]").hidden).toBe(false);
    expect(q<HTMLInputElement>("[name=api_key]").type).toBe("password");
    q<HTMLInputElement>("[name=api_key]").value = "  dhk_abc ";
    submit(q("[data-testid=signin-form]"));
    expect(keys.get()).toBe("dhk_abc");
    expect(storage.getItem("deephardway.apiKey")).toBe("dhk_abc");
    expect(s.el.dataset.signedIn).toBe("true");
    expect(q("[data-testid=signin-form]").hidden).toBe(true);
    expect(q<HTMLInputElement>("[name=api_key]").value).toBe("");
    expect(q("[data-testid=signin-open]").hidden).toBe(true);
    expect(q("[data-testid=signout]").hidden).toBe(false);

    q<HTMLButtonElement>("[data-testid=signout]").click();
    expect(keys.get()).toBeUndefined();
    expect(storage.getItem("deephardway.apiKey")).toBeNull();
    expect(s.el.dataset.signedIn).toBe("false");
  });

  it("opens the field with the reason when the service asks for a key", () => {
    const keys = new KeyStore(new MemoryStorage());
    const s = new SignIn(keys);
    const msg = s.el.querySelector<HTMLElement>("[data-testid=auth-message]")!;
    expect(msg.hidden).toBe(true);
    s.prompt(SIGN_IN_TEXT);
    expect(msg.hidden).toBe(false);
    expect(msg.textContent).toBe("Sign in with an API key");
    expect(s.el.querySelector<HTMLElement>("[data-testid=signin-form]")!.hidden).toBe(false);
    // Signed in with a key the service then refuses: still signed in, the field opens again.
    keys.set("revoked");
    s.prompt(REFUSED_TEXT);
    expect(msg.textContent).toBe("The API key was refused");
    expect(s.el.querySelector<HTMLElement>("[data-testid=signin-form]")!.hidden).toBe(false);
    const input = s.el.querySelector<HTMLInputElement>("[name=api_key]")!;
    input.value = "new";
    submit(s.el.querySelector("[data-testid=signin-form]")!);
    expect(keys.get()).toBe("new");
    expect(msg.hidden).toBe(true);
  });
});
