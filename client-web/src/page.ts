// What every page module exports, and what it gets from the app.
import type { Api } from "./api.js";
import type { ConnectionBanner } from "./connection.js";
import type { ModelsStore } from "./models.js";
import type { MetricsFetcher } from "./lib/metricsFetch.js";

export interface AppContext {
  api: Api;
  models: ModelsStore;
  banner: ConnectionBanner;
  /** GET /metrics with the tab's key (the Service page). */
  metrics: MetricsFetcher;
}

export interface Page {
  /** The hash route, e.g. "diagnostic" for #/diagnostic. */
  readonly id: string;
  /** The tab's title. */
  readonly title: string;
  readonly el: HTMLElement;
  /** Called when the page is shown; `args` are the route's further segments. */
  show?(args: string[]): void;
  hide?(): void;
}

export type PageFactory = (ctx: AppContext) => Page;
