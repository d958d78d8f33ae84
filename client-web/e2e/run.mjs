// End-to-end test: starts the real `deephardway up` serving the built client (dist/),
// drives Debian's chromium through playwright-core, and checks the pages against the
// live service. Screenshots go to test-results/. Usage: npm run e2e (after npm run build).
//
// Env: DEEPHARDWAY_BIN (default $CARGO_TARGET_DIR/debug/deephardway or
// ../target/debug/deephardway), CHROMIUM (default /usr/bin/chromium),
// E2E_MODELS_DIR (passed as --models-dir when set, e.g. /nonexistent for diagnostic only),
// DEEPHARDWAY_DATASETS (the test datasets, default ../../shared/datasets; without them
// the train and classify steps are skipped).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { bin, checkPrerequisites, chromiumPath, dist, failWith, freePort, portOpen, results, root, sleep } from "./support.mjs";

const fail = failWith("e2e");

const datasetsDir = resolve(process.env.DEEPHARDWAY_DATASETS || resolve(root, "..", "..", "shared", "datasets"));

checkPrerequisites(fail);





// --- the server ---
const port = await freePort();
const dataDir = mkdtempSync(join(tmpdir(), "deephardway-e2e-"));
const args = ["up", "--listen", `127.0.0.1:${port}`, "--device", "cpu", "--data-dir", dataDir, "--web-dir", dist, "--worker-lease-s", "2", "--artifact-cache", join(dataDir, "artifact-cache")];
if (process.env.E2E_MODELS_DIR) args.push("--models-dir", process.env.E2E_MODELS_DIR);
const logPath = join(results, "server.log");
const logFd = openSync(logPath, "w");
let server;
let serverExited = true;
let stopping = false;
let browser;

function startServer() {
  console.log(`e2e: starting ${bin} ${args.join(" ")} (log: ${logPath})`);
  const child = spawn(bin, args, { stdio: ["ignore", logFd, logFd] });
  serverExited = false;
  child.on("exit", (code, signal) => {
    if (child !== server) return;
    serverExited = true;
    if (!stopping && !child.stoppedByUs) console.error(`e2e: server exited (code ${code}, signal ${signal}); see ${logPath}`);
  });
  server = child;
}

