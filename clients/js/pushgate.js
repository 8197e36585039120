// pushgate-client: subscribe to a pushgate channel over WebSocket, Server-Sent Events or
// long-poll, with resume, back-off and the worker's close codes honoured.
// A dependency-free ES module for browsers (and Node.js 18+ with a WebSocket global).
// Licensed under the Apache License, Version 2.0.

/** The version of this client. */
export const VERSION = '0.1.0';

/** WebSocket close codes a worker sends, and what each means to a client. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // the worker is shutting down: reconnect (re-assign) at once
  PROTOCOL: 1002,
  ABNORMAL: 1006, // no close frame (the connection was cut): reconnect at once
  INVALID_DATA: 1007,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  RESTART: 1012,
  TRY_AGAIN: 1013, // the gateway refused the subscription: back off
  REPLACED: 4001, // a newer connection took the channel: stop
  RESYNC: 4002, // reconnect with since
  TOO_SLOW: 4003, // the client did not read fast enough: back off
});

/** Transports in the order `transport: 'auto'` tries them. */
export const TRANSPORTS = Object.freeze(['ws', 'sse', 'poll']);

const DEFAULTS = {
  baseDelayMs: 200,
  maxDelayMs: 3200,
  openTimeoutMs: 10000,
  pollTimeoutSecs: 30,
  heartbeatTimeoutMs: 75000,
};

// What ends a connection, as the reconnect rules see it:
//   'retry'   an unexpected end after a working connection: reconnect after the base delay
//   'backoff' a failure, or the server asked to slow down: the delay doubles each time
//   'wait'    the server said how long (429 Retry-After)
//   'stop'    do not reconnect (replaced, or a request that cannot succeed)
function ending(action, reason, extra) {
  return Object.assign({ action, reason }, extra);
}

/**
 * What a client does when a worker closes its WebSocket with `code`.
 * @param {number} code
 * @returns {{action: 'retry'|'backoff'|'stop', reason: string}}
 */
export function closeAction(code) {
  switch (code) {
    case CloseCode.REPLACED:
      return { action: 'stop', reason: 'replaced' };
    case CloseCode.TRY_AGAIN:
      return { action: 'backoff', reason: 'refused' };
    case CloseCode.TOO_SLOW:
      return { action: 'backoff', reason: 'too_slow' };
    case CloseCode.RESYNC:
      return { action: 'retry', reason: 'resync' };
    case CloseCode.GOING_AWAY:
      return { action: 'retry', reason: 'shutdown' };
    case CloseCode.PROTOCOL:
    case CloseCode.INVALID_DATA:
    case CloseCode.TOO_BIG:
      return { action: 'backoff', reason: 'protocol_error' };
    default:
      return { action: 'retry', reason: 'closed' };
  }
}

// The reconnect rule of an HTTP answer that is not a success (assign, SSE, poll).
function httpEnding(status, body, headers, authRetry) {
  const code = body && typeof body.error === 'string' ? body.error : undefined;
  const extra = { status, error: code, message: body && body.message };
  if (status === 409 || code === 'replaced') return ending('stop', 'replaced', extra);
  if (status === 429) {
    const secs = Number(headers && headers.get && headers.get('retry-after'));
    const ms = Number.isFinite(secs) && secs > 0 ? Math.min(secs, 3600) * 1000 : 0;
    return ending('wait', code || 'rate_limited', Object.assign(extra, { retryAfterMs: ms }));
  }
  if (status === 401 || status === 403) {
    return ending(authRetry ? 'backoff' : 'stop', code || 'unauthorized', extra);
  }
  if (status === 400) return ending('stop', code || 'bad_request', extra);
  if (status === 503 && code === 'refused') return ending('backoff', 'refused', extra);
  return ending('backoff', code || 'http_' + status, Object.assign(extra, { transportFailed: status === 404 || status === 405 }));
}

async function readJson(resp) {
  try {
    return await resp.json();
  } catch {
    return null;
  }
}

function withQuery(url, params) {
  let out = url;
  for (const [k, v] of params) {
    if (v === null || v === undefined) continue;
    out += (out.includes('?') ? '&' : '?') + k + '=' + encodeURIComponent(String(v));
  }
  return out;
}

function transportOrder(t) {
  if (t === undefined || t === null || t === 'auto') return TRANSPORTS.slice();
  const list = Array.isArray(t) ? t.slice() : [t];
  if (list.length === 0) throw new TypeError('transport: empty list');
  for (const x of list) {
    if (!TRANSPORTS.includes(x)) throw new TypeError(`transport: unknown "${x}" (ws, sse, poll or auto)`);
  }
  return list;
}

function report(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (e) {
    // A callback's exception must not break the connection; surface it anyway.
    setTimeout(() => {
      throw e;
    }, 0);
  }
}

