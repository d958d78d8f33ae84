// End-to-end test of API keys: starts `deephardway up --auth on` with
// DEEPHARDWAY_ADMIN_KEY (a fresh random admin secret) serving the built client, and
// drives Debian's chromium through playwright-core: without a key the Jobs page asks to
// sign in; the admin key lists jobs (and the Service page draws /metrics with it); the
// Keys page creates a submitter key whose secret is shown once; that key runs a
// diagnostic job (and is refused the Keys page and the Service page's metrics: 403);
// revoking it makes its next call and its open WatchJobs stream say "The API key was
// refused".
// When the binary has --tls-cert / --tls-key, the same runs again over https with a
// throwaway CA (openssl), chromium trusting the server's key by its SPKI hash.
// Screenshots and the server logs go to test-results/. Usage: npm run e2e:auth (after
// npm run build); `npm run e2e` runs it after e2e/run.mjs.
//
// Env: DEEPHARDWAY_BIN, CHROMIUM as for run.mjs; E2E_MODELS_DIR (default /nonexistent:
// diagnostic only, a quick start); E2E_AUTH_REQUIRED=1 fails (instead of skipping)
// when the binary has no --auth flag; E2E_TLS=0 skips the https run.
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { bin, checkPrerequisites, chromiumPath, dist, failWith, freePort, portOpen, results, sleep } from "./support.mjs";

const fail = failWith("e2e-auth");


checkPrerequisites(fail);

// Which of the flags this binary has.
const help = execFileSync(bin, ["up", "--help"], { encoding: "utf8" });
const hasAuth = /--auth\b/.test(help);
const hasTls = /--tls-cert\b/.test(help) && /--tls-key\b/.test(help);
if (!hasAuth) {
  const msg = `${bin} up has no --auth flag: the API key scenario cannot run`;
  if (process.env.E2E_AUTH_REQUIRED === "1") fail(msg);
  console.log(`e2e-auth: skip: ${msg}`);
  process.exit(0);
}




/** A throwaway CA and a server certificate for 127.0.0.1 / localhost it signed; the leaf's SPKI SHA-256 (base64). */
function makeCerts(dir) {
  const p = (f) => join(dir, f);
  const ossl = (...args) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=deephardway e2e CA", "-keyout", p("ca.key"), "-out", p("ca.pem"));
  ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", p("server.key"), "-out", p("server.csr"));
  writeFileSync(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  ossl("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", p("ext.cnf"), "-out", p("server.pem"));
  const leaf = new X509Certificate(readFileSync(p("server.pem")));
  const spki = leaf.publicKey.export({ type: "spki", format: "der" });
  // The chain the server sends: leaf then CA.
  writeFileSync(p("chain.pem"), readFileSync(p("server.pem"), "utf8") + readFileSync(p("ca.pem"), "utf8"));
  return { cert: p("chain.pem"), key: p("server.key"), spkiHash: createHash("sha256").update(spki).digest("base64") };
}

const results_ = [];
let failed = 0;
let current = { server: undefined, browser: undefined, dataDir: undefined };

async function stopServer(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await Promise.race([exited, sleep(5000)]);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill("SIGKILL");
    await exited;
  }
}