async function waitForPort(timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(await portOpen(port))) {
    if (serverExited) throw new Error("server exited before listening");
    if (Date.now() > deadline) throw new Error(`server did not listen within ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

async function stopServer(signal = "SIGTERM") {
  if (!server || serverExited) return;
  const child = server;
  const exited = new Promise((r) => child.once("exit", r));
  child.stoppedByUs = true;
  child.kill(signal);
  await Promise.race([exited, sleep(5000)]);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill("SIGKILL");
    await exited;
  }
  serverExited = true;
}

async function cleanup() {
  stopping = true;
  try {
    await browser?.close();
  } catch {}
  await stopServer();
  rmSync(dataDir, { recursive: true, force: true });
}
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    await cleanup();
    process.exit(130);
  });
}
process.on("exit", () => {
  if (server && !serverExited) server.kill("SIGKILL");
});
startServer();

const base = `http://127.0.0.1:${port}`;
const results_ = [];
let failed = 0;

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results_.push(`ok   ${name} (${Date.now() - t0} ms)`);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (err) {
    failed++;
    results_.push(`FAIL ${name}: ${err?.message ?? err}`);
    console.error(`FAIL ${name}: ${err?.stack ?? err}`);
    for (const p of pages) {
      try {
        await p.screenshot({ path: join(results, `failure-${name.replace(/\W+/g, "-")}-${pages.indexOf(p)}.png`), fullPage: true });
      } catch {}
    }
  }
}

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

const pages = [];
try {
  await waitForPort(180_000);
  console.log(`e2e: server listening on ${base}`);

  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  pages.push(page);
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  const diag = (sel) => page.locator(`#page-diagnostic ${sel}`);
  const diagState = (state) => diag(`[data-testid=status][data-state=${state}]`).waitFor({ timeout: 15_000 });
  async function runDiagnostic(steps, stepMs) {
    await page.goto(`${base}/#/diagnostic`);
    await diag("[name=steps]").fill(String(steps));
    await diag("[name=step_ms]").fill(String(stepMs));
    await diag("[data-testid=run]").click();
  }

  await step("diagnostic job reaches 100%", async () => {
    await runDiagnostic(5, 100);
    await diagState("succeeded");
    await diag("[role=progressbar][aria-valuenow='100']").waitFor({ timeout: 30_000 });
    await page.waitForFunction(() => document.querySelector("#page-diagnostic [data-testid=result]")?.textContent?.includes("Succeeded: 5 steps"), null, { timeout: 30_000 });
    expect(await diag(".message.error").isHidden(), "no error expected");
    await page.screenshot({ path: join(results, "diagnostic.png"), fullPage: true });
  });

  await step("invalid request shows the service's error", async () => {
    await runDiagnostic(0, 100);
    const err = diag(".message.error");
    await err.waitFor({ state: "visible", timeout: 15_000 });
    const text = await err.textContent();
    expect(/^INVALID_ARGUMENT: .*diagnostic\.steps/.test(text ?? ""), `unexpected error text: ${text}`);
    await page.screenshot({ path: join(results, "diagnostic-error.png"), fullPage: true });
  });

  await step("a failing job shows its failure", async () => {
    await page.goto(`${base}/#/diagnostic`);
    await diag("[name=fail_at_step]").fill("2");
    await runDiagnostic(5, 50);
    await diagState("failed");
    const text = await diag(".message.error").textContent();
    expect(/^INTERNAL: \S/.test(text ?? ""), `unexpected failure text: ${text}`);
    await diag("[name=fail_at_step]").fill("0");
  });

  // The worker announces all its models at once, so after a diagnostic job has run
  // ModelService.ListModels is complete: read it through the pages' model dropdowns.
  const modelOptions = async (pageId) => {
    await page.goto(`${base}/#/${pageId}`);
    const sel = page.locator(`#page-${pageId} select[name=model] option`);
    await sel.first().waitFor({ state: "attached", timeout: 15_000 });
    return sel.evaluateAll((os) => os.map((o) => o.value).filter(Boolean));
  };
  const models = await modelOptions("generate");
  const embedModels = await modelOptions("embed");
  const hasGenerate = models.length > 0;
  const hasEmbed = embedModels.length > 0;
  console.log(`e2e: generate models: ${models.join(", ") || "none"}; embed models: ${embedModels.join(", ") || "none"}`);

  // A second tab shows the jobs table while the first runs jobs.
  const jobsPage = await context.newPage();
  pages.push(jobsPage);
  jobsPage.on("pageerror", (e) => consoleErrors.push(String(e)));
  await jobsPage.goto(`${base}/#/jobs`);
  await jobsPage.locator("[data-testid=live].ok").waitFor({ timeout: 15_000 });

  async function newRunningJobId() {
    const status = diag("[data-testid=status][data-state=running]");
    await status.waitFor({ timeout: 15_000 });
    return await status.getAttribute("data-job-id");
  }

  await step("jobs table updates live while a job runs", async () => {
    await runDiagnostic(20, 250);
    const id = await newRunningJobId();
    const row = jobsPage.locator(`tr[data-job-id="${id}"]`);
    await row.waitFor({ timeout: 10_000 });
    const seen = new Set();
    const states = new Set();
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const v = await row.locator("[role=progressbar]").getAttribute("aria-valuenow");
      seen.add(v);
      states.add(await row.locator("td.state").textContent());
      if (states.has("succeeded")) break;
      await sleep(150);
    }
    expect(states.has("running"), `never saw the job running: ${[...states]}`);
    expect(states.has("succeeded"), `never saw the job succeed: ${[...states]}`);
    const values = [...seen].map(Number).filter((n) => n > 0 && n < 100);
    expect(values.length >= 2, `progress did not move through the table: ${[...seen]}`);
    expect(Number(await row.locator("[role=progressbar]").getAttribute("aria-valuenow")) === 100, "final progress not 100");
  });

  await step("cancel a running job from the jobs table", async () => {
    await runDiagnostic(1000, 1000);
    const id = await newRunningJobId();
    const row = jobsPage.locator(`tr[data-job-id="${id}"]`);
    await row.locator("td.state", { hasText: "running" }).waitFor({ timeout: 15_000 });
    await jobsPage.screenshot({ path: join(results, "jobs.png"), fullPage: true });
    await row.locator("[data-testid=cancel]").click();
    await row.locator("td.state", { hasText: /^cancelled$/ }).waitFor({ timeout: 15_000 });
    // The page that submitted it sees it cancelled too.
    await diagState("cancelled");
    // Detail view replays the full event log (WatchJob) and shows the job (GetJob).
    await row.locator("a").first().click();
    const log = jobsPage.locator("[data-testid=event-log]");
    await log.locator("tr.ev-cancelled").waitFor({ timeout: 15_000 });
    expect((await log.locator("tr.ev-queued").count()) === 1, "event log lacks the queued event");
    expect((await log.locator("tr.ev-started").count()) === 1, "event log lacks the started event");
    await jobsPage.locator("[data-testid=detail] dl.kv dd", { hasText: /^cancelled/ }).first().waitFor({ timeout: 15_000 });
    await jobsPage.screenshot({ path: join(results, "jobs-detail.png"), fullPage: true });
  });

  await step("cancel from the diagnostic page", async () => {
    await runDiagnostic(1000, 1000);
    await newRunningJobId();
    await diag("[data-testid=cancel]").click();
    await diagState("cancelled");
    expect(/^Cancelled/.test(await diag("[data-testid=result]").textContent()), "no cancelled result shown");
  });

  await step("the service page draws the cluster from /metrics", async () => {
    // Its 2 s polls run on timers: keep its tab in front (the jobs tab opened last).
    await page.bringToFront();
    // A job running meanwhile gives the queue a bar to draw.
    await runDiagnostic(40, 200);
    const id = await newRunningJobId();
    await page.goto(`${base}/#/service`);
    const sv = (sel) => page.locator(`#page-service ${sel}`);
    const err = sv("[data-testid=service-error]");
    await sv("tr[data-testid=worker] td[data-col=device]")
      .filter({ hasText: /^cpu$/ })
      .first()
      .waitFor({ timeout: 10_000 })
      .catch(async (e) => {
        throw new Error(`no worker row with device cpu (rows: ${JSON.stringify(await sv("[data-testid=workers]").textContent())}, error: ${await err.textContent()}): ${e.message}`);
      });
    const bar = sv("[data-testid=queue][data-state=running]").first();
    await bar.waitFor({ timeout: 5_000 });
    console.log(`e2e: service page: ${await sv("[data-testid=summary]").textContent()}; running bar of ${await bar.getAttribute("data-model")}`);
    // Rates need two polls: the throughput charts then have a point per series.
    await page.waitForFunction(
      () => {
        const t = document.querySelector("#page-service [data-testid=throughput]");
        const svg = t?.querySelector("[data-testid=throughput-jobs] svg");
        return Number(t?.getAttribute("data-polls")) >= 2 && Number(svg?.getAttribute("data-points")) >= 1;
      },
      null,
      { timeout: 10_000 },
    );
    expect(await err.isHidden(), `service page error: ${await err.textContent()}`);
    // The diagnostic jobs run above have latency series.
    expect((await sv("[data-testid=latency] tbody tr[data-model]").count()) >= 1, "no model in the latency table");
    await page.screenshot({ path: join(results, "service.png"), fullPage: true });
    // Leave no job running for the next steps: cancel it from the jobs tab, in front so
    // that its live rows settle (it may also have just finished by itself).
    await jobsPage.bringToFront();
    const cancel = jobsPage.locator(`tr[data-job-id="${id}"] [data-testid=cancel]`);
    if (await cancel.isVisible()) await cancel.click({ timeout: 5_000 }).catch(() => {});
    await page.bringToFront();
  });

  if (hasGenerate) {
    await step("generate streams text", async () => {
      const g = (sel) => page.locator(`#page-generate ${sel}`);
      await page.goto(`${base}/#/generate`);
      await g("[name=max_tokens]").fill("24");
      await g("[name=temperature]").fill("0");
      await g("[name=seed]").fill("42");
      // Record the output's length at every change, in the page itself.
      await page.evaluate(() => {
        const out = document.querySelector("#page-generate [data-testid=output]");
        window.__lengths = [];
        new MutationObserver(() => window.__lengths.push(out.textContent.length)).observe(out, {
          childList: true,
          characterData: true,
          subtree: true,
        });
      });
      await g("[data-testid=run]").click();
      const deadline = Date.now() + 240_000;
      let done = false;
      while (Date.now() < deadline) {
        done = ((await g("[data-testid=stats]").textContent()) ?? "").includes("completion tokens");
        if (done) break;
        const err = g(".message.error");
        if (await err.isVisible()) throw new Error(`generate failed: ${await err.textContent()}`);
        await sleep(200);
      }
      expect(done, "generate did not finish in time");
      const text = (await g("[data-testid=output]").textContent()) ?? "";
      expect(text.trim().length > 0, "no generated text");
      const lengths = new Set((await page.evaluate(() => window.__lengths)).filter((n) => n > 0));
      expect(lengths.size >= 3, `text did not stream (lengths seen: ${[...lengths]})`);
      const stats = await g("[data-testid=stats]").textContent();
      expect(/tokens\/s/.test(stats ?? ""), `no tokens/s in: ${stats}`);
      // The result reports the seed the request set.
      expect(/finish reason: (length|stop|eos), seed 42$/.test(stats ?? ""), `finish reason and seed in: ${stats}`);
      await page.screenshot({ path: join(results, "generate.png"), fullPage: true });
    });
    await step("an OpenAI-API request is a job on the Jobs page", async () => {
      const answer = await fetch(`${base}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: models[0], prompt: "The capital of France is", max_tokens: 4, temperature: 0 }),
      });
      const body = await answer.json();
      expect(answer.ok, `POST /v1/completions: ${answer.status} ${JSON.stringify(body)}`);
      const id = answer.headers.get("x-deephardway-job-id");
      expect(id && body.id === `cmpl-${id}`, `job id header ${id}, answer id ${body.id}`);
      await jobsPage.locator(`tr[data-job-id="${id}"] td.state`, { hasText: "succeeded" }).waitFor({ timeout: 10_000 });
    });
  } else {
    console.log("skip generate: no generate model served");
    await page.goto(`${base}/#/generate`);
    await page.screenshot({ path: join(results, "generate.png"), fullPage: true });
  }

  if (hasEmbed) {
    await step("embed shows a similarity heat map", async () => {
      await page.goto(`${base}/#/embed`);
      await page.locator("#page-embed [data-testid=run]").click();
      const map = page.locator("#page-embed [data-testid=heatmap]");
      await map.waitFor({ timeout: 120_000 });
      const diagCells = await map.locator("tbody tr").first().locator("td").first().textContent();
      expect(diagCells === "1.00", `diagonal is ${diagCells}`);
      await page.screenshot({ path: join(results, "embed.png"), fullPage: true });
    });
  } else {
    console.log("skip embed: no embed model served");
    await page.goto(`${base}/#/embed`);
    await page.screenshot({ path: join(results, "embed.png"), fullPage: true });
  }

  // --- datasets, training and classification ---
  const tr = (sel) => page.locator(`#page-train ${sel}`);
  const cl = (sel) => page.locator(`#page-classify ${sel}`);

  await step("an invalid dataset upload shows the service's error", async () => {
    await page.goto(`${base}/#/train`);
    await tr("[name=archive]").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("not an archive\n") });
    await tr("[name=dataset_name]").fill("bad");
    await tr("[data-testid=upload]").click();
    const err = tr("[data-testid=dataset-error]");
    await err.waitFor({ state: "visible", timeout: 30_000 });
    const text = await err.textContent();
    expect(/^INVALID_ARGUMENT: .*archive/.test(text ?? ""), `unexpected error text: ${text}`);
    expect((await tr('[data-testid=datasets] tr[data-dataset="bad"]').count()) === 0, "the bad dataset is listed");
  });

  const digitsDir = join(datasetsDir, "digits");
  if (existsSync(join(digitsDir, "train"))) {
    const tarPath = join(dataDir, "digits.tar");
    // The folder's entries by name (train, test), not ".": paths then have no "./" prefix.
    const entries = readdirSync(digitsDir).filter((f) => !f.startsWith(".")).sort();
    execFileSync("tar", ["-C", digitsDir, "-cf", tarPath, ...entries]);
    const epochs = 4;

    await step("upload a dataset archive", async () => {
      // The jobs tab opened last is in front; a background tab's frames (and so the
      // chart's redraws and the canvas's mouse events) are throttled.
      await page.bringToFront();
      await page.goto(`${base}/#/train`);
      await tr("[name=dataset_name]").fill("");
      await tr("[name=archive]").setInputFiles(tarPath);
      const name = await tr("[name=dataset_name]").inputValue();
      expect(name === "digits", `name from the file: ${name}`);
      await tr("[data-testid=upload]").click();
      const info = tr("[data-testid=dataset-info][data-dataset=digits]");
      await info.waitFor({ timeout: 60_000 });
      const text = (await info.textContent()) ?? "";
      expect(/10 classes/.test(text) && /1500 train images/.test(text) && /297 test images/.test(text), `dataset info: ${text}`);
      await tr('[data-testid=datasets] tr[data-dataset="digits"]').waitFor({ timeout: 10_000 });
      expect((await tr("[name=dataset]").inputValue()) === "digits", "the uploaded dataset is not selected for training");
      expect(await tr("[data-testid=dataset-error]").isHidden(), "no upload error expected");
      // Another archive under a taken name is refused.
      const otherTar = join(dataDir, "digits-train.tar");
      execFileSync("tar", ["-C", digitsDir, "-cf", otherTar, "train"]);
      await tr("[name=archive]").setInputFiles(otherTar);
      await tr("[name=dataset_name]").fill("digits");
      await tr("[data-testid=upload]").click();
      const err = tr("[data-testid=dataset-error]");
      await err.waitFor({ state: "visible", timeout: 30_000 });
      const text2 = await err.textContent();
      expect(/^ALREADY_EXISTS: /.test(text2 ?? ""), `unexpected error text: ${text2}`);
    });

    await step("train a cnn with live curves", async () => {
      await tr("[data-preset=digits]").click();
      await tr("[name=dataset]").selectOption("digits");
      await tr("[name=epochs]").fill(String(epochs));
      expect((await tr("[name=architecture]").inputValue()) === "cnn", "preset did not pick cnn");
      expect((await tr("[name=optimizer]").inputValue()) === "adamw", "preset did not pick adamw");
      expect((await tr("[name=learning_rate]").inputValue()) === "0.002", "preset's learning rate");
      expect((await tr("[name=batch_size]").inputValue()) === "32", "preset's batch size");
      // Record the loss chart's point count at every redraw, in the page itself.
      await page.evaluate(() => {
        const svg = document.querySelector("#page-train [data-testid=chart-loss] svg");
        window.__points = [];
        new MutationObserver(() => window.__points.push(Number(svg.getAttribute("data-points")))).observe(svg, {
          attributes: true,
          attributeFilter: ["data-points"],
        });
      });
      await tr("[data-testid=run]").click();
      const status = tr("[data-testid=status]");
      await page
        .locator(["succeeded", "failed", "cancelled"].map((s) => `#page-train [data-testid=status][data-state=${s}]`).join(", "))
        .waitFor({ timeout: 180_000 });
      const state = await status.getAttribute("data-state");
      expect(state === "succeeded", `train job ${state}: ${await status.textContent()} ${await tr(".message.error").allTextContents()}`);
      const summary = (await tr("[data-testid=summary]").textContent()) ?? "";
      expect(/digits@\d+/.test(summary) && /validation accuracy \d+(\.\d)?% on 297 images/.test(summary), `result: ${summary}`);
      expect(/seed 1$/.test(summary), `the preset's seed is not in the result: ${summary}`);
      const points = (testId, series) => tr(`[data-testid=${testId}] g[data-series=${series}]`).getAttribute("data-points").then(Number);
      const loss = await points("chart-loss", "loss");
      const train = await points("chart-accuracy", "train");
      const validation = await points("chart-accuracy", "validation");
      expect(loss >= 2 && train >= 2, `too few points: loss ${loss}, train accuracy ${train}`);
      expect(validation === epochs, `validation points ${validation}, expected one per epoch (${epochs})`);
      expect((await tr("[data-testid=chart-loss] path").count()) === 1, "no loss line drawn");
      const seen = await page.evaluate(() => window.__points);
      console.log(`e2e: ${summary}; loss chart point counts as drawn: ${seen.join(", ")}`);
      await page.screenshot({ path: join(results, "train.png"), fullPage: true });
    });

    await step("classify an image and a drawing", async () => {
      await tr("[data-testid=classify-link]").click();
      await page.waitForURL(/#\/classify\/digits/);
      await page.waitForFunction(() => document.querySelector("#page-classify select[name=model]")?.value === "digits", null, { timeout: 15_000 });
      const info = (await cl("[data-testid=model-info]").textContent()) ?? "";
      expect(/cnn · 8×8 grayscale · 10 labels/.test(info), `model info: ${info}`);
      const dir = join(digitsDir, "test", "3");
      const image = join(dir, readdirSync(dir).filter((f) => f.endsWith(".png")).sort()[0]);
      await cl("[name=images]").setInputFiles(image);
      const pred = cl("[data-testid=prediction]").first();
      await pred.waitFor({ timeout: 60_000 });
      const label = await pred.locator("[data-testid=label]").textContent();
      expect(/^[0-9]$/.test(label ?? ""), `predicted label: ${label}`);
      expect((await pred.locator(".prob").count()) === 10, "expected 10 probability bars");
      const top = await pred.locator(".prob").first().getAttribute("data-label");
      expect(top === label, `the first bar (${top}) is not the predicted label (${label})`);
      console.log(`e2e: ${image} (a 3) classified as ${label}`);

      // Two images dropped at once: one prediction each.
      const dropped = ["0", "5"].map((d) => {
        const dd = join(digitsDir, "test", d);
        const f = readdirSync(dd).filter((n) => n.endsWith(".png")).sort()[0];
        return { name: `${d}-${f}`, b64: readFileSync(join(dd, f)).toString("base64") };
      });
      const dataTransfer = await page.evaluateHandle((files) => {
        const dt = new DataTransfer();
        for (const f of files) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name, { type: "image/png" }));
        return dt;
      }, dropped);
      await cl("[data-testid=dropzone]").dispatchEvent("drop", { dataTransfer });
      for (const f of dropped) {
        const card = cl(`[data-testid=prediction][data-source="${f.name}"]`);
        await card.waitFor({ timeout: 60_000 });
        console.log(`e2e: dropped ${f.name} classified as ${await card.locator("[data-testid=label]").textContent()}`);
      }

      const canvas = cl("[data-testid=canvas]");
      const box = await canvas.boundingBox();
      await page.mouse.move(box.x + box.width * 0.35, box.y + box.height * 0.2);
      await page.mouse.down();
      await page.mouse.move(box.x + box.width * 0.65, box.y + box.height * 0.2, { steps: 5 });
      await page.mouse.move(box.x + box.width * 0.45, box.y + box.height * 0.8, { steps: 8 });
      await page.mouse.up();
      const ink = await canvas.evaluate((c) => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++;
        return n;
      });
      expect(ink > 500, `the stroke left ${ink} white pixels`);
      await cl("[data-testid=classify-drawing]").click();
      const drawn = cl('[data-testid=prediction][data-source="drawing"]');
      await drawn.waitFor({ timeout: 60_000 });
      const drawnLabel = await drawn.locator("[data-testid=label]").textContent();
      expect(/^[0-9]$/.test(drawnLabel ?? ""), `drawing's label: ${drawnLabel}`);
      console.log(`e2e: the drawing (a 7) classified as ${drawnLabel}`);
      expect(await cl(".message.error").isHidden(), "no error expected");
      await page.screenshot({ path: join(results, "classify.png"), fullPage: true });
    });

    await step("stop a training job", async () => {
      await page.goto(`${base}/#/train`);
      await tr("[data-preset=digits]").click();
      await tr("[name=dataset]").selectOption("digits");
      await tr("[name=epochs]").fill("1000");
      expect(await tr("[name=hidden_sizes]").isHidden(), "hidden sizes shown for a cnn");
      await tr("[data-testid=run]").click();
      await tr("[data-testid=status][data-state=running]").waitFor({ timeout: 30_000 });
      await page.waitForFunction(() => Number(document.querySelector("#page-train [data-testid=chart-loss] svg")?.getAttribute("data-points")) > 0, null, { timeout: 30_000 });
      await tr("[data-testid=stop]").click();
      await tr("[data-testid=status][data-state=cancelled]").waitFor({ timeout: 30_000 });
      const text = (await tr("[data-testid=result]").textContent()) ?? "";
      expect(/^Stopped/.test(text), `result after Stop: ${text}`);
    });

    await step("delete a dataset", async () => {
      await page.goto(`${base}/#/train`);
      const row = tr('[data-testid=datasets] tr[data-dataset="digits"]');
      await row.locator("[data-testid=delete]").click();
      await row.waitFor({ state: "detached", timeout: 15_000 });
      // Models trained on it stay.
      await page.goto(`${base}/#/classify`);
      await page.waitForFunction(() => [...document.querySelectorAll("#page-classify select[name=model] option")].some((o) => o.value === "digits"), null, { timeout: 15_000 });
    });
  } else {
    console.log(`skip train and classify: no datasets at ${datasetsDir} (set DEEPHARDWAY_DATASETS)`);
    for (const id of ["train", "classify"]) {
      await page.goto(`${base}/#/${id}`);
      await page.screenshot({ path: join(results, `${id}.png`), fullPage: true });
    }
  }

  await step("a lost connection shows and the watches resume", async () => {
    await runDiagnostic(16, 500);
    const id = await newRunningJobId();
    await jobsPage.locator(`tr[data-job-id="${id}"] td.state`, { hasText: "running" }).waitFor({ timeout: 10_000 });
    await stopServer("SIGKILL");
    const banner = page.locator("[data-testid=connection]");
    await banner.waitFor({ state: "visible", timeout: 15_000 });
    const text = await banner.textContent();
    expect(/Connection lost/.test(text ?? ""), `banner says: ${text}`);
    await jobsPage.locator("[data-testid=live].bad").waitFor({ timeout: 15_000 });
    await page.screenshot({ path: join(results, "connection-lost.png"), fullPage: true });
    startServer();
    await waitForPort(120_000);
    // Both streams come back: the jobs table goes live again and the job's watch
    // resumes from the last sequence number seen until the job's final event.
    await jobsPage.locator("[data-testid=live].ok").waitFor({ timeout: 30_000 });
    await diag("[data-testid=status][data-state=succeeded], [data-testid=status][data-state=failed]").waitFor({ timeout: 90_000 });
    await banner.waitFor({ state: "hidden", timeout: 15_000 });
    const state = await diag("[data-testid=status]").getAttribute("data-state");
    console.log(`e2e: after the restart the job ended ${state}: ${await diag("[data-testid=status]").textContent()} ${await diag(".message.error").textContent()}`);
    await jobsPage.locator(`tr[data-job-id="${id}"] td.state`, { hasText: state }).waitFor({ timeout: 15_000 });
  });

  await step("no uncaught page errors", async () => {
    expect(consoleErrors.length === 0, consoleErrors.join("\n"));
  });
} catch (err) {
  failed++;
  console.error(`e2e: ${err?.stack ?? err}`);
} finally {
  await cleanup();
}
console.log(`\ne2e: ${results_.length - failed >= 0 ? results_.filter((r) => r.startsWith("ok")).length : 0} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