/**
 * Subscribes to a channel and keeps the subscription alive until `close()` or a stop
 * (another connection took the channel, or a request that cannot succeed).
 * @param {import('./pushgate').ConnectOptions} options
 * @returns {Subscription}
 */
export function connect(options) {
  return new Subscription(options);
}

export class Subscription {
  constructor(options) {
    const o = options || {};
    if (typeof o.gateway !== 'string' || o.gateway === '') {
      throw new TypeError('gateway: the gateway base URL is required');
    }
    if (!o.channel && !o.token) throw new TypeError('channel or token is required');
    for (const k of ['since', 'epoch']) {
      const v = o[k];
      if (v !== undefined && v !== null && !(Number.isSafeInteger(v) && v >= 0)) {
        throw new TypeError(`${k}: a non-negative integer or null, not ${JSON.stringify(v)}`);
      }
    }
    this.gateway = o.gateway.replace(/\/+$/, '');
    this.channel = o.channel || null;
    /** Last seq received (null: live only, nothing received yet). */
    this.lastSeq = o.since === undefined ? 0 : o.since;
    /** The channel's epoch, once known (from `epoch` or a gap). */
    this.epoch = o.epoch === undefined ? null : o.epoch;
    this.state = 'connecting';
    this.transport = null;
    this.worker = null;
    /** Messages dropped because their seq was not newer than `lastSeq`. */
    this.duplicates = 0;
    this._o = o;
    this._order = transportOrder(o.transport);
    this._idx = 0;
    this._attempt = 0;
    this._gen = 0;
    this._conn = null;
    this._timer = null;
    this._openedAt = 0;
    this._stopped = false;
    this._cfg = Object.assign({}, DEFAULTS);
    for (const k of Object.keys(DEFAULTS)) {
      if (typeof o[k] === 'number' && o[k] >= 0) this._cfg[k] = o[k];
    }
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    this._fetch = o.fetch || globalThis.fetch.bind(globalThis);
    this.closed = new Promise((resolve) => {
      this._resolveClosed = resolve;
    });
    this._setState('connecting', { attempt: 0 });
    this._attemptNow();
  }

  /** Ends the subscription; nothing is reconnected. */
  close() {
    this._stop(ending('stop', 'closed'));
  }

  _setState(state, detail) {
    this.state = state;
    report(this._o.onState, state, Object.assign({ transport: this.transport, worker: this.worker }, detail));
  }

  _stop(end) {
    if (this._stopped) return;
    this._stopped = true;
    this._gen++;
    clearTimeout(this._timer);
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.close();
    this._setState('stopped', end);
    this._resolveClosed(end);
  }

  async _token() {
    const t = this._o.token;
    if (typeof t === 'function') return await t();
    return t;
  }

