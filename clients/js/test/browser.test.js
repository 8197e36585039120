// The JavaScript client in headless Chromium against a real gateway with two local
// workers: order and no duplicates on every transport, a worker killed mid-stream, two
// tabs on one channel (the client's and plain EventSource), fallbacks, gaps.
//
//   cargo build -p gateway -p worker && (cd clients/js && npm ci && npm test)

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { range, sleep, startBrowser, startGateway, waitUntil, waitView } from './harness.js';

const KICKED = 'pushgate_connections_closed_total{reason="kicked"}';
const SSE_STOPS = 'pushgate_sse_replaced_stops_total';
const T = { timeout: 30000 };

let gw;
let browser;

before(async () => {
  // The gap test publishes more than this while its page is away.
  gw = await startGateway(['--retention-messages', '100']);
  browser = await startBrowser(gw);
}, { timeout: 60000 });

after(async () => {
  if (browser) await browser.close();
  if (gw) await gw.stop();
});

const isOpen = (v) => v.state === 'open';

async function open(page, name, opts) {
  await page.evaluate(([n, o]) => window.start(n, o), [name, opts]);
  return waitView(page, name, `${name} open`, isOpen);
}

// Both workers up (one killed by an earlier test is restarted by the gateway), so the sums
// of worker metrics taken during a test are over the same processes.
const bothWorkers = () => waitUntil('two healthy workers', async () => (await gw.healthy()).length === 2, 15000);

function assertNoReconnect(view) {
  const kinds = view.states.map((s) => s.state);
  assert.deepEqual(kinds, ['connecting', 'open'], JSON.stringify(view.states));
}

