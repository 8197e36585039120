// Types of pushgate-client (pushgate.js).

export declare const VERSION: string;

export type Transport = 'ws' | 'sse' | 'poll';

/** The transports `transport: 'auto'` tries, in order. */
export declare const TRANSPORTS: readonly Transport[];

/** WebSocket close codes a worker sends. */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL: 1002;
  ABNORMAL: 1006;
  INVALID_DATA: 1007;
  TOO_BIG: 1009;
  INTERNAL: 1011;
  RESTART: 1012;
  TRY_AGAIN: 1013;
  REPLACED: 4001;
  RESYNC: 4002;
  TOO_SLOW: 4003;
}>;

/**
 * What ends a connection, as the reconnect rules see it: `retry` (an unexpected end:
 * reconnect after the base delay), `backoff` (the delay doubles each time), `wait` (the
 * server's Retry-After), `stop` (do not reconnect).
 */
export type Action = 'retry' | 'backoff' | 'wait' | 'stop';

/** What the client does when a worker closes its WebSocket with `code`. */
export declare function closeAction(code: number): { action: Exclude<Action, 'wait'>; reason: string };

export interface Message {
  seq: number;
  /** The published JSON value (a string when the payload was not JSON). */
  data: unknown;
  /** The channel's epoch, once known (null before). */
  epoch: number | null;
}

export interface Gap {
  gap: true;
  /** The channel's epoch now. */
  epoch: number;
  /** The first seq that follows; seqs after `since` and before it are lost. */
  first_seq: number;
  /** The client's last seq before the gap (null: live only, nothing received). */
  since: number | null;
  /** The epoch the client knew before (null: none). */
  previousEpoch: number | null;
}

export type State = 'connecting' | 'open' | 'reconnecting' | 'stopped';

export interface StateDetail {
  transport: Transport | null;
  /** The worker id the last assign named. */
  worker: string | null;
  /**
   * Why (reconnecting, stopped): `replaced`, `closed` (by `close()`), `refused`,
   * `too_slow`, `resync`, `shutdown`, `ws_failed`, `sse_failed`, `poll_failed`,
   * `open_timeout`, `heartbeat_timeout`, `assign_failed`, or the server's error code
   * (`no_worker`, `token_expired`, `bad_channel`, ...).
   */
  reason?: string;
  action?: Action;
  /** WebSocket close code. */
  code?: number;
  /** HTTP status of a refused request. */
  status?: number;
  /** The server's error code and message, when it sent one. */
  error?: string;
  message?: string;
  /** reconnecting: how long until the next attempt, and how many failures in a row. */
  delayMs?: number;
  attempt?: number;
}

export interface ConnectOptions {
  /** The gateway's base URL, e.g. `https://push.example.com`. */
  gateway: string;
  /** The channel (open mode); with auth, the token names it. */
  channel?: string;
  /** The subscriber token (HS256 JWT from your backend), or a function asked before each assign. */
  token?: string | (() => string | Promise<string>);
  /** More query parameters for `/v1/assign` (e.g. `{ tls: 'false' }`). */
  assignParams?: Record<string, string | number | boolean>;
  /** `auto` (default: ws, then sse, then poll), one transport, or an order of them. */
  transport?: 'auto' | Transport | Transport[];
  /** Resume after this seq (default 0: everything retained, then live); null: live only. */
  since?: number | null;
  /** The epoch `since` belongs to, if known. */
  epoch?: number | null;
  onMessage?: (message: Message) => void;
  onGap?: (gap: Gap) => void;
  onState?: (state: State, detail: StateDetail) => void;
  /** Reconnect wait after an unexpected end (jittered 0.5-1.5x); default 200. */
  baseDelayMs?: number;
  /** Most a wait grows to by doubling (before jitter); default 3200. */
  maxDelayMs?: number;
  /** A transport that has not opened by then counts as failed; default 10000. */
  openTimeoutMs?: number;
  /** Long-poll hold asked for, seconds; default 30. */
  pollTimeoutSecs?: number;
  /** An SSE stream silent this long (no event, no heartbeat) is reopened; default 75000. */
  heartbeatTimeoutMs?: number;
  /** Where `globalThis` has none, or to wrap them. */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

export interface Ending extends Omit<StateDetail, 'transport' | 'worker'> {
  action: Action;
  reason: string;
}

export declare class Subscription {
  readonly gateway: string;
  readonly channel: string | null;
  /** The last seq received (null: live only, nothing received yet). */
  readonly lastSeq: number | null;
  readonly epoch: number | null;
  readonly state: State;
  readonly transport: Transport | null;
  readonly worker: string | null;
  /** Messages dropped because their seq was not newer than `lastSeq`. */
  readonly duplicates: number;
  /** Resolves once the subscription has stopped, with why. */
  readonly closed: Promise<Ending>;
  /** Ends the subscription; nothing is reconnected. */
  close(): void;
}

export declare function connect(options: ConnectOptions): Subscription;
