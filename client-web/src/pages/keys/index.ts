// Keys: the API keys (KeyService.ListKeys) with Revoke (RevokeKey, after a confirm), the
// form that creates one (CreateKey; form.ts shows its secret once), and what every key
// has used (UsageService.ListUsage). Shown to everyone: the service decides, and a key
// whose role may not manage keys reads "Your key's role does not allow this".
import type { AppContext, Page } from "../../page.js";
import type { Key, Usage } from "../../gen/deephardway/v1/access_pb.js";
import { field, h, messageBox, setChildren } from "../../ui.js";
import { errorText } from "../../lib/format.js";
import { KEY_COLUMNS, USAGE_COLUMNS, keyCells, revokeQuestion, usageCells } from "../../lib/keys.js";
import { createKeyForm } from "./form.js";

/** The usage table's columns holding numbers (right-aligned). */
const USAGE_NUMERIC_FROM = 3;

export interface KeysPageOptions {
  /** Asks before revoking; window.confirm by default. */
  confirm?(question: string): boolean;
}

export function keysPage(ctx: AppContext, opts: KeysPageOptions = {}): Page {
  const ask = opts.confirm ?? ((q: string) => window.confirm(q));
  const tenant = h("input", { type: "text", name: "tenant_filter", placeholder: "all tenants" });
  const refreshButton = h("button", { type: "button", "data-testid": "refresh" }, "Refresh");
  const keysError = messageBox();
  keysError.el.dataset.testid = "keys-error";
  const usageError = messageBox();
  usageError.el.dataset.testid = "usage-error";
  const notice = messageBox("info");
  notice.el.dataset.testid = "keys-notice";

  const keysBody = h("tbody");
  const keysTable = h(
    "table",
    { class: "keys", "data-testid": "keys-table" },
    h("thead", null, h("tr", null, [...KEY_COLUMNS, ""].map((t) => h("th", null, t)))),
    keysBody,
  );
  const usageBody = h("tbody");
  const usageTable = h(
    "table",
    { class: "usage", "data-testid": "usage-table" },
    h("thead", null, h("tr", null, USAGE_COLUMNS.map((t) => h("th", null, t)))),
    usageBody,
  );

  const create = createKeyForm(ctx, {
    onCreated: (key) => {
      notice.clear();
      void refresh(key.name);
    },
  });

  function keyRow(k: Key): HTMLTableRowElement {
    const cells = keyCells(k);
    return h(
      "tr",
      { "data-key": k.name },
      cells.map((c, i) => h("td", { class: i === 0 ? "mono" : undefined }, c)),
      h("td", { class: "buttons" }, h("button", { type: "button", class: "small", "data-testid": "revoke", onclick: () => revoke(k.name) }, "Revoke")),
    );
  }

  function usageRow(u: Usage): HTMLTableRowElement {
    return h(
      "tr",
      { "data-tenant": u.tenant, "data-key": u.key },
      usageCells(u).map((c, i) => h("td", { class: i >= USAGE_NUMERIC_FROM ? "num" : i === 1 ? "mono" : undefined }, c)),
    );
  }

  async function revoke(name: string) {
    if (!ask(revokeQuestion(name))) return;
    keysError.clear();
    notice.clear();
    try {
      await ctx.api.keys.revokeKey({ name });
      notice.show(`Revoked the key ${name}.`);
      create.forget(name);
    } catch (err) {
      keysError.show(`Revoke ${name}: ${errorText(err)}`);
    }
    await refresh();
  }

  let generation = 0;
  async function refresh(highlight?: string) {
    const gen = ++generation;
    const t = tenant.value.trim();
    refreshButton.disabled = true;
    const keys = ctx.api.keys
      .listKeys({ tenant: t })
      .then((r) => {
        if (gen !== generation) return;
        keysError.clear();
        setChildren(
          keysBody,
          r.keys.length ? r.keys.map(keyRow) : h("tr", null, h("td", { colspan: KEY_COLUMNS.length + 1, class: "empty" }, "No keys.")),
        );
        for (const tr of keysBody.querySelectorAll("tr")) if (highlight && tr.dataset.key === highlight) tr.classList.add("new");
      })
      .catch((err) => {
        if (gen !== generation) return;
        setChildren(keysBody);
        keysError.show(`ListKeys: ${errorText(err)}`);
      });
    const usage = ctx.api.usage
      .listUsage({ tenant: t })
      .then((r) => {
        if (gen !== generation) return;
        usageError.clear();
        setChildren(
          usageBody,
          r.usage.length ? r.usage.map(usageRow) : h("tr", null, h("td", { colspan: USAGE_COLUMNS.length, class: "empty" }, "Nothing used yet.")),
        );
      })
      .catch((err) => {
        if (gen !== generation) return;
        setChildren(usageBody);
        usageError.show(`ListUsage: ${errorText(err)}`);
      });
    await Promise.all([keys, usage]);
    if (gen === generation) refreshButton.disabled = false;
  }

  refreshButton.addEventListener("click", () => void refresh());
  tenant.addEventListener("change", () => void refresh());

  const el = h(
    "section",
    { class: "page", id: "page-keys" },
    h("h2", null, "API keys"),
    h(
      "p",
      { class: "hint" },
      "Clients send a key as authorization: Bearer <secret>. Managing keys needs an admin key; a key's role says what it may do, its tenant whose jobs and data it sees.",
    ),
    create.el,
    h("h3", null, "Keys"),
    h("div", { class: "row filter" }, field("Tenant", tenant, "empty: every tenant"), h("div", { class: "actions" }, refreshButton)),
    keysError.el,
    notice.el,
    h("div", { class: "scroll" }, keysTable),
    h("h3", null, "Usage"),
    usageError.el,
    h("div", { class: "scroll" }, usageTable),
  );

  return {
    id: "keys",
    title: "Keys",
    el,
    show() {
      void refresh();
    },
    hide() {
      // Another key may be signed in next: the secret shown stays only while the page does.
      create.forget();
    },
  };
}
