// What both end-to-end scripts (run.mjs, auth.mjs) need: where the built client, the
// deephardway binary and chromium are, their checks, and free ports.
import { createServer, connect } from "node:net";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, "..");
export const dist = join(root, "dist");
export const results = join(root, "test-results");
export const bin =
  process.env.DEEPHARDWAY_BIN ||
  (process.env.CARGO_TARGET_DIR
    ? join(resolve(process.env.CARGO_TARGET_DIR), "debug", "deephardway")
    : resolve(root, "..", "target", "debug", "deephardway"));
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

/** Exits with `msg`, prefixed with the script's name. */
export function failWith(prefix) {
  return (msg) => {
    console.error(`${prefix}: ${msg}`);
    process.exit(1);
  };
}

/** Fails unless the built client, the binary and chromium are there; makes test-results/. */
export function checkPrerequisites(fail) {
  if (!existsSync(join(dist, "index.html"))) fail(`${dist}/index.html is missing: run npm run build first`);
  if (!existsSync(bin)) fail(`deephardway binary not found at ${bin} (set DEEPHARDWAY_BIN)`);
  if (!existsSync(chromiumPath)) fail(`chromium not found at ${chromiumPath} (apt-get install -y chromium)`);
  mkdirSync(results, { recursive: true });
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

export function portOpen(port) {
  return new Promise((res) => {
    const c = connect({ port, host: "127.0.0.1" }, () => {
      c.end();
      res(true);
    });
    c.on("error", () => res(false));
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
