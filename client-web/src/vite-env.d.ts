/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The service's URL, when it is not the page's own origin (development). */
  readonly VITE_DEEPHARDWAY_URL?: string;
}
