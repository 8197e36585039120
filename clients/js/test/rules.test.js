// The client's rules in Node with scripted transports (a fake WebSocket and fetch): what a
// real worker does not do on purpose — repeat a seq — and every close code and answer it
// must react to, each checked by what the client does next.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { closeAction, connect } from '../pushgate.js';

const ASSIGN = {
  worker: 'w1',
  ws_url: 'ws://worker.test/v1/ws?channel=c',
  sse_url: 'http://worker.test/v1/sse?channel=c',
  poll_url: 'http://worker.test/v1/poll?channel=c',
  expires_in: 3600,
};
const FAST = { baseDelayMs: 1, maxDelayMs: 8, openTimeoutMs: 2000 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms = 3000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(2);
  }
}

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: Object.assign({ 'Content-Type': 'application/json' }, headers),
  });
}

/** A fetch that answers assign with ASSIGN and hands every other request to `worker`. */
function fakeFetch(worker, assign = () => json(200, ASSIGN)) {
  const calls = [];
  const f = async (url, init) => {
    calls.push(String(url));
    if (String(url).includes('/v1/assign')) return assign();
    return worker(String(url), init);
  };
  f.calls = calls;
  return f;
}

/** A WebSocket class whose instances a test script drives. */
function fakeWebSocket() {
  const made = [];
  class FakeWs {
    constructor(url) {
      this.url = url;
      made.push(this);
      queueMicrotask(() => this.onopen && this.onopen());
    }
    send(t) {
      this.sent = t;
    }
    close() {
      this.closedByClient = true;
    }
    frame(obj) {
      this.onmessage({ data: JSON.stringify(obj) });
    }
    end(code, reason = '') {
      this.onclose && this.onclose({ code, reason });
    }
  }
  FakeWs.made = made;
  return FakeWs;
}

function recorder(extra) {
  const log = { msgs: [], gaps: [], states: [] };
  const opts = Object.assign(
    {
      gateway: 'http://gateway.test/',
      channel: 'c',
      onMessage: (m) => log.msgs.push(m.seq),
      onGap: (g) => log.gaps.push(g),
      onState: (s, d) => log.states.push(Object.assign({ state: s }, d)),
    },
    FAST,
    extra,
  );
  return { log, opts };
}

describe('close codes', () => {
  test('the table', () => {
    assert.deepEqual(closeAction(4001), { action: 'stop', reason: 'replaced' });
    assert.equal(closeAction(1013).action, 'backoff');
    assert.equal(closeAction(4003).action, 'backoff');
    for (const c of [1000, 1001, 1006, 1011, 1012, 4002]) assert.equal(closeAction(c).action, 'retry', String(c));
  });
});

