//! The lean client plane: every client of a process is a small struct in a per-thread
//! table, driven by one mio event loop per thread (the worker's own design): no task,
//! buffer or timer per idle client, so a million fit on one machine. It speaks the same
//! contract as `clients::client_task` (assign per attempt, resume with `since`/`epoch`,
//! the same frames checked by the same `on_text`, the same counters and error kinds) over
//! plain TCP to pushgate; TLS and Nchan stay on the task-per-client plane.
//!
//! Assignments go through the tokio `Gateways` pool (a short task per assign, so failover
//! and keep-alive are shared); connects, handshakes, frames, events and poll answers are
//! the loop's. Per client: the struct (~400 B) and its checker's ranges; buffers exist only
//! while a frame, head or request is half done.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use sha1::{Digest, Sha1};

use crate::checker::SeqChecker;
use crate::cli::Transport;
use crate::clients::{assign, jitter, log_end, on_gap, on_parsed, Assignment, ClientCtx, Slot};
use crate::net::{with_param, Target};

const WAKE: Token = Token(usize::MAX);
/// Bytes read per `read` call (one buffer per thread).
const SCRATCH: usize = 64 * 1024;
/// Largest response head or half-received frame/event/body kept for a client.
const MAX_PENDING: usize = 16 << 20;

/// What the process's phases hand the plane.
enum Cmd {
    Start {
        index: u64,
        slot: Arc<Slot>,
    },
    Assigned {
        ord: u32,
        tgen: u32,
        result: Result<Assignment, String>,
        assign_us: u64,
    },
    Churn(u32),
    Stop,
}

struct Thread {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    join: Option<std::thread::JoinHandle<Vec<(u64, SeqChecker)>>>,
}

/// The plane: `threads` event loops; client k (in start order) lives on thread k % T.
pub struct LeanPlane {
    threads: Vec<Thread>,
    started: u64,
}

impl LeanPlane {
    /// Why `plan`'s clients cannot use this plane, if they cannot.
    pub fn unsupported(plan: &crate::cli::Plan) -> Option<&'static str> {
        let c = &plan.common;
        if c.tls || c.ca.is_some() || c.insecure {
            return Some("TLS");
        }
        if !plan.server().has_metrics() {
            return Some("a target other than pushgate");
        }
        None
    }

    /// Starts `threads` loops (at least one); assigns are spawned on the current runtime.
    pub fn new(ctx: Arc<ClientCtx>, threads: usize) -> std::io::Result<LeanPlane> {
        let rt = tokio::runtime::Handle::current();
        let mut out = Vec::new();
        for t in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = mpsc::channel();
            let lp = Loop {
                ctx: ctx.clone(),
                rt: rt.clone(),
                poll,
                rx,
                tx: tx.clone(),
                waker: waker.clone(),
                clients: Vec::new(),
                timers: BinaryHeap::new(),
                epoch: Instant::now(),
                workers: HashMap::new(),
                scratch: vec![0; SCRATCH],
                seed: rand::random(),
            };
            let join = std::thread::Builder::new()
                .name(format!("lean-{t}"))
                .spawn(move || lp.run())?;
            out.push(Thread {
                tx,
                waker,
                join: Some(join),
            });
        }
        Ok(LeanPlane {
            threads: out,
            started: 0,
        })
    }

    fn send(&self, thread: usize, cmd: Cmd) {
        let t = &self.threads[thread];
        if t.tx.send(cmd).is_ok() {
            let _ = t.waker.wake();
        }
    }

    /// Starts the client of global index `index`.
    pub fn start(&mut self, index: u64, slot: Arc<Slot>) {
        let thread = (self.started % self.threads.len() as u64) as usize;
        self.started += 1;
        self.send(thread, Cmd::Start { index, slot });
    }

    /// A handle that makes the k-th started client drop and come back (churn).
    pub fn churner(&self) -> Churner {
        Churner(
            self.threads
                .iter()
                .map(|t| (t.tx.clone(), t.waker.clone()))
                .collect(),
        )
    }

    /// Closes every client; returns their checkers in start order.
    pub fn stop(mut self) -> Vec<SeqChecker> {
        for t in 0..self.threads.len() {
            self.send(t, Cmd::Stop);
        }
        let mut all: Vec<(u64, SeqChecker)> = Vec::with_capacity(self.started as usize);
        for t in &mut self.threads {
            if let Some(j) = t.join.take() {
                all.extend(j.join().unwrap_or_default());
            }
        }
        all.sort_by_key(|(index, _)| *index);
        all.into_iter().map(|(_, c)| c).collect()
    }
}

