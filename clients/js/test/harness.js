// Test support for the browser tests: a real gateway with two local workers (debug
// binaries), a page server on another origin, headless Chromium driven by playwright-core.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '../../..');
const BIN = process.env.PUSHGATE_BIN_DIR || path.join(ROOT, 'target', 'debug');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitUntil(what, fn, timeoutMs = 10000, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** `gateway --local-workers 2` on a free port, its workers on 127.0.0.2 and .3. */
export async function startGateway(extra = []) {
  const exe = path.join(BIN, 'gateway');
  if (!fs.existsSync(exe)) {
    throw new Error(`${exe} is missing: run \`cargo build -p gateway -p worker\` first`);
  }
  const port = await freePort();
  const child = spawn(exe, ['--listen', `127.0.0.1:${port}`, '--local-workers', '2', ...extra], {
    env: Object.assign({}, process.env, { RUST_LOG: 'warn' }),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // However the test process ends, the gateway goes too (its workers follow it).
  process.on('exit', () => child.kill('SIGKILL'));
  let log = '';
  child.stderr.on('data', (d) => {
    log = (log + d).slice(-20000);
  });
  const gw = new Gateway(`http://127.0.0.1:${port}`, child, () => log);
  await waitUntil('two healthy workers', async () => (await gw.healthy()).length >= 2, 20000);
  return gw;
}

class Gateway {
  constructor(base, child, log) {
    this.base = base;
    this.child = child;
    this.log = log;
  }

  async workers() {
    try {
      const r = await fetch(this.base + '/v1/workers');
      return (await r.json()).workers;
    } catch {
      return [];
    }
  }

  async healthy() {
    return (await this.workers()).filter((w) => w.state === 'healthy');
  }

  async publish(channel, body) {
    const r = await fetch(`${this.base}/v1/publish/${channel}`, { method: 'POST', body });
    if (r.status !== 202) throw new Error(`publish ${channel}: ${r.status} ${await r.text()}`);
    return (await r.json()).seq;
  }

  /** Publishes `n` messages in one NDJSON request. */
  async publishMany(channel, n) {
    const lines = Array.from({ length: n }, (_, i) => JSON.stringify({ channel, data: { i } })).join('\n');
    const r = await fetch(`${this.base}/v1/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-ndjson' },
      body: lines + '\n',
    });
    const v = await r.json();
    if (v.accepted !== n) throw new Error(`batch: ${JSON.stringify(v)}`);
  }

  async channel(name) {
    return (await fetch(`${this.base}/v1/channels/${name}`)).json();
  }

  /** The sum of a worker metric over the healthy workers. */
  async workerMetric(line) {
    let sum = 0;
    for (const w of await this.healthy()) {
      const text = await (await fetch(`http://${w.addresses[0]}/metrics`)).text();
      const found = text.split('\n').find((l) => l.startsWith(line + ' '));
      if (found === undefined) throw new Error(`${line} missing on ${w.id}`);
      sum += Number(found.slice(line.length + 1));
    }
    return sum;
  }

  /** The pid of local worker `id` (a child of the gateway started with `--id <id>`). */
  workerPid(id) {
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (ppid !== this.child.pid) continue;
        const args = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
        const at = args.indexOf('--id');
        if (at >= 0 && args[at + 1] === id) return Number(d);
      } catch {
        /* a process that went away meanwhile */
      }
    }
    throw new Error(`no local worker ${id} under gateway ${this.child.pid}`);
  }

  /** Kills local worker `id` with SIGKILL; resolves once the gateway has it back. */
  async killWorker(id) {
    const pid = this.workerPid(id);
    process.kill(pid, 'SIGKILL');
    return pid;
  }

  async stop() {
    if (this.child.exitCode === null) {
      this.child.kill('SIGTERM');
      await Promise.race([new Promise((r) => this.child.once('exit', r)), sleep(5000)]);
      if (this.child.exitCode === null) this.child.kill('SIGKILL');
    }
  }
}

// The page: imports the client from the gateway (another origin, so the module is fetched
// with CORS), and keeps what each subscription saw for the test to read.
function pageHtml(gateway) {
  return `<!doctype html>
<meta charset="utf-8">
<title>pushgate client test</title>
<script type="module">
import * as pushgate from '${gateway}/client/pushgate.js';
const subs = (window.subs = {});
window.start = (name, opts) => {
  const log = { msgs: [], gaps: [], states: [], transports: [] };
  const sub = pushgate.connect(Object.assign({ gateway: '${gateway}' }, opts, {
    onMessage: (m) => log.msgs.push(m.seq),
    onGap: (g) => log.gaps.push(g),
    onState: (state, d) => log.states.push({ state, reason: d.reason, code: d.code, transport: d.transport, worker: d.worker }),
  }));
  subs[name] = { sub, log };
};
window.view = (name) => {
  const { sub, log } = subs[name];
  return Object.assign({ state: sub.state, transport: sub.transport, worker: sub.worker, lastSeq: sub.lastSeq,
    epoch: sub.epoch, duplicates: sub.duplicates }, log);
};
// A page with nothing but the browser's EventSource, as in the docs.
window.plain = async (name, channel) => {
  const a = await (await fetch('${gateway}/v1/assign?channel=' + channel)).json();
  const log = { msgs: [], closed: [], errors: [], opens: 0 };
  const es = new EventSource(a.sse_url + '&since=0');
  es.onopen = () => log.opens++;
  es.onerror = () => log.errors.push(es.readyState);
  es.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.closed) log.closed.push({ closed: f.closed, id: e.lastEventId });
    else if (typeof f.seq === 'number') log.msgs.push(f.seq);
  };
  subs[name] = { es, log };
};
window.plainView = (name) => Object.assign({ readyState: subs[name].es.readyState }, subs[name].log);
window.ready = true;
</script>`;
}

// Runs before any page script: lets a test take the page's network down, or block one
// transport, the way a browser sees it (a refused WebSocket, a failed fetch).
function netControl() {
  const RealWebSocket = window.WebSocket;
  const realFetch = window.fetch.bind(window);
  const ctl = (window.__net = { down: false, blockWs: false, blockSse: false });
  window.WebSocket = class extends RealWebSocket {
    constructor(url, protocols) {
      super(ctl.down || ctl.blockWs ? 'ws://127.0.0.1:9/blocked' : url, protocols);
    }
  };
  window.fetch = (input, init) => {
    const url = String(input && input.url ? input.url : input);
    if (ctl.down || (ctl.blockSse && url.includes('/v1/sse'))) {
      return Promise.reject(new TypeError('network is down (test)'));
    }
    return realFetch(input, init);
  };
}

export async function startBrowser(gateway) {
  const html = pageHtml(gateway.base);
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(html);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'pushgate-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  await context.addInitScript(netControl);
  return {
    context,
    /** A new tab with the test page loaded. */
    async tab() {
      const page = await context.newPage();
      page.on('pageerror', (e) => console.error('page error:', e.message));
      await page.goto(origin + '/');
      await page.waitForFunction(() => window.ready === true, null, { timeout: 10000 });
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      server.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Polls a page's view of subscription `name` until `pred(view)` holds. */
export async function waitView(page, name, what, pred, timeoutMs = 10000) {
  let last;
  try {
    return await waitUntil(what, async () => {
      last = await page.evaluate((n) => window.view(n), name);
      return pred(last) ? last : null;
    }, timeoutMs);
  } catch (e) {
    e.message += `; last view: ${JSON.stringify(last && Object.assign({}, last, { msgs: summary(last.msgs) }))}`;
    throw e;
  }
}

function summary(msgs) {
  return msgs.length <= 20 ? msgs : `${msgs.length} seqs: ${msgs.slice(0, 5)} ... ${msgs.slice(-5)}`;
}

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