describe('websocket', () => {
  test('duplicates and older seqs are dropped; a gap moves the position and the epoch', async () => {
    const WebSocket = fakeWebSocket();
    const { log, opts } = recorder({ WebSocket, fetch: fakeFetch(() => json(404, {})), transport: 'ws' });
    const sub = connect(opts);
    await until('open', () => sub.state === 'open');
    const ws = WebSocket.made[0];
    assert.equal(ws.url, 'ws://worker.test/v1/ws?channel=c&since=0');
    for (const s of [1, 2, 2, 1, 3]) ws.frame({ seq: s, data: s });
    assert.deepEqual(log.msgs, [1, 2, 3]);
    assert.equal(sub.duplicates, 2);
    ws.frame({ gap: true, epoch: 9, first_seq: 40 });
    ws.frame({ seq: 39, data: 'old' });
    ws.frame({ seq: 40, data: 'x' });
    assert.deepEqual(log.msgs, [1, 2, 3, 40]);
    assert.deepEqual(log.gaps, [{ gap: true, epoch: 9, first_seq: 40, since: 3, previousEpoch: null }]);
    assert.deepEqual([sub.lastSeq, sub.epoch], [40, 9]);
    // The next connection resumes from there, with the epoch.
    ws.end(1006);
    await until('reconnected', () => WebSocket.made.length === 2 && sub.state === 'open');
    assert.equal(WebSocket.made[1].url, 'ws://worker.test/v1/ws?channel=c&since=40&epoch=9');
    sub.close();
    assert.equal(sub.state, 'stopped');
    assert.ok(WebSocket.made[1].closedByClient);
  });

  test('4001 replaced: stopped, never reconnected', async () => {
    const WebSocket = fakeWebSocket();
    const fetch = fakeFetch(() => json(404, {}));
    const { log, opts } = recorder({ WebSocket, fetch, transport: 'ws' });
    const sub = connect(opts);
    await until('open', () => sub.state === 'open');
    WebSocket.made[0].end(4001, 'replaced by a newer connection on this channel');
    assert.equal(sub.state, 'stopped');
    const end = await sub.closed;
    assert.equal(end.reason, 'replaced');
    assert.equal(end.code, 4001);
    await sleep(50);
    assert.equal(WebSocket.made.length, 1);
    assert.equal(fetch.calls.filter((u) => u.includes('/v1/assign')).length, 1);
    assert.deepEqual(log.states.map((s) => s.state), ['connecting', 'open', 'stopped']);
  });

  test('1013 and 4003 back off (the wait grows); 1001 and 4002 come back at the base delay', async () => {
    const WebSocket = fakeWebSocket();
    const { log, opts } = recorder({
      WebSocket,
      fetch: fakeFetch(() => json(404, {})),
      transport: 'ws',
      baseDelayMs: 10,
      maxDelayMs: 80,
    });
    const sub = connect(opts);
    const ends = [1013, 1013, 4003, 1013];
    for (let i = 0; i < ends.length; i++) {
      await until(`open ${i}`, () => WebSocket.made.length === i + 1 && sub.state === 'open');
      WebSocket.made[i].end(ends[i]);
    }
    const waits = log.states.filter((s) => s.state === 'reconnecting');
    assert.deepEqual(waits.map((s) => s.attempt), [1, 2, 3, 4]);
    assert.deepEqual(waits.map((s) => s.reason), ['refused', 'refused', 'too_slow', 'refused']);
    // Jittered by 0.5-1.5 around 20, 40, 80 and the bound 80.
    const bounds = [20, 40, 80, 80];
    waits.forEach((s, i) => assert.ok(s.delayMs >= bounds[i] / 2 && s.delayMs <= bounds[i] * 1.5, JSON.stringify(s)));
    // A connection that worked (open for a second or more) and ends unexpectedly: the
    // wait starts over at the base delay.
    for (const [i, code] of [[4, 1001], [5, 4002]]) {
      await until(`open ${i}`, () => WebSocket.made.length === i + 1 && sub.state === 'open');
      await sleep(1050);
      WebSocket.made[i].end(code);
      const w = log.states.at(-1);
      assert.equal(w.state, 'reconnecting');
      assert.equal(w.attempt, 0);
      assert.ok(w.delayMs >= 5 && w.delayMs <= 15, JSON.stringify(w));
    }
    sub.close();
  });

  test('a WebSocket that does not open: SSE next (auto)', async () => {
    class Refused {
      constructor() {
        queueMicrotask(() => this.onclose({ code: 1006, reason: '' }));
      }
      close() {}
    }
    const body = 'id: 1\ndata: {"seq":1,"data":"a"}\n\n';
    const fetch = fakeFetch(() => new Response(body, { headers: { 'Content-Type': 'text/event-stream' } }));
    const { log, opts } = recorder({ WebSocket: Refused, fetch });
    const sub = connect(opts);
    await until('a message', () => log.msgs.length === 1);
    assert.equal(sub.transport, 'sse');
    assert.equal(log.states.find((s) => s.state === 'reconnecting').reason, 'ws_failed');
    sub.close();
  });
});

function stream(chunks) {
  const enc = new TextEncoder();
  return new ReadableStream({
    async start(ctl) {
      for (const c of chunks) {
        ctl.enqueue(enc.encode(c));
        await sleep(1);
      }
      ctl.close();
    },
  });
}