/// Sends churn to the plane's threads (cloneable into the churn task).
#[derive(Clone)]
pub struct Churner(Vec<(mpsc::Sender<Cmd>, Arc<Waker>)>);

impl Churner {
    /// Churns the k-th started client.
    pub fn churn(&self, k: usize) {
        let n = self.0.len();
        let (tx, waker) = &self.0[k % n];
        if tx.send(Cmd::Churn((k / n) as u32)).is_ok() {
            let _ = waker.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting out a back-off (a `Retry` timer is set), or not started.
    Waiting,
    /// `/v1/assign` in flight.
    Assigning,
    /// TCP connect in progress (the request waits in `out`).
    Connecting,
    /// Request sent: reading the answer's head (and, for poll, its body).
    Head,
    /// WebSocket or event stream open.
    Open,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// The back-off is over: attempt again.
    Retry,
    /// The attempt (assign, connect, handshake) ran past `--connect-timeout`.
    Connect,
    /// A poll request ran past its `timeout` + 15 s.
    Poll,
}

/// How a session or attempt ended.
enum End {
    Churned,
    Error(String),
}

/// One client. Buffers are empty (no allocation) while it is idle.
struct Client {
    index: u64,
    slot: Arc<Slot>,
    checker: SeqChecker,
    sock: Option<TcpStream>,
    /// Unsent bytes (request, pong, close).
    out: Vec<u8>,
    /// Received bytes not yet a whole head, frame, event or body.
    inbuf: Vec<u8>,
    /// The WebSocket message being reassembled from fragments (rare).
    frag: Vec<u8>,
    worker: Option<Arc<str>>,
    /// Poll only: `host:port` and the poll path of this session's worker.
    poll_at: Option<Box<(String, String)>>,
    started: Instant,
    assign_us: u64,
    /// Poll: the next request's `since`.
    since: u64,
    /// Bumped when the socket changes (tokens carry it).
    sgen: u32,
    /// Bumped when the pending timers no longer apply.
    tgen: u32,
    sessions: u32,
    failures: u32,
    transport: Transport,
    state: State,
    /// Not counted in `first_done` yet.
    first: bool,
    /// Counted as connected (`stats.up`).
    up: bool,
}

/// One thread's loop and its clients.
struct Loop {
    ctx: Arc<ClientCtx>,
    rt: tokio::runtime::Handle,
    poll: Poll,
    rx: mpsc::Receiver<Cmd>,
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    clients: Vec<Client>,
    /// (due ms since `epoch`, client, tgen, kind); stale entries are skipped when they fire.
    timers: BinaryHeap<Reverse<(u64, u32, u32, TimerKind)>>,
    epoch: Instant,
    /// Worker names, shared by the clients on them.
    workers: HashMap<String, Arc<str>>,
    scratch: Vec<u8>,
    seed: u64,
}

fn token(ord: u32, sgen: u32) -> Token {
    Token(((sgen as usize) << 32) | ord as usize)
}

impl Loop {
    fn run(mut self) -> Vec<(u64, SeqChecker)> {
        let mut events = Events::with_capacity(1024);
        let mut stopping = false;
        while !stopping {
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((due, ..))| Duration::from_millis(due.saturating_sub(self.now_ms())));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "lean client loop: poll failed");
                    break;
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKE {
                    continue;
                }
                let t = ev.token().0;
                let (ord, sgen) = ((t & 0xffff_ffff) as u32, (t >> 32) as u32);
                if self
                    .clients
                    .get(ord as usize)
                    .is_some_and(|c| c.sgen == sgen)
                {
                    self.on_event(
                        ord,
                        ev.is_writable(),
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    );
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                match cmd {
                    Cmd::Start { index, slot } => self.start(index, slot),
                    Cmd::Assigned {
                        ord,
                        tgen,
                        result,
                        assign_us,
                    } => self.assigned(ord, tgen, result, assign_us),
                    Cmd::Churn(ord) => self.churn(ord),
                    Cmd::Stop => stopping = true,
                }
            }
            self.fire_timers();
        }
        self.stop_all()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn timer(&mut self, ord: u32, after: Duration, kind: TimerKind) {
        let due = self.now_ms() + after.as_millis() as u64;
        let tgen = self.clients[ord as usize].tgen;
        self.timers.push(Reverse((due, ord, tgen, kind)));
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        while let Some(Reverse((due, ord, tgen, kind))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let c = &self.clients[ord as usize];
            let (state, up, transport) = (c.state, c.up, c.transport);
            if c.tgen != tgen || state == State::Stopped {
                continue;
            }
            match kind {
                TimerKind::Retry if state == State::Waiting => self.attempt(ord),
                TimerKind::Connect if !up && state != State::Waiting => {
                    self.failed(ord, format!("{}_connect_timeout", transport.name()));
                }
                TimerKind::Poll if up && state == State::Head => {
                    self.ended(ord, End::Error("poll_timeout".into()));
                }
                _ => {}
            }
        }
    }

    fn start(&mut self, index: u64, slot: Arc<Slot>) {
        let ord = self.clients.len() as u32;
        let transport = slot.transport;
        self.clients.push(Client {
            index,
            slot,
            checker: self.ctx.checker(),
            sock: None,
            out: Vec::new(),
            inbuf: Vec::new(),
            frag: Vec::new(),
            worker: None,
            poll_at: None,
            started: Instant::now(),
            assign_us: 0,
            since: 0,
            sgen: 0,
            tgen: 0,
            sessions: 0,
            failures: 0,
            transport,
            state: State::Waiting,
            first: true,
            up: false,
        });
        self.attempt(ord);
    }

    /// A connection attempt: assign first (on the runtime), then connect.
    fn attempt(&mut self, ord: u32) {
        let ctx = self.ctx.clone();
        let c = &mut self.clients[ord as usize];
        c.tgen = c.tgen.wrapping_add(1);
        c.state = State::Assigning;
        c.started = Instant::now();
        ctx.stats.connect_attempts.fetch_add(1, Ordering::Relaxed);
        let channel = ctx.plan.channel(c.index);
        let (tx, waker, tgen) = (self.tx.clone(), self.waker.clone(), c.tgen);
        let started = c.started;
        self.rt.spawn(async move {
            let result = assign(&ctx, &channel).await;
            let assign_us = started.elapsed().as_micros() as u64;
            if tx
                .send(Cmd::Assigned {
                    ord,
                    tgen,
                    result,
                    assign_us,
                })
                .is_ok()
            {
                let _ = waker.wake();
            }
        });
        let timeout = self.ctx.plan.common.connect_timeout;
        self.timer(ord, timeout, TimerKind::Connect);
    }

    /// The `since` of this attempt (as `client_task` computes it).
    fn since_of(&self, c: &Client) -> Option<u64> {
        if c.sessions == 0 && c.checker.received == 0 {
            self.ctx.initial_since
        } else {
            Some(c.checker.last_seq())
        }
    }

    fn assigned(
        &mut self,
        ord: u32,
        tgen: u32,
        result: Result<Assignment, String>,
        assign_us: u64,
    ) {
        let c = &self.clients[ord as usize];
        if c.tgen != tgen || c.state != State::Assigning {
            return;
        }
        let a = match result {
            Ok(a) => a,
            Err(kind) => return self.failed(ord, kind),
        };
        let since = self.since_of(c);
        let (transport, epoch) = (c.transport, c.checker.epoch);
        let name = transport.name();
        let url = match transport {
            Transport::Ws => a.ws_url.as_str(),
            Transport::Sse => a.sse_url.as_str(),
            _ => a.poll_url.as_str(),
        };
        let Ok(target) = Target::parse(url) else {
            return self.failed(ord, format!("{name}_bad_url"));
        };
        if target.tls {
            // Only a worker with TLS listeners alone answers so without --tls.
            return self.failed(ord, format!("{name}_tls_needs_tasks_plane"));
        }
        let Some(addr) = resolve(&target) else {
            return self.failed(ord, format!("{name}_resolve"));
        };
        let host = format!("{}:{}", target.host, target.port);
        let mut out = Vec::with_capacity(256);
        match transport {
            Transport::Ws => {
                let mut path = target.path.clone();
                if let Some(s) = since {
                    path = with_param(&path, "since", s);
                }
                if let Some(e) = epoch {
                    path = with_param(&path, "epoch", e);
                }
                let key = self.ws_key(c);
                out.extend_from_slice(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                         Sec-WebSocket-Version: 13\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
            Transport::Sse => {
                // As `sse::connect`: a first open names `since`, a resume sends Last-Event-ID.
                let first = since == self.ctx.initial_since;
                let mut path = target.path.clone();
                if let (Some(s), true) = (since, first) {
                    path = with_param(&path, "since", s);
                }
                if let Some(e) = epoch {
                    path = with_param(&path, "epoch", e);
                }
                let mut head =
                    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
                if let (Some(s), false) = (since, first) {
                    head.push_str(&format!("Last-Event-ID: {s}\r\n"));
                }
                head.push_str("\r\n");
                out.extend_from_slice(head.as_bytes());
            }
            _ => {}
        }
        let worker = match self.workers.get(&a.worker) {
            Some(w) => w.clone(),
            None => {
                let w: Arc<str> = Arc::from(a.worker.as_str());
                self.workers.insert(a.worker.clone(), w.clone());
                w
            }
        };
        let src = self.ctx.src.pick(&addr);
        let sock = match dial(addr, src) {
            Ok(s) => s,
            Err(_) => return self.failed(ord, format!("{name}_connect")),
        };
        let c = &mut self.clients[ord as usize];
        c.sgen = c.sgen.wrapping_add(1);
        c.assign_us = assign_us;
        c.worker = Some(worker);
        c.out = out;
        c.since = since.unwrap_or(0);
        c.poll_at = (transport == Transport::Poll).then(|| Box::new((host, target.path)));
        let mut sock = sock;
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                token(ord, c.sgen),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return self.failed(ord, format!("{name}_connect"));
        }
        c.sock = Some(sock);
        c.state = State::Connecting;
    }

    /// A Sec-WebSocket-Key derived from the client and its attempt (nothing kept).
    fn ws_key(&self, c: &Client) -> String {
        let a = splitmix(self.seed ^ c.index.rotate_left(17) ^ c.tgen as u64);
        let b = splitmix(a);
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&a.to_le_bytes());
        k[8..].copy_from_slice(&b.to_le_bytes());
        base64::engine::general_purpose::STANDARD.encode(k)
    }

    fn on_event(&mut self, ord: u32, writable: bool, readable: bool) {
        let state = self.clients[ord as usize].state;
        if state == State::Connecting && (writable || readable) {
            let c = &mut self.clients[ord as usize];
            let sock = c.sock.as_ref().expect("connecting has a socket");
            let up = match sock.take_error() {
                Ok(None) if sock.peer_addr().is_ok() => Some(true),
                Ok(None) if !readable => None, // spurious
                _ => Some(false),
            };
            match up {
                None => return,
                Some(false) => {
                    let kind = format!("{}_connect", c.transport.name());
                    return self.failed(ord, kind);
                }
                Some(true) => {}
            }
            c.state = State::Head;
            if c.transport == Transport::Poll {
                self.connected(ord);
                self.poll_request(ord);
            }
        }
        if writable {
            if let Err(end) = self.flush(ord) {
                return self.end(ord, end);
            }
        }
        if readable {
            if let Err(end) = self.read(ord) {
                self.end(ord, end);
            }
        }
    }

    /// Writes what `out` holds; the rest waits for the next writable event.
    fn flush(&mut self, ord: u32) -> Result<(), End> {
        let c = &mut self.clients[ord as usize];
        let Some(sock) = c.sock.as_mut() else {
            return Ok(());
        };
        while !c.out.is_empty() {
            match sock.write(&c.out) {
                Ok(0) => return Err(End::Error(format!("{}_error", c.transport.name()))),
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Error(format!("{}_error", c.transport.name()))),
            }
        }
        c.out = Vec::new();
        Ok(())
    }