describe('pushgate client in Chromium', () => {
  for (const transport of ['ws', 'sse', 'poll']) {
    test(`${transport}: the backlog, then live messages, in order, once`, T, async () => {
      const ch = `order-${transport}`;
      await gw.publishMany(ch, 5);
      const page = await browser.tab();
      const v0 = await open(page, 'a', { channel: ch, transport, since: 0 });
      assert.equal(v0.transport, transport);
      for (let i = 0; i < 20; i++) {
        await gw.publish(ch, JSON.stringify({ n: i }));
        if (i % 5 === 0) await sleep(20);
      }
      await gw.publishMany(ch, 25);
      const v = await waitView(page, 'a', '50 messages', (x) => x.msgs.length >= 50);
      await sleep(300); // nothing more may come
      const end = await page.evaluate(() => window.view('a'));
      assert.deepEqual(end.msgs, range(1, 50));
      assert.equal(end.duplicates, 0);
      assert.equal(end.gaps.length, 0);
      assert.equal(end.lastSeq, 50);
      assert.equal(v.transport, transport);
      assertNoReconnect(end);
      await page.close();
    });
  }

  for (const transport of ['ws', 'sse', 'poll']) {
    test(`${transport}: a worker killed with -9 mid-stream: reassigned, resumed, nothing lost or repeated`, T, async () => {
      const ch = `kill-${transport}`;
      await bothWorkers();
      const page = await browser.tab();
      const v0 = await open(page, 'a', { channel: ch, transport, since: 0 });
      const victim = v0.worker;
      const total = 150;
      let killed = 0;
      for (let i = 1; i <= total; i++) {
        await gw.publish(ch, String(i));
        if (i === 50) {
          await waitView(page, 'a', 'the first 50', (x) => x.msgs.length >= 50);
          killed = await gw.killWorker(victim);
        }
        await sleep(10);
      }
      const v = await waitView(page, 'a', `${total} messages`, (x) => x.msgs.length >= total, 15000);
      await sleep(300);
      const end = await page.evaluate(() => window.view('a'));
      assert.ok(killed > 0);
      assert.deepEqual(end.msgs, range(1, total), 'every message once, in order');
      assert.equal(end.duplicates, 0);
      assert.equal(end.gaps.length, 0);
      const kinds = end.states.map((s) => s.state);
      assert.ok(kinds.includes('reconnecting'), JSON.stringify(end.states));
      assert.equal(kinds.at(-1), 'open');
      assert.ok(!kinds.includes('stopped'));
      assert.equal(v.transport, transport);
      // It resumed on a worker that was alive: the other one, or the killed one restarted.
      const healthy = await gw.healthy();
      assert.ok(healthy.some((w) => w.id === end.worker), `${end.worker} is healthy`);
      await page.close();
    });
  }

  for (const transport of ['ws', 'sse']) {
    test(`${transport}: two tabs on one channel: the older stops, no ping-pong`, T, async () => {
      const ch = `tabs-${transport}`;
      await bothWorkers();
      const kicks0 = await gw.workerMetric(KICKED);
      const a = await browser.tab();
      const b = await browser.tab();
      await open(a, 'a', { channel: ch, transport, since: 0 });
      await open(b, 'b', { channel: ch, transport, since: 0 });
      const va = await waitView(a, 'a', 'the older tab stopped', (x) => x.state === 'stopped');
      assert.equal(va.states.at(-1).reason, 'replaced');
      const kicks1 = await gw.workerMetric(KICKED);
      assert.equal(kicks1 - kicks0, 1, 'one kick: the older tab');
      // Five quiet seconds: neither tab takes the channel back.
      await sleep(5000);
      assert.equal(await gw.workerMetric(KICKED), kicks1, 'no kick since');
      const seq = await gw.publish(ch, '"after"');
      const vb = await waitView(b, 'b', 'the newer tab got it', (x) => x.msgs.includes(seq));
      assertNoReconnect(vb);
      const end = await a.evaluate(() => window.view('a'));
      assert.deepEqual(
        end.states.map((s) => s.state),
        ['connecting', 'open', 'stopped'],
        JSON.stringify(end.states),
      );
      assert.ok(!end.msgs.includes(seq));
      assert.equal((await gw.channel(ch)).online, true);
      await a.close();
      await b.close();
    });
  }

  test('plain EventSource: two tabs on one channel, the older stops for good', T, async () => {
    const ch = 'tabs-eventsource';
    await bothWorkers();
    const kicks0 = await gw.workerMetric(KICKED);
    const stops0 = await gw.workerMetric(SSE_STOPS);
    const a = await browser.tab();
    const b = await browser.tab();
    const plain = (p, n) => p.evaluate(([n, c]) => window.plain(n, c), [n, ch]);
    const view = (p, n) => p.evaluate((n) => window.plainView(n), n);
    await plain(a, 'a');
    await waitUntil('a open', async () => (await view(a, 'a')).readyState === 1);
    await plain(b, 'b');
    await waitUntil('b open', async () => (await view(b, 'b')).readyState === 1);
    // a is told it was replaced; its EventSource comes back by itself (~3 s later) and is
    // answered so that it stops: CLOSED, not CONNECTING, and b keeps the channel.
    const va = await waitUntil('a closed', async () => {
      const v = await view(a, 'a');
      return v.readyState === 2 ? v : null;
    }, 15000);
    assert.deepEqual(va.closed, [{ closed: 'replaced', id: 'replaced' }]);
    assert.equal(va.opens, 1);
    assert.equal(await gw.workerMetric(SSE_STOPS), stops0 + 1, 'its one reconnect was told to stop');
    const kicks = await gw.workerMetric(KICKED);
    assert.equal(kicks - kicks0, 1, 'one kick only');
    await sleep(4000);
    assert.equal(await gw.workerMetric(KICKED), kicks, 'no kick since');
    assert.equal(await gw.workerMetric(SSE_STOPS), stops0 + 1);
    const seq = await gw.publish(ch, '"for b"');
    await waitUntil('b got it', async () => (await view(b, 'b')).msgs.includes(seq));
    const vb = await view(b, 'b');
    assert.equal(vb.readyState, 1);
    assert.equal(vb.opens, 1);
    assert.deepEqual(vb.closed, []);
    assert.ok(!(await view(a, 'a')).msgs.includes(seq));
    await a.close();
    await b.close();
  });

  test('auto: WebSocket blocked, SSE is used; SSE blocked too, long-poll', T, async () => {
    for (const [blocked, expect] of [
      [{ blockWs: true }, 'sse'],
      [{ blockWs: true, blockSse: true }, 'poll'],
    ]) {
      const ch = `fallback-${expect}`;
      const page = await browser.tab();
      await page.evaluate((b) => Object.assign(window.__net, b), blocked);
      const v0 = await open(page, 'a', { channel: ch, since: 0 });
      assert.equal(v0.transport, expect);
      const failed = v0.states.filter((s) => s.state === 'reconnecting').map((s) => s.reason);
      assert.deepEqual(failed, expect === 'sse' ? ['ws_failed'] : ['ws_failed', 'sse_failed']);
      await gw.publishMany(ch, 10);
      const v = await waitView(page, 'a', '10 messages', (x) => x.msgs.length >= 10);
      assert.deepEqual(v.msgs, range(1, 10));
      assert.equal(v.transport, expect);
      await page.close();
    }
  });

  test('a gap while the page was away is surfaced with its fields, then the rest in order', T, async () => {
    const ch = 'gap-ws';
    await bothWorkers();
    const page = await browser.tab();
    const v0 = await open(page, 'a', { channel: ch, transport: 'ws', since: 0 });
    await gw.publishMany(ch, 5);
    await waitView(page, 'a', '5 messages', (x) => x.msgs.length >= 5);
    // The page's network goes down and its worker dies; meanwhile more than the retention
    // (100 messages) is published.
    await page.evaluate(() => {
      window.__net.down = true;
    });
    await gw.killWorker(v0.worker);
    await waitView(page, 'a', 'reconnecting', (x) => x.state === 'reconnecting');
    await gw.publishMany(ch, 150);
    await page.evaluate(() => {
      window.__net.down = false;
    });
    const v = await waitView(page, 'a', 'the last message', (x) => x.msgs.includes(155), 15000);
    assert.equal(v.gaps.length, 1, JSON.stringify(v.gaps));
    const g = v.gaps[0];
    assert.equal(g.gap, true);
    assert.equal(g.since, 5);
    assert.equal(g.first_seq, 56, 'the oldest of the 100 retained');
    assert.equal(typeof g.epoch, 'number');
    assert.equal(v.epoch, g.epoch);
    assert.deepEqual(v.msgs, range(1, 5).concat(range(56, 155)));
    assert.equal(v.duplicates, 0);
    assert.equal(v.state, 'open');
    await page.close();
  });
});