async function cleanup() {
  try {
    await current.browser?.close();
  } catch {}
  await stopServer(current.server);
  if (current.dataDir) rmSync(current.dataDir, { recursive: true, force: true });
  current = { server: undefined, browser: undefined, dataDir: undefined };
}
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    await cleanup();
    process.exit(130);
  });
}
process.on("exit", () => {
  if (current.server && current.server.exitCode === null) current.server.kill("SIGKILL");
});

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** One run of the scenario against a fresh server: over http, or https when `tls`. */
async function scenario(tls) {
  const mode = tls ? "https" : "http";
  const pages = [];
  async function step(name, fn) {
    const full = `[${mode}] ${name}`;
    const t0 = Date.now();
    try {
      await fn();
      results_.push(`ok   ${full}`);
      console.log(`ok   ${full} (${Date.now() - t0} ms)`);
    } catch (err) {
      failed++;
      results_.push(`FAIL ${full}: ${err?.message ?? err}`);
      console.error(`FAIL ${full}: ${err?.stack ?? err}`);
      for (const p of pages) {
        try {
          await p.screenshot({ path: join(results, `failure-auth-${mode}-${name.replace(/\W+/g, "-")}-${pages.indexOf(p)}.png`), fullPage: true });
        } catch {}
      }
      throw err; // the steps build on each other
    }
  }

  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "deephardway-e2e-auth-"));
  current.dataDir = dataDir;
  const adminKey = `e2e-admin-${randomBytes(16).toString("hex")}`;
  const args = ["up", "--listen", `127.0.0.1:${port}`, "--device", "cpu", "--data-dir", dataDir, "--web-dir", dist];
  args.push("--models-dir", process.env.E2E_MODELS_DIR || "/nonexistent", "--auth", "on");
  const launchArgs = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"];
  if (tls) {
    const certs = makeCerts(dataDir);
    args.push("--tls-cert", certs.cert, "--tls-key", certs.key);
    // Trust exactly this server's key (the throwaway CA is in no trust store).
    launchArgs.push(`--ignore-certificate-errors-spki-list=${certs.spkiHash}`);
  }
  const logPath = join(results, `server-auth-${mode}.log`);
  console.log(`e2e-auth: starting ${bin} ${args.join(" ")} (log: ${logPath})`);
  const server = spawn(bin, args, {
    stdio: ["ignore", openSync(logPath, "w"), openSync(logPath, "a")],
    env: { ...process.env, DEEPHARDWAY_ADMIN_KEY: adminKey },
  });
  current.server = server;
  const deadline = Date.now() + 180_000;
  while (!(await portOpen(port))) {
    if (server.exitCode !== null || server.signalCode !== null) throw new Error(`server exited before listening; see ${logPath}`);
    if (Date.now() > deadline) throw new Error("server did not listen within 180 s");
    await sleep(200);
  }
  const base = `${mode}://127.0.0.1:${port}`;
  console.log(`e2e-auth: server listening on ${base}`);

  const browser = await chromium.launch({ executablePath: chromiumPath, args: launchArgs });
  current.browser = browser;
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const pageErrors = [];
  async function newTab() {
    const p = await context.newPage();
    p.on("pageerror", (e) => pageErrors.push(String(e)));
    p.on("dialog", (d) => d.accept()); // the revoke confirm
    pages.push(p);
    return p;
  }
  const signIn = async (p, key) => {
    const form = p.locator("[data-testid=signin-form]");
    const open = p.locator("[data-testid=signin-open]");
    // The page opens the form by itself when a call is refused for want of a key, which
    // can happen at any moment after a sign-out (a page's next poll): "Sign in" is then
    // hidden. So click it only while the form is still closed, a second at a time.
    for (let tries = 0; await form.isHidden(); tries++) {
      if (tries === 10) throw new Error("the sign-in form did not open");
      await open.click({ timeout: 1_000 }).catch(() => {});
    }
    await form.locator("[name=api_key]").fill(key);
    await form.locator("[data-testid=signin-submit]").click();
    await p.locator("[data-testid=signin][data-signed-in=true]").waitFor({ timeout: 5_000 });
  };
  const signOut = async (p) => {
    await p.locator("[data-testid=signout]").click();
    await p.locator("[data-testid=signin][data-signed-in=false]").waitFor({ timeout: 5_000 });
  };
  const waitText = (locator, re, timeout = 15_000) =>
    locator.filter({ hasText: re }).first().waitFor({ timeout }).catch(async (e) => {
      throw new Error(`${re} not seen (text: ${JSON.stringify(await locator.allTextContents())}): ${e.message}`);
    });
  async function runDiagnostic(p) {
    await p.goto(`${base}/#/diagnostic`);
    const d = (sel) => p.locator(`#page-diagnostic ${sel}`);
    await d("[name=steps]").fill("3");
    await d("[name=step_ms]").fill("50");
    await d("[data-testid=run]").click();
  }

  const page = await newTab();
  const jobsError = page.locator("#page-jobs .message.error");

  await step("without a key the Jobs page asks to sign in", async () => {
    await page.goto(`${base}/#/jobs`);
    expect(page.url().startsWith(`${mode}://`), `page at ${page.url()}`);
    await waitText(jobsError, /Sign in with an API key/);
    await waitText(page.locator("[data-testid=auth-message]"), /^Sign in with an API key$/);
    expect(await page.locator("[data-testid=signin-form]").isVisible(), "the sign-in field did not open");
    await page.screenshot({ path: join(results, `auth-${mode}-signin.png`), fullPage: true });
  });

  await step("the admin key lists jobs", async () => {
    await signIn(page, adminKey);
    // The live list says nothing until there is a job to show, so wait for the error to go.
    await jobsError.waitFor({ state: "hidden", timeout: 15_000 }).catch(async () => {
      throw new Error(`error still shown: ${await jobsError.textContent()}`);
    });
    expect(await page.locator("[data-testid=auth-message]").isHidden(), "the auth message is still shown");
    expect(await page.locator("[data-testid=signin-form]").isHidden(), "the sign-in field is still open");
    // The key is in this tab's sessionStorage, not in localStorage.
    const stored = await page.evaluate(() => ({ session: sessionStorage.getItem("deephardway.apiKey"), local: localStorage.length }));
    expect(stored.session === adminKey && stored.local === 0, `storage: ${JSON.stringify({ ...stored, session: stored.session && "(set)" })}`);
    // A job run with it shows in the table.
    await runDiagnostic(page);
    const status = page.locator("#page-diagnostic [data-testid=status][data-state=succeeded]");
    await status.waitFor({ timeout: 30_000 });
    const id = await status.getAttribute("data-job-id");
    await page.goto(`${base}/#/jobs`);
    await page.locator(`#page-jobs tr[data-job-id="${id}"] td.state`, { hasText: "succeeded" }).waitFor({ timeout: 15_000 });
    await page.locator("[data-testid=live].ok").waitFor({ timeout: 15_000 });
    // Another tab starts signed out.
    const other = await newTab();
    await other.goto(`${base}/#/jobs`);
    await other.locator("[data-testid=signin][data-signed-in=false]").waitFor({ timeout: 5_000 });
    await other.close();
    pages.splice(pages.indexOf(other), 1);
    // The Service page reads GET /metrics with the same key: an admin's may.
    await page.goto(`${base}/#/service`);
    await page.locator("#page-service [data-testid=summary]").filter({ hasText: /worker/ }).waitFor({ timeout: 10_000 });
    const serviceError = page.locator("#page-service [data-testid=service-error]");
    expect(await serviceError.isHidden(), `service page error: ${await serviceError.textContent()}`);
  });

  let secret = "";
  const keyName = "e2e-submitter";
  await step("the Keys page creates a submitter key and shows its secret once", async () => {
    await page.goto(`${base}/#/keys`);
    const k = (sel) => page.locator(`#page-keys ${sel}`);
    await k("[data-testid=keys-table] tbody tr").first().waitFor({ timeout: 15_000 });
    expect(await k("[data-testid=keys-error]").isHidden(), `keys error: ${await k("[data-testid=keys-error]").textContent()}`);
    await k("[name=key_name]").fill(keyName);
    await k("[name=role]").selectOption("submitter");
    await k("[name=max_active_jobs]").fill("2");
    await k("[data-testid=create-key]").click();
    await k("[data-testid=secret]").waitFor({ timeout: 15_000 });
    secret = ((await k("[data-testid=secret-value]").textContent()) ?? "").trim();
    expect(secret.length >= 16, `secret: ${secret.length} characters`);
    expect(/will not be shown again/.test((await k("[data-testid=secret-warning]").textContent()) ?? ""), "no warning");
    const row = k(`[data-testid=keys-table] tr[data-key="${keyName}"]`);
    await row.waitFor({ timeout: 15_000 });
    const cells = await row.locator("td").allTextContents();
    expect(cells[1] === "submitter" && cells[3] === "2 active jobs", `row: ${cells}`);
    await page.screenshot({ path: join(results, `auth-${mode}-keys.png`), fullPage: true });
    await k("[data-testid=secret-done]").click();
    expect(await k("[data-testid=secret]").isHidden(), "the secret is still shown");
    // Once: neither the page nor a fresh listing shows it again.
    await page.reload();
    await row.waitFor({ timeout: 15_000 });
    const text = await page.locator("body").textContent();
    expect(!text.includes(secret), "the secret is shown again");
  });

  await step("the submitter key runs a diagnostic job and may not manage keys", async () => {
    await signOut(page);
    await signIn(page, secret);
    await runDiagnostic(page);
    await page.locator("#page-diagnostic [data-testid=status][data-state=succeeded]").waitFor({ timeout: 30_000 });
    await page.goto(`${base}/#/keys`);
    await waitText(page.locator("#page-keys [data-testid=keys-error]"), /Your key's role does not allow this/);
    // Nor may it read the metrics: the Service page says so instead of drawing them.
    await page.goto(`${base}/#/service`);
    await waitText(page.locator("#page-service [data-testid=service-error]"), /^Your key's role does not allow this \(HTTP 403/);
    expect(await page.locator("#page-service [data-testid=workers]").isHidden(), "the Service page is drawn for a submitter key");
  });

  await step("revoking the key makes its next call and its stream refused", async () => {
    // A second tab with the same key watches the jobs table.
    const watcher = await newTab();
    await watcher.goto(`${base}/#/jobs`);
    await signIn(watcher, secret);
    await watcher.locator("[data-testid=live].ok").waitFor({ timeout: 15_000 });
    // The admin revokes it from a third tab.
    const admin = await newTab();
    await admin.goto(`${base}/#/keys`);
    await signIn(admin, adminKey);
    const row = admin.locator(`#page-keys [data-testid=keys-table] tr[data-key="${keyName}"]`);
    await row.locator("[data-testid=revoke]").click();
    await row.waitFor({ state: "detached", timeout: 15_000 });
    // The next call with it (replicas refuse it "within seconds": try a few times).
    const err = page.locator("#page-diagnostic .message.error");
    const deadline = Date.now() + 20_000;
    for (;;) {
      await runDiagnostic(page);
      await page
        .locator("#page-diagnostic [data-testid=status][data-state=succeeded], #page-diagnostic .message.error:not([hidden])")
        .first()
        .waitFor({ timeout: 30_000 });
      if (await err.isVisible()) break;
      if (Date.now() > deadline) throw new Error("the revoked key still submits jobs");
      await sleep(1000);
    }
    await waitText(err, /^The API key was refused/);
    await waitText(page.locator("[data-testid=auth-message]"), /^The API key was refused$/);
    await page.screenshot({ path: join(results, `auth-${mode}-refused.png`), fullPage: true });
    // The open WatchJobs stream ends with UNAUTHENTICATED too.
    await waitText(watcher.locator("#page-jobs .message.error"), /^WatchJobs: The API key was refused/, 30_000);
    await waitText(watcher.locator("[data-testid=auth-message]"), /^The API key was refused$/);
  });

  await step("no uncaught page errors", async () => {
    expect(pageErrors.length === 0, pageErrors.join("\n"));
  });
  await cleanup();
}

try {
  await scenario(false);
  if (!hasTls) console.log(`e2e-auth: skip https: ${bin} up has no --tls-cert / --tls-key`);
  else if (process.env.E2E_TLS === "0") console.log("e2e-auth: skip https: E2E_TLS=0");
  else await scenario(true);
} catch (err) {
  if (!results_.some((r) => r.startsWith("FAIL"))) {
    failed++;
    console.error(`e2e-auth: ${err?.stack ?? err}`);
  }
} finally {
  await cleanup();
}
console.log(`\ne2e-auth: ${results_.filter((r) => r.startsWith("ok")).length} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
