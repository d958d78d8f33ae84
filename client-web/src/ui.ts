// A tiny DOM helper: h("div", { class: "x", onclick: fn }, "text", child).
import { enumFromToken, enumToken, type EnumObject } from "./lib/enums.js";
type Child = Node | string | number | null | undefined | false;
type Props = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props?: Props | null,
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value as EventListener);
      } else if (key === "class") {
        el.className = String(value);
      } else if (key === "text") {
        el.textContent = String(value);
      } else if (key === "value") {
        (el as HTMLInputElement).value = String(value);
      } else if (key === "style" && typeof value === "object") {
        Object.assign(el.style, value);
      } else if (value === true) {
        el.setAttribute(key, "");
      } else {
        el.setAttribute(key, String(value));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]) {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function setChildren(el: Element, ...children: (Child | Child[])[]) {
  el.replaceChildren();
  append(el, children);
}

/** A labelled form field. */
export function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input, hint ? h("small", null, hint) : null);
}

/** A progress bar whose fraction can be set later. */
export function progressBar(): { el: HTMLElement; set(fraction: number, text?: string): void } {
  const fill = h("div", { class: "fill" });
  const label = h("span", { class: "text" }, "0%");
  const el = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill, label);
  return {
    el,
    set(fraction: number, text?: string) {
      const f = Math.min(1, Math.max(0, fraction || 0));
      fill.style.width = `${(f * 100).toFixed(2)}%`;
      el.setAttribute("aria-valuenow", (f * 100).toFixed(0));
      label.textContent = text ?? `${(f * 100).toFixed(f === 1 || f === 0 ? 0 : 1)}%`;
    },
  };
}

/** A message box for errors and notices; hidden when empty. */
export function messageBox(kind: "error" | "info" = "error") {
  const el = h("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status", hidden: true });
  return {
    el,
    show(text: string) {
      el.textContent = text;
      el.hidden = false;
    },
    clear() {
      el.textContent = "";
      el.hidden = true;
    },
  };
}

/**
 * A <select> of enum values: each option's value is the value's form token
 * (Architecture.CNN -> "cnn"), its text the label given. `get` returns the chosen
 * value (the first option's when the select holds something else).
 */
export function enumSelect<E extends number>(
  name: string,
  e: EnumObject,
  options: [E, string][],
): { el: HTMLSelectElement; get(): E; set(value: E): void } {
  const el = h("select", { name }, options.map(([value, text]) => h("option", { value: enumToken(e, value) }, text)));
  return {
    el,
    get: () => enumFromToken<E>(e, el.value) ?? options[0][0],
    set: (value: E) => {
      el.value = enumToken(e, value);
    },
  };
}
