// The app shell: tabs with hash routes (#/diagnostic, #/generate, #/embed, #/train,
// #/classify[/model], #/jobs[/id], #/keys, #/service), and the header's sign-in. Each
// page is its own module; adding one means adding a factory to PAGES.
import "./style.css";
import { Code } from "@connectrpc/connect";
import { createApi, serviceBaseUrl } from "./api.js";
import { authInterceptor, KeyStore, REFUSED_TEXT, SIGN_IN_TEXT, type StorageLike } from "./lib/auth.js";
import { metricsFetcher } from "./lib/metricsFetch.js";
import { SignIn } from "./signin.js";
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
import { keysPage } from "./pages/keys/index.js";
import { servicePage } from "./pages/service/index.js";

const PAGES: PageFactory[] = [diagnosticPage, generatePage, embedPage, trainPage, classifyPage, jobsPage, keysPage, servicePage];

/** The tab's sessionStorage (the API key must not outlive the tab), if the browser lets us use it. */
function tabStorage(): StorageLike | undefined {
  try {
    return window.sessionStorage;
  } catch {
    return undefined;
  }
}

function start() {
  const keys = new KeyStore(tabStorage());
  const signIn = new SignIn(keys);
  const api = createApi({
    interceptors: [
      authInterceptor({
        key: () => keys.get(),
        onAuthError(err, key) {
          // Not for a call made with a key the user has since replaced.
          if (err.code === Code.Unauthenticated && key === keys.get()) signIn.prompt(key ? REFUSED_TEXT : SIGN_IN_TEXT);
        },
      }),
    ],
  });
  // GET /metrics is plain HTTP, not grpc-web: the same key, attached by the fetcher.
  const metrics = metricsFetcher({
    baseUrl: serviceBaseUrl(),
    key: () => keys.get(),
    onAuthError(status, key) {
      if (status === 401 && key === keys.get()) signIn.prompt(key ? REFUSED_TEXT : SIGN_IN_TEXT);
    },
  });
  const bannerEl = h("div", { class: "banner", role: "alert", "data-testid": "connection" });
  const ctx: AppContext = { api, models: new ModelsStore(api.models), banner: new ConnectionBanner(bannerEl), metrics };
  const pages: Page[] = PAGES.map((make) => make(ctx));
  const tabs = pages.map((p) => h("a", { href: `#/${p.id}`, class: "tab", "data-page": p.id }, p.title));
  const main = h("main", null, pages.map((p) => p.el));
  document.body.replaceChildren(
    h("header", null, h("h1", null, "deephardway"), h("nav", null, tabs), signIn.el),
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

  // Another key sees other jobs, models and datasets: show the current page afresh
  // (its streams restart with the new key).
  keys.subscribe(() => {
    ctx.models.reset();
    current?.hide?.();
    current = undefined;
    route();
  });
}

start();
