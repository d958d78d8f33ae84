import { defineConfig } from "vitest/config";

// `npm run dev` serves the client with hot reload and proxies the grpc-web calls
// (/deephardway.v1.*) and GET /metrics (the Service page) to a running service:
// DEEPHARDWAY_URL, default http://127.0.0.1:50051.
const target = process.env.DEEPHARDWAY_URL ?? "http://127.0.0.1:50051";

export default defineConfig({
  build: { target: "es2022", sourcemap: true },
  server: {
    proxy: { "^/deephardway\\.v1\\.": { target, changeOrigin: true }, "^/metrics$": { target, changeOrigin: true } },
  },
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