  async _assign() {
    const params = [];
    if (this.channel) params.push(['channel', this.channel]);
    const token = await this._token();
    if (token) params.push(['token', token]);
    for (const [k, v] of Object.entries(this._o.assignParams || {})) params.push([k, v]);
    let resp;
    try {
      resp = await this._fetch(withQuery(this.gateway + '/v1/assign', params), {
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      throw ending('backoff', 'assign_failed', { error: String(e && e.message ? e.message : e) });
    }
    const body = await readJson(resp);
    if (!resp.ok || !body) {
      throw httpEnding(resp.status, body, resp.headers, typeof this._o.token === 'function');
    }
    return body;
  }

  async _attemptNow() {
    const gen = ++this._gen;
    let assigned;
    try {
      assigned = await this._assign();
    } catch (e) {
      if (gen === this._gen) this._ended(gen, e && e.action ? e : ending('backoff', 'assign_failed'), false);
      return;
    }
    if (gen !== this._gen) return;
    const kind = this._order[this._idx % this._order.length];
    const url = assigned[kind + '_url'];
    this.worker = assigned.worker || null;
    this.transport = kind;
    if (typeof url !== 'string') {
      this._ended(gen, ending('backoff', 'no_url', { transportFailed: true }), false);
      return;
    }
    let opened = false;
    const handlers = {
      open: () => {
        if (gen !== this._gen || opened) return;
        opened = true;
        this._openedAt = Date.now();
        this._setState('open', {});
      },
      frame: (f) => {
        if (gen === this._gen) this._frame(f);
      },
      end: (e) => {
        if (gen !== this._gen) return;
        this._conn = null;
        this._ended(gen, e, opened);
      },
    };
    const open = { ws: openWs, sse: openSse, poll: openPoll }[kind];
    try {
      this._conn = open(this, url, handlers);
    } catch (e) {
      this._ended(gen, ending('backoff', kind + '_failed', { transportFailed: true, error: String(e) }), false);
    }
  }

  // The resume position for the next request: since (unless live only) and epoch.
  _resume() {
    return [
      ['since', this.lastSeq],
      ['epoch', this.epoch],
    ];
  }

  _frame(f) {
    if (!f || typeof f !== 'object') return;
    if (f.gap === true) {
      const gap = {
        gap: true,
        epoch: f.epoch,
        first_seq: f.first_seq,
        since: this.lastSeq,
        previousEpoch: this.epoch,
      };
      if (typeof f.epoch === 'number') this.epoch = f.epoch;
      if (typeof f.first_seq === 'number') this.lastSeq = Math.max(0, f.first_seq - 1);
      report(this._o.onGap, gap);
      return;
    }
    if (typeof f.seq !== 'number') return;
    if (this.lastSeq !== null && f.seq <= this.lastSeq) {
      this.duplicates++;
      return;
    }
    this.lastSeq = f.seq;
    report(this._o.onMessage, { seq: f.seq, data: f.data, epoch: this.epoch });
  }

  _ended(gen, end, opened) {
    if (this._stopped || gen !== this._gen) return;
    if (end.action === 'stop') {
      this._stop(end);
      return;
    }
    if (end.transportFailed) {
      // This transport did not open: the next attempt tries the next one in the order.
      this._idx = (this._idx + 1) % this._order.length;
    }
    const lived = opened && Date.now() - this._openedAt >= 1000;
    if (end.action === 'retry' && lived) this._attempt = 0;
    else this._attempt++;
    const cfg = this._cfg;
    let delay = Math.min(cfg.baseDelayMs * 2 ** this._attempt, cfg.maxDelayMs);
    delay = Math.round(delay * (0.5 + Math.random()));
    if (end.action === 'wait') delay = Math.max(delay, end.retryAfterMs || 0);
    this._setState('reconnecting', Object.assign({}, end, { delayMs: delay, attempt: this._attempt }));
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (!this._stopped && gen === this._gen) this._attemptNow();
    }, delay);
  }
}

// Each transport: open(sub, url, {open, frame, end}) -> {close()}. `end` is called once
// with the reconnect rule, unless `close()` came first.

function openWs(sub, assignedUrl, h) {
  const WS = sub._WebSocket;
  if (typeof WS !== 'function') {
    queueMicrotask(() => h.end(ending('backoff', 'no_websocket', { transportFailed: true })));
    return { close() {} };
  }
  let done = false;
  let opened = false;
  let ws;
  const finish = (e) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    h.end(e);
  };
  try {
    ws = new WS(withQuery(assignedUrl, sub._resume()));
  } catch (e) {
    queueMicrotask(() => finish(ending('backoff', 'ws_failed', { transportFailed: true, error: String(e) })));
    return { close() {} };
  }
  const timer = setTimeout(() => {
    if (!opened) {
      finish(ending('backoff', 'open_timeout', { transportFailed: true }));
      try {
        ws.close();
      } catch {
        /* closing a socket that never opened */
      }
    }
  }, sub._cfg.openTimeoutMs);
  ws.onopen = () => {
    opened = true;
    clearTimeout(timer);
    h.open();
  };
  ws.onmessage = (ev) => {
    if (done || typeof ev.data !== 'string') return;
    let f;
    try {
      f = JSON.parse(ev.data);
    } catch {
      return;
    }
    h.frame(f);
  };
  ws.onclose = (ev) => {
    if (!opened) {
      finish(ending('backoff', 'ws_failed', { transportFailed: true, code: ev.code }));
      return;
    }
    const a = closeAction(ev.code);
    finish(ending(a.action, a.reason, { code: ev.code, message: ev.reason }));
  };
  return {
    close() {
      done = true;
      clearTimeout(timer);
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    },
  };
}

// Reads an event stream from a fetch body: calls onEvent({data, id, event}) per event,
// onBytes() for any bytes (heartbeat comments too).
async function readEventStream(body, onEvent, onBytes) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const eol = /\r\n|\r|\n/g;
  let buf = '';
  let data = [];
  let id = null;
  let event = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onBytes();
    buf += decoder.decode(value, { stream: true });
    let pos = 0;
    let m;
    eol.lastIndex = 0;
    while ((m = eol.exec(buf)) !== null) {
      // A CR at the very end may be the first half of a CR LF: wait for the next bytes.
      if (m[0] === '\r' && eol.lastIndex === buf.length) break;
      const line = buf.slice(pos, m.index);
      pos = eol.lastIndex;
      if (line === '') {
        if (data.length) onEvent({ data: data.join('\n'), id, event: event || 'message' });
        data = [];
        event = '';
        continue;
      }
      if (line[0] === ':') continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val[0] === ' ') val = val.slice(1);
      if (field === 'data') data.push(val);
      else if (field === 'id') id = val;
      else if (field === 'event') event = val;
    }
    buf = buf.slice(pos);
  }
}

