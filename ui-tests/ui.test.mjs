// The admin UI in a real browser: Playwright (playwright-core) driving Debian's chromium against
// a real `keel serve` (the binary in KEEL_BIN) on loopback, with jobs moved by the real HTTP API.
//
//   KEEL_BIN=target/debug/keel node --test --test-concurrency=1 ui.test.mjs
//   KEEL_UI_SCREENSHOTS=docs/screenshots ...   # also saves the main pages as PNGs (path from the repo root)
//
// `cargo test -p keel --test ui` runs this when KEEL_BROWSER_TESTS names this directory.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { createRequire } from "node:module";

const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

const KEEL = process.env.KEEL_BIN;
// Relative to the repository's root, wherever the runner starts.
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SHOTS = process.env.KEEL_UI_SCREENSHOTS ? resolve(ROOT, process.env.KEEL_UI_SCREENSHOTS) : "";
const CHROMIUM = process.env.KEEL_CHROMIUM || "/usr/bin/chromium";

let server;
let work;
let base;
let admin;
let browser;

async function startServer() {
  work = mkdtempSync(join(tmpdir(), "keel-ui-"));
  const args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", join(work, "data"),
    "--log-format", "json", "--allow-private-targets"];
  const proc = spawn(KEEL, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  proc.stderr.on("data", (d) => { log += d; });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`keel serve did not start:\n${log}`)), 30_000);
    proc.stdout.on("data", (d) => {
      log += d;
      const m = log.match(/"addr":"([^"]+)"/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.on("exit", (code) => reject(new Error(`keel serve exited with ${code}:\n${log}`)));
  });
  return { proc, addr };
}

async function api(method, path, body, token = admin) {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function enqueue(queue, payload, extra = {}) {
  const r = await api("POST", "/v1/jobs", { queue, kind: "send", payload, ...extra });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

/// Leases the one available job of `queue` as a worker would.
async function leaseOne(queue) {
  const r = await api("POST", "/v1/lease", { queues: [queue], max_jobs: 1, wait_ms: 2000, worker: "ui-test" });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.jobs.length, 1, `no job to lease in ${queue}`);
  return r.body.jobs[0];
}

async function failForGood(queue, message) {
  const job = await leaseOne(queue);
  const r = await api("POST", `/v1/jobs/${job.id}/fail`, {
    lease_token: job.lease.token, error: { message, type: "PartnerDown", retryable: false },
  });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.state, "dead");
  return job.id;
}

async function completeNext(queue) {
  const job = await leaseOne(queue);
  const r = await api("POST", `/v1/jobs/${job.id}/complete`, { lease_token: job.lease.token, result: { sent: true } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return job.id;
}

async function logIn(token, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...options });
  const page = await context.newPage();
  await page.goto(`${base}/ui`);
  assert.match(page.url(), /\/ui\/login$/, "an anonymous visit goes to the login page");
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${base}/ui`);
  return { context, page };
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

before(async () => {
  assert.ok(KEEL, "set KEEL_BIN to the keel binary");
  server = await startServer();
  base = `http://${server.addr}`;
  admin = readFileSync(join(work, "data", "admin.token"), "utf8").trim();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  server?.proc.kill("SIGTERM");
  if (work) rmSync(work, { recursive: true, force: true });
});