    fn read(&mut self, ord: u32) -> Result<(), End> {
        loop {
            let c = &mut self.clients[ord as usize];
            let Some(sock) = c.sock.as_mut() else {
                return Ok(());
            };
            let n = match sock.read(&mut self.scratch) {
                Ok(0) => return Err(self.eof(ord)),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(self.eof(ord)),
            };
            let mut data = std::mem::take(&mut self.clients[ord as usize].inbuf);
            let scratch = std::mem::take(&mut self.scratch);
            let r = if data.is_empty() {
                self.input(ord, &scratch[..n])
            } else {
                data.extend_from_slice(&scratch[..n]);
                self.input(ord, &data)
            };
            self.scratch = scratch;
            let used = r?;
            let c = &mut self.clients[ord as usize];
            let rest = if data.is_empty() {
                &self.scratch[used.min(n)..n]
            } else {
                &data[used..]
            };
            if rest.len() > MAX_PENDING {
                return Err(End::Error(format!("{}_too_large", c.transport.name())));
            }
            c.inbuf = if rest.is_empty() {
                Vec::new()
            } else {
                rest.to_vec()
            };
        }
    }

    /// The stream ended (or reset) in this state.
    fn eof(&self, ord: u32) -> End {
        let c = &self.clients[ord as usize];
        let t = c.transport.name();
        match (c.state, c.transport) {
            (State::Open, Transport::Ws) => End::Error("ws_eof".into()),
            (State::Open, _) => End::Error("sse_eof".into()),
            (_, Transport::Poll) if c.up => End::Error("poll_error".into()),
            (_, Transport::Ws) => End::Error("ws_handshake".into()),
            _ => End::Error(format!("{t}_error")),
        }
    }