function openSse(sub, assignedUrl, h) {
  const ctl = new AbortController();
  let done = false;
  let opened = false;
  let idle = null;
  const finish = (e) => {
    if (done) return;
    done = true;
    clearTimeout(idle);
    ctl.abort();
    h.end(e);
  };
  const arm = (ms, e) => {
    clearTimeout(idle);
    idle = setTimeout(() => finish(e), ms);
  };
  arm(sub._cfg.openTimeoutMs, ending('backoff', 'open_timeout', { transportFailed: true }));
  (async () => {
    let resp;
    try {
      resp = await sub._fetch(withQuery(assignedUrl, sub._resume()), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        credentials: 'omit',
        signal: ctl.signal,
      });
    } catch (e) {
      finish(ending('backoff', 'sse_failed', { transportFailed: true, error: String(e) }));
      return;
    }
    const type = resp.headers.get('content-type') || '';
    if (resp.status !== 200 || !type.startsWith('text/event-stream') || !resp.body) {
      const body = resp.status === 200 ? null : await readJson(resp);
      const e = resp.status === 200
        ? ending('backoff', 'not_an_event_stream', { transportFailed: true })
        : httpEnding(resp.status, body, resp.headers, typeof sub._o.token === 'function');
      finish(e);
      return;
    }
    opened = true;
    h.open();
    const beat = sub._cfg.heartbeatTimeoutMs;
    const silent = ending('retry', 'heartbeat_timeout');
    arm(beat, silent);
    let last = null;
    try {
      await readEventStream(
        resp.body,
        (ev) => {
          if (done) return;
          let f;
          try {
            f = JSON.parse(ev.data);
          } catch {
            return;
          }
          if (f && typeof f.closed === 'string') {
            last = f;
            return;
          }
          h.frame(f);
        },
        () => arm(beat, silent),
      );
    } catch {
      /* the stream was cut: an unexpected end, below */
    }
    if (last) {
      // The worker's last word: {"closed":"replaced"|"refused"|"resync",...}.
      const map = {
        replaced: ['stop', 'replaced'],
        refused: ['backoff', 'refused'],
        resync: ['retry', 'resync'],
      };
      const [action, reason] = map[last.closed] || ['retry', last.closed];
      finish(ending(action, reason, { message: last.message }));
    } else {
      finish(ending('retry', opened ? 'closed' : 'sse_failed'));
    }
  })();
  return {
    close() {
      done = true;
      clearTimeout(idle);
      ctl.abort();
    },
  };
}

function openPoll(sub, assignedUrl, h) {
  let done = false;
  let ctl = null;
  let opened = false;
  const finish = (e) => {
    if (done) return;
    done = true;
    if (ctl) ctl.abort();
    h.end(e);
  };
  (async () => {
    // The first poll answers at once (timeout=0), so the subscription is known to work;
    // then each poll is held until a message or the timeout.
    let hold = 0;
    while (!done) {
      ctl = new AbortController();
      const limit = (hold + 15) * 1000 + (opened ? 0 : sub._cfg.openTimeoutMs);
      const timer = setTimeout(() => ctl.abort(), limit);
      const params = sub._resume().concat([['timeout', hold]]);
      let resp;
      let body;
      try {
        resp = await sub._fetch(withQuery(assignedUrl, params), {
          cache: 'no-store',
          credentials: 'omit',
          signal: ctl.signal,
        });
        body = await readJson(resp);
      } catch (e) {
        clearTimeout(timer);
        if (done) return;
        finish(opened ? ending('retry', 'poll_failed') : ending('backoff', 'poll_failed', { transportFailed: true, error: String(e) }));
        return;
      }
      clearTimeout(timer);
      if (done) return;
      if (resp.status !== 200 || !body || !Array.isArray(body.messages)) {
        finish(httpEnding(resp.status, body, resp.headers, typeof sub._o.token === 'function'));
        return;
      }
      if (!opened) {
        opened = true;
        h.open();
      }
      if (body.gap === true) h.frame({ gap: true, epoch: body.epoch, first_seq: body.first_seq });
      for (const m of body.messages) h.frame(m);
      // A live-only poll learns the channel's position from `next`: the polls that follow
      // resume from it, so nothing published between two polls is missed.
      if (sub.lastSeq === null && typeof body.next === 'number') sub.lastSeq = body.next;
      hold = sub._cfg.pollTimeoutSecs;
    }
  })();
  return {
    close() {
      done = true;
      if (ctl) ctl.abort();
    },
  };
}