test("a wrong token is refused at login", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/ui/login`);
  await page.getByLabel("API token").fill("keel_0000");
  await page.getByRole("button", { name: "Log in" }).click();
  assert.match(await page.getByRole("alert").innerText(), /unknown or was revoked/);
  const cookies = await context.cookies();
  assert.equal(cookies.length, 0, "no session cookie for a wrong token");
  await context.close();
});

test("log in, see a queue fill live, open a dead job, retry it and watch it complete", async () => {
  await enqueue("mail", { to: "first@example.com" });
  const { context, page } = await logIn(admin);
  const cookie = (await context.cookies()).find((c) => c.name === "keel_ui");
  assert.ok(cookie.httpOnly, "the session cookie is HttpOnly");
  assert.equal(cookie.sameSite, "Strict");

  // The overview refreshes in place: no reload while five more jobs arrive.
  await page.evaluate(() => { window.stayed = true; });
  for (let i = 0; i < 5; i++) await enqueue("mail", { to: `u${i}@example.com` });
  await page.waitForFunction(
    () => document.querySelector('tr[data-q="mail"] [data-f="available"]')?.textContent === "6",
    null, { timeout: 15_000 });
  assert.equal(await page.evaluate(() => window.stayed), true, "the page was not reloaded");
  await completeNext("mail");

  // A job that fails for good becomes a dead letter, and the UI shows why.
  await enqueue("billing", { invoice: 42, amount_cents: 1999 });
  const deadId = await failForGood("billing", "the partner answered 410 Gone");
  await page.getByRole("link", { name: "billing" }).click();
  assert.equal(await page.getByRole("heading", { name: "Dead letters: 1" }).count(), 1);
  await page.getByRole("link", { name: "List the dead jobs" }).click();
  await page.getByRole("link", { name: deadId }).click();
  assert.equal(await page.locator("#job-state").innerText(), "dead");
  const timeline = await page.locator("#timeline").innerText();
  assert.match(timeline, /PartnerDown: the partner answered 410 Gone/);
  assert.match(await page.locator("pre").first().innerText(), /"invoice": 42/);
  await shot(page, "job-dead");

  await page.getByRole("button", { name: "Retry job" }).click();
  assert.match(await page.getByRole("status").innerText(), /Retried/);
  assert.equal(await page.locator("#job-state").innerText(), "available");
  // The page follows the job: no reload from here while a worker completes it.
  assert.equal(await completeNext("billing"), deadId);
  await page.waitForFunction(() => document.getElementById("job-state")?.textContent === "completed",
    null, { timeout: 15_000 });
  assert.match(await page.locator("#timeline").innerText(), /retried[\s\S]*succeeded/);
  await context.close();
});

test("bulk replay states how many jobs it touches, then replays exactly those", async () => {
  for (let i = 0; i < 3; i++) await enqueue("partner-sync", { account: i });
  for (let i = 0; i < 3; i++) await failForGood("partner-sync", `account ${i} rejected`);
  const { context, page } = await logIn(admin);
  await page.goto(`${base}/ui/queues/partner-sync`);
  await shot(page, "queue");
  await page.getByRole("button", { name: "Replay dead jobs…" }).click();
  assert.match(await page.locator("main").innerText(), /Replay 3 dead jobs of queue partner-sync/);

  // The queue changes before the confirmation arrives: nothing is done, the new count is shown.
  await enqueue("partner-sync", { account: 3 });
  await failForGood("partner-sync", "account 3 rejected");
  await page.getByRole("button", { name: "Replay 3 jobs" }).click();
  assert.match(await page.getByRole("alert").innerText(), /now holds 4 dead jobs\. Nothing was done/);
  let q = await api("GET", "/v1/queues/partner-sync");
  assert.equal(q.body.counts.dead, 4, "nothing was replayed on a stale confirmation");

  await page.getByRole("button", { name: "Replay 4 jobs" }).click();
  assert.match(await page.getByRole("status").innerText(), /Replayed 4 dead jobs/);
  q = await api("GET", "/v1/queues/partner-sync");
  assert.equal(q.body.counts.dead, 0);
  assert.equal(q.body.counts.available, 4);
  const audit = await api("GET", "/v1/audit?limit=5");
  assert.ok(audit.body.entries.some((e) => e.action.includes("replay")), "the replay is audited as the API's");
  await context.close();
});

test("a viewer token sees everything and is offered no action", async () => {
  await enqueue("viewer-q", { n: 1 });
  const deadId = await failForGood("viewer-q", "boom");
  const created = await api("POST", "/v1/tokens", { name: "support", role: "viewer" });
  assert.equal(created.status, 201);
  const { context, page } = await logIn(created.body.token);
  for (const path of ["/ui", "/ui/queues/viewer-q", `/ui/jobs/${deadId}`, "/ui/targets"]) {
    await page.goto(base + path);
    assert.equal(await page.locator("main form[method=post]").count(), 0, `${path} offers no action`);
  }
  await page.goto(`${base}/ui/queues/viewer-q`);
  assert.equal(await page.getByRole("heading", { name: "Dead letters: 1" }).count(), 1, "a viewer sees the dead letters");
  // Asking anyway, with the viewer's own valid CSRF token: the API's handler refuses.
  const csrf = await page.locator("header input[name=_csrf]").inputValue();
  const res = await page.request.post(`${base}/ui/queues/viewer-q/pause`, { form: { _csrf: csrf }, maxRedirects: 0 });
  assert.equal(res.status(), 403);
  assert.equal((await api("GET", "/v1/queues/viewer-q")).body.paused, false);
  // Revoking the token ends the session: the open overview goes to the login page by itself.
  await page.goto(`${base}/ui`);
  assert.equal((await api("DELETE", `/v1/tokens/${created.body.id}`)).status, 204);
  await page.waitForURL(`${base}/ui/login`, { timeout: 15_000 });
  await context.close();
});

test("an action without the session's CSRF token is refused and changes nothing", async () => {
  await enqueue("csrf-q", { n: 1 });
  const { context, page } = await logIn(admin);
  await page.goto(`${base}/ui/queues/csrf-q`);
  for (const form of [{}, { _csrf: "0".repeat(64) }]) {
    const res = await page.request.post(`${base}/ui/queues/csrf-q/pause`, { form, maxRedirects: 0 });
    assert.equal(res.status(), 403, JSON.stringify(form));
    assert.match(await res.text(), /CSRF/);
  }
  assert.equal((await api("GET", "/v1/queues/csrf-q")).body.paused, false);
  // The same form submitted from the page (with its token) works.
  await page.getByRole("button", { name: "Pause queue" }).click();
  assert.match(await page.getByRole("status").innerText(), /Paused/);
  assert.equal((await api("GET", "/v1/queues/csrf-q")).body.paused, true);
  await context.close();
});

test("the targets page shows each origin's breaker and its history", async () => {
  // A push target nothing listens on: deliveries fail, the breaker opens after two.
  const put = await api("PUT", "/v1/queues/webhooks", {
    target: { url: "http://127.0.0.1:9/hooks", timeout_ms: 1000, breaker: { failure_threshold: 2, open_ms: 60_000 } },
  });
  assert.equal(put.status, 200, JSON.stringify(put.body));
  for (let i = 0; i < 3; i++) await enqueue("webhooks", { event: "order.paid", order: i });
  const { context, page } = await logIn(admin);
  let open = false;
  for (let i = 0; i < 40 && !open; i++) {
    await page.goto(`${base}/ui/targets`);
    open = (await page.locator(".tag.open").count()) > 0;
    if (!open) await page.waitForTimeout(250);
  }
  assert.ok(open, "the breaker of 127.0.0.1:9 opened");
  assert.match(await page.locator("main").innerText(), /http:\/\/127\.0\.0\.1:9[\s\S]*opened/);
  await shot(page, "targets");
  await context.close();
});

test("the overview charts throughput from this node's readings", async () => {
  const { context, page } = await logIn(admin);
  // Readings are taken every 5 s: within two of them the charts have a line to draw.
  await page.waitForFunction(
    () => (document.querySelector('tr[data-q="mail"] svg[data-spark="completed"] polyline')
      ?.getAttribute("points") ?? "").split(" ").length >= 2,
    null, { timeout: 20_000 });
  assert.equal(await page.locator("#queues tbody tr").count(), 6, "every queue the tests made is listed");
  await shot(page, "overview");
  await context.close();
});

test("every page passes axe-core's WCAG 2 A and AA checks", async () => {
  // axe is injected as a script, which the UI's Content-Security-Policy would refuse.
  const { context, page } = await logIn(admin, { bypassCSP: true });
  const q = await api("GET", "/v1/jobs?queue=billing&limit=1");
  const jobId = q.body.jobs[0].id;
  const pages = ["/ui", "/ui/queues/partner-sync", "/ui/queues/partner-sync?state=dead", `/ui/jobs/${jobId}`,
    "/ui/targets", "/ui/queues/viewer-q/replay"];
  for (const path of pages) {
    if (path.endsWith("/replay")) {
      await page.goto(`${base}/ui/queues/viewer-q`);
      await page.getByRole("button", { name: "Replay dead jobs…" }).click();
    } else {
      await page.goto(base + path);
    }
    await page.addScriptTag({ path: AXE });
    const result = await page.evaluate(() =>
      window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }));
    const found = result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    assert.deepEqual(found, [], `${path}: ${found.join("; ")}`);
  }
  await context.close();
  const login = await browser.newContext({ bypassCSP: true });
  const lp = await login.newPage();
  await lp.goto(`${base}/ui/login`);
  await lp.addScriptTag({ path: AXE });
  const result = await lp.evaluate(() => window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa"] } }));
  assert.deepEqual(result.violations.map((v) => v.id), [], "the login page");
  await login.close();
});