describe('sse', () => {
  test('events split anywhere, CR LF or LF, comments; closed replaced stops', async () => {
    const chunks = [
      ':\n\nid: 1\r',
      '\ndata: {"seq":1,"data":{"a":1}}\r\n\r\nda',
      'ta: {"gap":true,"epoch":4,"first_seq":7}\n\nid: 7\ndata: {"seq":7,',
      '"data":7}\n\nid: 7\ndata: {"seq":7,"data":7}\n\n',
      'id: replaced\ndata: {"closed":"replaced","message":"replaced by a newer connection on this channel"}\n\n',
    ];
    const fetch = fakeFetch(() => new Response(stream(chunks), { headers: { 'Content-Type': 'text/event-stream' } }));
    const { log, opts } = recorder({ fetch, transport: 'sse', since: 0 });
    const sub = connect(opts);
    const end = await sub.closed;
    assert.equal(end.reason, 'replaced');
    assert.deepEqual(log.msgs, [1, 7]);
    assert.equal(sub.duplicates, 1);
    assert.deepEqual(log.gaps.map((g) => [g.epoch, g.first_seq, g.since]), [[4, 7, 1]]);
    assert.equal(fetch.calls.filter((u) => u.includes('/v1/sse')).length, 1, 'not reconnected');
    assert.equal(fetch.calls[1], 'http://worker.test/v1/sse?channel=c&since=0');
  });

  test('refused backs off; resync and a stream that ends come back with since and epoch', async () => {
    const bodies = [
      'data: {"gap":true,"epoch":2,"first_seq":1}\n\nid: 1\ndata: {"seq":1,"data":1}\n\ndata: {"closed":"refused","message":"try again later"}\n\n',
      'id: 2\ndata: {"seq":2,"data":2}\n\ndata: {"closed":"resync","message":"reconnect with since"}\n\n',
      'id: 3\ndata: {"seq":3,"data":3}\n\n',
    ];
    let n = 0;
    const fetch = fakeFetch(() => {
      const b = bodies[n++];
      return b
        ? new Response(stream([b]), { headers: { 'Content-Type': 'text/event-stream' } })
        : json(409, { error: 'replaced', message: 'done' });
    });
    const { log, opts } = recorder({ fetch, transport: 'sse' });
    const sub = connect(opts);
    await sub.closed;
    const sse = fetch.calls.filter((u) => u.includes('/v1/sse'));
    assert.deepEqual(sse, [
      'http://worker.test/v1/sse?channel=c&since=0',
      'http://worker.test/v1/sse?channel=c&since=1&epoch=2',
      'http://worker.test/v1/sse?channel=c&since=2&epoch=2',
      'http://worker.test/v1/sse?channel=c&since=3&epoch=2',
    ]);
    assert.deepEqual(log.msgs, [1, 2, 3]);
    const waits = log.states.filter((s) => s.state === 'reconnecting').map((s) => s.reason);
    assert.deepEqual(waits, ['refused', 'resync', 'closed']);
  });
});