    /// Consumes what it can of `data`; returns how many bytes it used.
    fn input(&mut self, ord: u32, data: &[u8]) -> Result<usize, End> {
        let mut used = 0;
        loop {
            let c = &self.clients[ord as usize];
            let rest = &data[used..];
            if rest.is_empty() {
                return Ok(used);
            }
            let n = match (c.state, c.transport) {
                (State::Head, _) => self.head(ord, rest)?,
                (State::Open, Transport::Ws) => self.ws_frame(ord, rest)?,
                (State::Open, _) => self.sse_events(ord, rest)?,
                _ => return Ok(data.len()),
            };
            if n == 0 {
                return Ok(used);
            }
            used += n;
        }
    }

    /// An answer's head (and a poll answer's body); 0 while it is not all here.
    fn head(&mut self, ord: u32, data: &[u8]) -> Result<usize, End> {
        let transport = self.clients[ord as usize].transport;
        let t = transport.name();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(data) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(0),
            Err(_) => return Err(End::Error(format!("{t}_bad_head"))),
        };
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        match transport {
            Transport::Ws => {
                if status != 101 {
                    return Err(End::Error(format!("ws_http_{status}")));
                }
                let key = self.ws_key(&self.clients[ord as usize]);
                let want = accept_of(&key);
                if header("sec-websocket-accept") != Some(want.as_bytes()) {
                    return Err(End::Error("ws_handshake".into()));
                }
                self.clients[ord as usize].state = State::Open;
                self.connected(ord);
                Ok(len)
            }
            Transport::Sse => {
                if status != 200 {
                    return Err(End::Error(format!("sse_http_{status}")));
                }
                self.clients[ord as usize].state = State::Open;
                self.connected(ord);
                Ok(len)
            }
            _ => {
                let body_len = header("content-length")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if status != 200 {
                    return Err(End::Error(format!("poll_http_{status}")));
                }
                let Some(body_len) = body_len else {
                    return Err(End::Error("poll_bad_body".into()));
                };
                if data.len() < len + body_len {
                    if len + body_len > MAX_PENDING {
                        return Err(End::Error("poll_too_large".into()));
                    }
                    return Ok(0);
                }
                self.poll_answer(ord, &data[len..len + body_len])?;
                Ok(len + body_len)
            }
        }
    }

    fn poll_answer(&mut self, ord: u32, body: &[u8]) -> Result<(), End> {
        let answer: crate::clients::poll::PollAnswer =
            serde_json::from_slice(body).map_err(|_| End::Error("poll_bad_body".into()))?;
        let ctx = self.ctx.clone();
        let c = &mut self.clients[ord as usize];
        if answer.gap {
            on_gap(&ctx.stats, &mut c.checker, answer.epoch, answer.first_seq);
        }
        for m in answer.messages {
            if let Some(end) = on_parsed(&ctx.stats, &mut c.checker, &c.slot, m) {
                return Err(End::Error(end));
            }
        }
        c.since = answer
            .next
            .unwrap_or_else(|| c.checker.last_seq().max(c.since));
        self.poll_request(ord);
        Ok(())
    }

    /// Sends the next `GET poll_url&since=S&timeout=T` on the session's connection.
    fn poll_request(&mut self, ord: u32) {
        let timeout = self.ctx.plan.clients.poll_timeout;
        let c = &mut self.clients[ord as usize];
        let Some(at) = &c.poll_at else { return };
        let (host, path) = (&at.0, &at.1);
        let mut path = with_param(&with_param(path, "since", c.since), "timeout", timeout);
        if let Some(e) = c.checker.epoch {
            path = with_param(&path, "epoch", e);
        }
        c.out
            .extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        c.tgen = c.tgen.wrapping_add(1);
        self.timer(ord, Duration::from_secs(timeout + 15), TimerKind::Poll);
        if let Err(end) = self.flush(ord) {
            self.end(ord, end);
        }
    }

    /// One WebSocket frame from the server; 0 while it is not all here.
    fn ws_frame(&mut self, ord: u32, data: &[u8]) -> Result<usize, End> {
        if data.len() < 2 {
            return Ok(0);
        }
        let (fin, opcode) = (data[0] & 0x80 != 0, data[0] & 0x0f);
        if data[1] & 0x80 != 0 {
            return Err(End::Error("ws_error".into())); // a server never masks
        }
        let (len, at) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (u16::from_be_bytes([data[2], data[3]]) as u64, 4),
            127 if data.len() >= 10 => (
                u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return Ok(0),
            n => (n as u64, 2),
        };
        if len > MAX_PENDING as u64 {
            return Err(End::Error("ws_too_large".into()));
        }
        let end = at + len as usize;
        if data.len() < end {
            return Ok(0);
        }
        let payload = &data[at..end];
        let ctx = self.ctx.clone();
        let c = &mut self.clients[ord as usize];
        match opcode {
            0x1 if fin => {
                if let Some(e) = ctx.on_text(&mut c.checker, &c.slot, payload) {
                    return Err(End::Error(e));
                }
            }
            0x1 | 0x0 => {
                c.frag.extend_from_slice(payload);
                if fin {
                    let msg = std::mem::take(&mut c.frag);
                    if let Some(e) = ctx.on_text(&mut c.checker, &c.slot, &msg) {
                        return Err(End::Error(e));
                    }
                }
            }
            0x2 => ctx.stats.error("ws_binary_frame"),
            0x8 => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                return Err(End::Error(format!("ws_close_{code}")));
            }
            0x9 => {
                mask_frame(&mut c.out, 0xA, payload);
                self.flush(ord)?;
            }
            _ => {}
        }
        Ok(end)
    }

    /// Whole events of an event stream; 0 while none is complete.
    fn sse_events(&mut self, ord: u32, data: &[u8]) -> Result<usize, End> {
        let Some(done) = last_event_end(data) else {
            return Ok(0);
        };
        let ctx = self.ctx.clone();
        let c = &mut self.clients[ord as usize];
        for ev in crate::clients::sse::EventParser::default().push(&data[..done]) {
            if let Some(end) = ctx.on_text(&mut c.checker, &c.slot, ev.data.as_bytes()) {
                return Err(End::Error(end));
            }
        }
        Ok(done)
    }

    /// The connection is up: counted as `client_task` counts it.
    fn connected(&mut self, ord: u32) {
        let stats = self.ctx.stats.clone();
        let c = &mut self.clients[ord as usize];
        c.tgen = c.tgen.wrapping_add(1); // the connect deadline no longer applies
        c.failures = 0;
        c.up = true;
        stats.record_connect(
            c.started.elapsed().as_micros() as u64,
            c.assign_us,
            c.transport,
        );
        let worker = c.worker.as_deref().unwrap_or("");
        tracing::debug!(channel = %self.ctx.plan.channel(c.index), %worker, since = c.since, "connected");
        stats.up(worker, c.transport);
        if c.sessions > 0 {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        c.sessions += 1;
        if c.first {
            c.first = false;
            stats.first_ok.fetch_add(1, Ordering::Relaxed);
            stats.first_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the client's socket and buffers.
    fn close(&mut self, ord: u32) {
        let c = &mut self.clients[ord as usize];
        if let Some(mut s) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.sgen = c.sgen.wrapping_add(1);
        c.tgen = c.tgen.wrapping_add(1);
        c.out = Vec::new();
        c.inbuf = Vec::new();
        c.frag = Vec::new();
        c.poll_at = None;
        c.state = State::Waiting;
    }

    /// An attempt failed before the connection was up.
    fn failed(&mut self, ord: u32, kind: String) {
        self.close(ord);
        let stats = self.ctx.stats.clone();
        let c = &mut self.clients[ord as usize];
        log_end(
            &self.ctx.plan.channel(c.index),
            "",
            &kind,
            stats.ended(kind.clone()),
        );
        if c.first {
            c.first = false;
            stats.first_done.fetch_add(1, Ordering::Relaxed);
        }
        c.failures += 1;
        let wait = jitter(Duration::from_millis(100 * 2u64.pow(c.failures.min(5))));
        self.timer(ord, wait, TimerKind::Retry);
    }

    fn end(&mut self, ord: u32, end: End) {
        if self.clients[ord as usize].up {
            self.ended(ord, end);
        } else {
            match end {
                End::Error(kind) => self.failed(ord, kind),
                End::Churned => {}
            }
        }
    }

    /// A session that was up ended.
    fn ended(&mut self, ord: u32, end: End) {
        self.close(ord);
        let stats = self.ctx.stats.clone();
        let c = &mut self.clients[ord as usize];
        c.up = false;
        let worker = c.worker.take();
        let worker = worker.as_deref().unwrap_or("");
        stats.down(worker, c.transport);
        let channel = || self.ctx.plan.channel(c.index);
        let wait = match end {
            End::Churned => {
                tracing::debug!(channel = %channel(), %worker, "churned");
                stats.dropped_on_purpose.fetch_add(1, Ordering::Relaxed);
                let backoff = self
                    .ctx
                    .plan
                    .churn
                    .as_ref()
                    .map(|c| c.backoff)
                    .unwrap_or(Duration::from_millis(100));
                jitter(backoff)
            }
            End::Error(kind) => {
                log_end(&channel(), worker, &kind, stats.ended(kind.clone()));
                jitter(Duration::from_millis(200))
            }
        };
        self.timer(ord, wait, TimerKind::Retry);
    }

    fn churn(&mut self, ord: u32) {
        if self.clients.get(ord as usize).is_some_and(|c| c.up) {
            self.ended(ord, End::Churned);
        }
    }

    /// Closes every client (a WebSocket says 1000 first) and hands back the checkers.
    fn stop_all(mut self) -> Vec<(u64, SeqChecker)> {
        let stats = self.ctx.stats.clone();
        let mut out = Vec::with_capacity(self.clients.len());
        for ord in 0..self.clients.len() as u32 {
            let c = &mut self.clients[ord as usize];
            if c.up {
                if c.transport == Transport::Ws && c.state == State::Open {
                    mask_frame(&mut c.out, 0x8, &1000u16.to_be_bytes());
                    let _ = self.flush(ord);
                }
                let c = &mut self.clients[ord as usize];
                stats.down(c.worker.as_deref().unwrap_or(""), c.transport);
                c.up = false;
            }
            self.close(ord);
            let c = &mut self.clients[ord as usize];
            c.state = State::Stopped;
            if c.first {
                c.first = false;
                stats.first_done.fetch_add(1, Ordering::Relaxed);
            }
            for (id, first_seq, seq) in c.checker.id_duplicate_examples() {
                let channel = self.ctx.plan.channel(c.index);
                tracing::warn!(%channel, id, first_seq, seq, "message received under a second seq");
            }
        }
        for c in self.clients.drain(..) {
            out.push((c.index, c.checker));
        }
        out
    }
}

/// Where the last complete event of `data` ends (after its blank line).
fn last_event_end(data: &[u8]) -> Option<usize> {
    let mut i = data.len();
    while i >= 2 {
        let (a, b) = (data[i - 2], data[i - 1]);
        if (a == b'\n' && b == b'\n') || (a == b'\r' && b == b'\r') {
            return Some(i);
        }
        if i >= 4 && &data[i - 4..i] == b"\r\n\r\n" {
            return Some(i);
        }
        i -= 1;
    }
    None
}

/// Appends a masked client frame (FIN set) of `opcode` carrying `payload` (≤ 125 bytes).
fn mask_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let payload = &payload[..payload.len().min(125)];
    let mask: [u8; 4] = rand::random();
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// RFC 6455 `Sec-WebSocket-Accept` for `key`.
fn accept_of(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn resolve(t: &Target) -> Option<SocketAddr> {
    let host = t.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, t.port));
    }
    (host, t.port).to_socket_addrs().ok()?.next()
}

