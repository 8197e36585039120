// The gateway's dashboard in headless Chromium: a real gateway with two local workers,
// the page loads (nothing from the network), shows both workers and numbers that match
// /metrics, a message published from its "try it" panel arrives in the page, and a
// stopped gateway turns the page stale within a few seconds.
//
// Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM) and the debug binaries
// (BIN, default target/debug): `npm ci && npm test` in this folder after `cargo build`.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.BIN || join(here, "../../../target/debug");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const GATEWAY = join(BIN, "gateway");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function until(what, f, ms = 15000, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`${what}: not within ${ms} ms (last: ${last})`);
}

async function getText(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  assert.equal(r.status, 200, url);
  return r.text();
}

/** Sum of the samples of `name` (with every label in `match`) in an exposition. */
function metric(text, name, match = {}) {
  let s = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([a-z_]+)(\{[^}]*\})? (\S+)$/);
    if (!m || m[1] !== name) continue;
    const labels = m[2] || "";
    if (Object.entries(match).every(([k, v]) => labels.includes(`${k}="${v}"`))) s += Number(m[3]);
  }
  return s;
}

const procs = [];
let browser;
after(async () => {
  if (browser) await browser.close();
  for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
});

test("the dashboard shows the fleet, matches /metrics, delivers from its panel, and goes stale", { timeout: 90000 }, async () => {
  assert.ok(existsSync(GATEWAY), `${GATEWAY} is missing: cargo build -p gateway first`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const gw = spawn(GATEWAY, ["--listen", `127.0.0.1:${port}`, "--local-workers", "2", "--worker-exe", GATEWAY], {
    env: { ...process.env, RUST_LOG: "warn" },
    stdio: ["ignore", "ignore", "inherit"],
  });
  procs.push(gw);
  const workers = await until("two healthy workers", async () => {
    const r = await fetch(`${base}/v1/workers`);
    const v = await r.json();
    const ok = v.workers.filter((w) => w.state === "healthy");
    return ok.length === 2 ? v.workers : null;
  });

  const profile = mkdtempSync(join(tmpdir(), "pushgate-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1600 },
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  after(() => rmSync(profile, { recursive: true, force: true }));
  const page = await browser.newPage();
  const requested = [];
  page.on("request", (r) => requested.push(r.url()));
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/");

  // Both workers, healthy, with their addresses.
  await page.waitForFunction(() => document.querySelectorAll("#workers tr").length === 2, null, { timeout: 10000 });
  const rows = await page.$$eval("#workers tr", (trs) => trs.map((tr) => ({
    id: tr.dataset.worker, state: tr.querySelector(".state").textContent, text: tr.textContent,
  })));
  assert.deepEqual(rows.map((r) => r.id).sort(), workers.map((w) => w.id).sort());
  for (const r of rows) assert.equal(r.state, "healthy", r.text);
  for (const w of workers) assert.ok(rows.some((r) => r.text.includes(w.addresses[0])), `${w.addresses[0]} shown`);
  assert.equal(await page.textContent("#t-workers"), "2 / 2");
  assert.ok((await page.$$(".chart canvas")).length >= 7, "the charts are drawn");

  // Try it: subscribe from the page, publish from the page, see it arrive.
  await page.fill("#try-channel", "dashboard-browser");
  await page.click("#try-sub");
  await page.waitForFunction(() => document.getElementById("try-status").textContent.startsWith("subscribed"), null, { timeout: 10000 });
  await page.fill("#try-msg", "hello from the page");
  await page.click("#try-pub");
  await page.waitForFunction(() => document.getElementById("received").textContent.includes("hello from the page"), null, { timeout: 10000 });
  const got = JSON.parse((await page.textContent("#received")).trim().split("\n").pop());
  assert.deepEqual(got, { seq: 1, data: "hello from the page" });
  assert.equal(await page.textContent("#try-status"), "published seq 1");

  // Live numbers are /metrics' numbers: publishes on the gateway, client connections on
  // the workers (the page's own WebSocket is one).
  await until("the page's totals match /metrics", async () => {
    const published = metric(await getText(`${base}/metrics`), "pushgate_publish_total");
    let conns = 0;
    for (const w of workers) {
      const t = await getText(`http://${w.addresses[0]}/metrics`);
      for (const tr of ["ws", "sse", "poll"]) conns += metric(t, "pushgate_connections_open", { transport: tr });
    }
    const shown = [await page.textContent("#t-published"), await page.textContent("#t-conns")];
    return published === 1 && conns === 1 && shown[0] === String(published) && shown[1] === String(conns)
      ? true : `page ${shown} vs /metrics ${published},${conns}`;
  });
  assert.equal(await page.evaluate(() => document.body.classList.contains("is-stale")), false);

  // Nothing came from anywhere but this gateway and its workers.
  for (const u of requested) assert.match(u, /^(http|ws):\/\/127\.0\.0\.\d+:\d+\//, u);
  assert.deepEqual(errors, []);

  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

  // The gateway stops: the page says so within a few seconds.
  const stoppedAt = Date.now();
  gw.kill("SIGKILL");
  await page.waitForFunction(() => document.body.classList.contains("is-stale"), null, { timeout: 8000 });
  const banner = await page.textContent("#stale");
  assert.match(banner, /unreachable/);
  assert.ok(await page.isVisible("#stale"), "the stale banner shows");
  assert.equal(await page.textContent("#conn"), "STALE");
  const took = Date.now() - stoppedAt;
  assert.ok(took < 6000, `stale after ${took} ms`);
  if (process.env.SCREENSHOT) await page.evaluate(() => window.scrollTo(0, 0));
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT.replace(/\.png$/, "-stale.png") });
});