describe('long-poll', () => {
  test('positions from answers, gap fields, 409 stops; 503 refused and 429 Retry-After wait', async () => {
    const answers = [
      () => json(200, { messages: [], next: 0 }),
      () => json(200, { messages: [{ seq: 5, data: 5 }, { seq: 6, data: 6 }], next: 6, gap: true, epoch: 3, first_seq: 5 }),
      () => json(503, { error: 'refused', message: 'try again later' }),
      () => json(429, { error: 'connect_rate_limited', message: 'slow down' }, { 'Retry-After': '1' }),
      () => json(200, { messages: [{ seq: 6, data: 6 }, { seq: 7, data: 7 }], next: 7 }),
      () => json(409, { error: 'replaced', message: 'replaced by a newer connection on this channel' }),
    ];
    let n = 0;
    const fetch = fakeFetch(() => answers[n++]());
    const { log, opts } = recorder({ fetch, transport: 'poll', pollTimeoutSecs: 25 });
    const t0 = Date.now();
    const sub = connect(opts);
    const end = await sub.closed;
    assert.equal(end.reason, 'replaced');
    assert.equal(end.status, 409);
    assert.deepEqual(log.msgs, [5, 6, 7]);
    assert.equal(sub.duplicates, 1);
    assert.deepEqual(log.gaps.map((g) => [g.epoch, g.first_seq]), [[3, 5]]);
    const polls = fetch.calls.filter((u) => u.includes('/v1/poll'));
    assert.deepEqual(polls, [
      'http://worker.test/v1/poll?channel=c&since=0&timeout=0',
      'http://worker.test/v1/poll?channel=c&since=0&timeout=25',
      'http://worker.test/v1/poll?channel=c&since=6&epoch=3&timeout=25',
      'http://worker.test/v1/poll?channel=c&since=6&epoch=3&timeout=0',
      'http://worker.test/v1/poll?channel=c&since=6&epoch=3&timeout=0',
      'http://worker.test/v1/poll?channel=c&since=7&epoch=3&timeout=25',
    ]);
    const waits = log.states.filter((s) => s.state === 'reconnecting');
    assert.deepEqual(waits.map((s) => s.reason), ['refused', 'connect_rate_limited']);
    assert.ok(waits[1].delayMs >= 1000, 'Retry-After honoured');
    assert.ok(Date.now() - t0 >= 1000);
  });

  test('live only: the position comes from the first answer', async () => {
    const answers = [
      () => json(200, { messages: [], next: 41 }),
      () => json(200, { messages: [{ seq: 42, data: 1 }], next: 42 }),
      () => json(409, { error: 'replaced', message: '' }),
    ];
    let n = 0;
    const fetch = fakeFetch(() => answers[n++]());
    const { log, opts } = recorder({ fetch, transport: 'poll', since: null });
    const sub = connect(opts);
    await sub.closed;
    const polls = fetch.calls.filter((u) => u.includes('/v1/poll'));
    assert.deepEqual(polls, [
      'http://worker.test/v1/poll?channel=c&timeout=0',
      'http://worker.test/v1/poll?channel=c&since=41&timeout=30',
      'http://worker.test/v1/poll?channel=c&since=42&timeout=30',
    ]);
    assert.deepEqual(log.msgs, [42]);
  });
});

describe('assign', () => {
  test('5xx and network errors back off; 400 stops; a token function is asked each time', async () => {
    let n = 0;
    const tokens = [];
    const answers = [
      () => json(503, { error: 'no_worker', message: 'no healthy worker' }),
      () => {
        throw new TypeError('network');
      },
      () => json(400, { error: 'bad_channel', message: 'bad' }),
    ];
    const fetch = fakeFetch(
      () => json(404, {}),
      () => answers[n++](),
    );
    const { log, opts } = recorder({
      fetch,
      channel: undefined,
      token: () => {
        tokens.push(n);
        return 'tok' + n;
      },
    });
    const sub = connect(opts);
    const end = await sub.closed;
    assert.equal(end.reason, 'bad_channel');
    assert.deepEqual(tokens, [0, 1, 2]);
    assert.equal(fetch.calls[2], 'http://gateway.test/v1/assign?token=tok2');
    assert.deepEqual(
      log.states.filter((s) => s.state === 'reconnecting').map((s) => s.reason),
      ['no_worker', 'assign_failed'],
    );
  });

  test('a static token refused (401) stops; options are checked', async () => {
    const fetch = fakeFetch(() => json(404, {}), () => json(401, { error: 'token_expired', message: 'expired' }));
    const { opts } = recorder({ fetch, channel: undefined, token: 'old' });
    const end = await connect(opts).closed;
    assert.deepEqual([end.reason, end.status], ['token_expired', 401]);
    assert.throws(() => connect({ channel: 'c' }), /gateway/);
    assert.throws(() => connect({ gateway: 'http://g' }), /channel or token/);
    assert.throws(() => connect({ gateway: 'http://g', channel: 'c', transport: 'carrier-pigeon' }), /unknown/);
    assert.throws(() => connect({ gateway: 'http://g', channel: 'c', since: '7' }), /since/);
    assert.throws(() => connect({ gateway: 'http://g', channel: 'c', epoch: -1 }), /epoch/);
  });
});