/// A non-blocking connect to `dst` from `src` (port left to the connect, as `SourceIps`).
fn dial(dst: SocketAddr, src: Option<IpAddr>) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(dst),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    if let Some(src) = src {
        if dst.is_ipv4() {
            crate::net::bind_no_port(std::os::fd::AsRawFd::as_raw_fd(&s));
        }
        s.bind(&SocketAddr::new(src, 0).into())?;
    }
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ends() {
        assert_eq!(last_event_end(b"data: a\n"), None);
        assert_eq!(last_event_end(b"data: a\n\n"), Some(9));
        assert_eq!(last_event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(last_event_end(b"data: a\r\n\r\nid: 2"), Some(11));
        assert_eq!(last_event_end(b"data: a\n\ndata: b\n\n"), Some(18));
    }

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            accept_of("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_frames_unmask() {
        let mut out = Vec::new();
        mask_frame(&mut out, 0xA, b"hello");
        assert_eq!(out[0], 0x8A);
        assert_eq!(out[1], 0x80 | 5);
        let mask = &out[2..6];
        let body: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(body, b"hello");
    }

    #[test]
    fn client_struct_stays_small() {
        // The per-client cost the plane exists for (user space, idle).
        let size = std::mem::size_of::<Client>();
        assert!(size <= 480, "{size} B");
    }
}
