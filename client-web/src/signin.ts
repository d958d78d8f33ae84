// The header's sign-in: a field to paste an API key ("Sign in") and "Sign out". The key
// is kept by the KeyStore (sessionStorage: it ends with the tab) and sent by the
// transport's interceptor (lib/auth.ts); an UNAUTHENTICATED answer opens the field with
// "Sign in with an API key" or "The API key was refused" (prompt()).
import type { KeyStore } from "./lib/auth.js";
import { h } from "./ui.js";

export class SignIn {
  readonly el: HTMLElement;
  private status = h("span", { class: "signin-status", "data-testid": "signin-status" });
  private open = h("button", { type: "button", class: "small", "data-testid": "signin-open" }, "Sign in");
  private signOut = h("button", { type: "button", class: "small", "data-testid": "signout" }, "Sign out");
  private input = h("input", {
    type: "password",
    name: "api_key",
    placeholder: "paste an API key",
    autocomplete: "off",
    spellcheck: "false",
    "aria-label": "API key",
  });
  private form: HTMLFormElement;
  private message = h("span", { class: "auth-message", role: "alert", "data-testid": "auth-message", hidden: true });

  constructor(private keys: KeyStore) {
    const cancel = h("button", { type: "button", class: "small", "data-testid": "signin-cancel" }, "Cancel");
    this.form = h(
      "form",
      { class: "signin-form", "data-testid": "signin-form", hidden: true },
      this.input,
      h("button", { type: "submit", class: "small primary", "data-testid": "signin-submit" }, "Sign in"),
      cancel,
    );
    this.el = h("div", { class: "signin", "data-testid": "signin" }, this.message, this.status, this.open, this.signOut, this.form);

    this.open.addEventListener("click", () => this.show(true));
    cancel.addEventListener("click", () => this.show(false));
    this.signOut.addEventListener("click", () => {
      this.hideMessage();
      this.keys.clear();
    });
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const key = this.input.value;
      this.input.value = "";
      if (!key.trim()) return this.input.focus();
      this.hideMessage();
      this.show(false);
      this.keys.set(key);
    });
    keys.subscribe(() => this.render());
    this.render();
  }

  /** Opens the field with a message ("Sign in with an API key", "The API key was refused"). */
  prompt(text: string) {
    this.message.textContent = text;
    this.message.hidden = false;
    if (this.form.hidden) this.show(true);
  }

  private hideMessage() {
    this.message.textContent = "";
    this.message.hidden = true;
  }

  private show(open: boolean) {
    this.form.hidden = !open;
    this.render();
    if (open) this.input.focus();
    else this.input.value = "";
  }

  private render() {
    const signedIn = this.keys.get() !== undefined;
    this.el.dataset.signedIn = String(signedIn);
    this.status.textContent = signedIn ? "signed in with an API key" : "not signed in";
    this.open.hidden = !this.form.hidden || signedIn;
    this.signOut.hidden = !signedIn;
  }
}
