// The app shell: tabs with hash routes (#/diagnostic, #/generate, #/embed, #/train,
// #/classify[/model], #/jobs[/id]). Each page is its own module; adding one means adding
// a factory to PAGES.
import "./style.css";
import { createApi } from "./api.js";
import { ConnectionBanner } from "./connection.js";
import { ModelsStore } from "./models.js";
import type { AppContext, Page, PageFactory } from "./page.js";
import { h } from "./ui.js";
import { diagnosticPage } from "./pages/diagnostic.js";
import { generatePage } from "./pages/generate.js";
import { embedPage } from "./pages/embed.js";
import { trainPage } from "./pages/train/index.js";
import { classifyPage } from "./pages/classify/index.js";
import { jobsPage } from "./pages/jobs/index.js";

const PAGES: PageFactory[] = [diagnosticPage, generatePage, embedPage, trainPage, classifyPage, jobsPage];

function start() {
  const api = createApi();
  const bannerEl = h("div", { class: "banner", role: "alert", "data-testid": "connection" });
  const ctx: AppContext = { api, models: new ModelsStore(api.models), banner: new ConnectionBanner(bannerEl) };
  const pages: Page[] = PAGES.map((make) => make(ctx));
  const tabs = pages.map((p) => h("a", { href: `#/${p.id}`, class: "tab", "data-page": p.id }, p.title));
  const main = h("main", null, pages.map((p) => p.el));
  document.body.replaceChildren(
    h("header", null, h("h1", null, "deephardway"), h("nav", null, tabs)),
    bannerEl,
    main,
  );

  let current: Page | undefined;
  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    const page = pages.find((p) => p.id === parts[0]) ?? pages[0];
    if (current && current !== page) current.hide?.();
    for (const p of pages) p.el.hidden = p !== page;
    for (const t of tabs) t.classList.toggle("active", t.dataset.page === page.id);
    current = page;
    page.show?.(parts.slice(1));
    document.title = `${page.title} · deephardway`;
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
