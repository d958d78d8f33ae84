// The Keys page's create form (KeyService.CreateKey): name, role, tenant and quota, and
// the new key's secret, shown once with a Copy button and a warning that it will not be
// shown again. The secret leaves the page on "Done", on the next creation, when the key
// is revoked and when the page is left.
import type { AppContext } from "../../page.js";
import { Role, type Key } from "../../gen/deephardway/v1/access_pb.js";
import { enumSelect, field, h, messageBox, setChildren } from "../../ui.js";
import { errorText } from "../../lib/format.js";
import { createKeyRequest, keyRoleName, ROLE_OPTIONS, SECRET_WARNING } from "../../lib/keys.js";

export interface CreateKeyForm {
  el: HTMLElement;
  /** Removes the secret shown (of the key `name` only, when given). */
  forget(name?: string): void;
}

export function createKeyForm(ctx: Pick<AppContext, "api">, opts: { onCreated(key: Key): void }): CreateKeyForm {
  const name = h("input", { type: "text", name: "key_name", placeholder: "e.g. ci-submitter", autocomplete: "off" });
  const role = enumSelect<Role>("role", Role, ROLE_OPTIONS);
  const tenant = h("input", { type: "text", name: "tenant", placeholder: "default", autocomplete: "off" });
  const maxActive = h("input", { type: "number", name: "max_active_jobs", min: 0, placeholder: "no limit" });
  const maxRunning = h("input", { type: "number", name: "max_running_jobs", min: 0, placeholder: "no limit" });
  const rate = h("input", { type: "number", name: "submits_per_second", min: 0, step: "any", placeholder: "no limit" });
  const burst = h("input", { type: "number", name: "submit_burst", min: 0, placeholder: "1 s worth" });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "create-key" }, "Create key");
  const error = messageBox();
  error.el.dataset.testid = "create-error";

  const secretValue = h("code", { class: "secret-value", "data-testid": "secret-value" });
  const copied = h("span", { class: "copied", "data-testid": "copied" });
  const copy = h("button", { type: "button", class: "small", "data-testid": "copy-secret" }, "Copy");
  const done = h("button", { type: "button", class: "small", "data-testid": "secret-done" }, "Done");
  const secretTitle = h("div", { class: "secret-title" });
  const secretBox = h(
    "div",
    { class: "secret", "data-testid": "secret", hidden: true },
    secretTitle,
    h("div", { class: "secret-line" }, secretValue, copy, copied),
    h("p", { class: "warning", "data-testid": "secret-warning" }, SECRET_WARNING),
    done,
  );

  const form = h(
    "form",
    { class: "form", novalidate: true, "data-testid": "create-key-form" },
    h("h3", null, "Create a key"),
    h("div", { class: "row" }, field("Name", name, "letters, digits and ._-"), field("Role", role.el), field("Tenant", tenant, "empty: default")),
    h(
      "div",
      { class: "row" },
      field("Max active jobs", maxActive, "queued or running at once; 0 or empty: no limit"),
      field("Max running jobs", maxRunning, "running at once; more wait in line; 0 or empty: no limit"),
      field("Submits / s", rate, "0 or empty: no limit"),
      field("Burst", burst, "submissions at once above the rate"),
    ),
    h("div", { class: "actions" }, submit),
    error.el,
    secretBox,
  );

  function forget(keyName?: string) {
    if (keyName !== undefined && secretBox.dataset.key !== keyName) return;
    secretValue.textContent = "";
    copied.textContent = "";
    setChildren(secretTitle);
    delete secretBox.dataset.key;
    secretBox.hidden = true;
  }

  copy.addEventListener("click", async () => {
    const secret = secretValue.textContent ?? "";
    try {
      await navigator.clipboard.writeText(secret);
      copied.textContent = "copied";
    } catch {
      // No clipboard (http, permissions): select it for Ctrl+C.
      const range = document.createRange();
      range.selectNodeContents(secretValue);
      const sel = window.getSelection();
      sel?.removeAllRanges();
      sel?.addRange(range);
      copied.textContent = "selected: press Ctrl+C";
    }
  });
  done.addEventListener("click", () => forget());

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.clear();
    forget();
    let req;
    try {
      req = createKeyRequest({
        name: name.value,
        role: role.get(),
        tenant: tenant.value,
        maxActiveJobs: maxActive.value,
        maxRunningJobs: maxRunning.value,
        submitsPerSecond: rate.value,
        submitBurst: burst.value,
      });
    } catch (err) {
      error.show(`Invalid parameters: ${errorText(err)}`);
      return;
    }
    submit.disabled = true;
    try {
      const r = await ctx.api.keys.createKey(req);
      const key = r.key;
      if (!key || !r.secret) throw new Error("CreateKey returned no key or secret");
      setChildren(
        secretTitle,
        "New key ",
        h("strong", { class: "mono" }, key.name),
        ` (${keyRoleName(key.role)}, tenant ${key.tenant || "default"}): its secret`,
      );
      secretValue.textContent = r.secret;
      secretBox.dataset.key = key.name;
      secretBox.hidden = false;
      name.value = "";
      opts.onCreated(key);
    } catch (err) {
      error.show(`CreateKey: ${errorText(err)}`);
    } finally {
      submit.disabled = false;
    }
  });

  return { el: form, forget };
}
