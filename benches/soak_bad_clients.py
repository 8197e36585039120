#!/usr/bin/env python3
"""Bad clients for benches/soak.sh, standard library only, bounded in count and time.

    soak_bad_clients.py GATEWAY_URL SECONDS [--seed S]

Runs these side by side until SECONDS have passed, and prints one JSON line of counts:
- slow readers: WebSocket clients that read 2 KB a second, on channels a publisher fills
  with 16 KB messages; the worker cuts them (close 4003, bounded by --max-pending-bytes),
  and every 20 s each comes back with since=0 (a resume backlog) and again reads slowly;
- slowloris: connections to a worker that send a byte of a request head now and then
  (the handshake timeout closes them);
- garbage: random bytes, a request head over the size limit, a bad request line;
- broken WebSockets: an unmasked frame, invalid UTF-8 in a text frame (closes 1002/1007);
- stalled publishes: a publish that announces 100 body bytes, sends 2 and stops (the
  gateway's body timeout answers 408).
"""
import base64
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request

GATEWAY = sys.argv[1].rstrip("/")
SECONDS = float(sys.argv[2])
SEED = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
END = time.monotonic() + SECONDS
counts = {}
lock = threading.Lock()


def count(kind, n=1):
    with lock:
        counts[kind] = counts.get(kind, 0) + n


def running():
    return time.monotonic() < END


def assign(channel):
    with urllib.request.urlopen(f"{GATEWAY}/v1/assign?channel={channel}", timeout=5) as r:
        return json.load(r)


def host_port(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port, u.path + ("?" + u.query if u.query else "")


def ws_open(url, rcvbuf=None):
    host, port, target = host_port(url)
    s = socket.socket()
    if rcvbuf:
        # Before connecting, so the window the worker sees is small from the start.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
    return s


def frame(opcode, payload, mask=True):
    head = bytes([0x80 | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def publish(channel, data):
    req = urllib.request.Request(f"{GATEWAY}/v1/publish/{channel}", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
        count("slow_published")
    except Exception:
        count("slow_publish_failed")


def slow_readers(n=16):
    rng = random.Random(SEED)
    channels = [f"soak-slow-{SEED}-{i}" for i in range(n)]
    socks = {}

    def publisher():
        body = json.dumps({"pad": "x" * 16000}).encode()
        while running():
            publish(rng.choice(channels), body)
            time.sleep(0.02)

    threading.Thread(target=publisher, daemon=True).start()
    opened = {}
    while running():
        for ch in channels:
            s = socks.get(ch)
            if s is not None:
                # A slow reader: 2 KB a second. One the worker cut reads the end; every
                # 20 s each comes back on its own (since=0: a resume backlog).
                try:
                    gone = s.recv(2048) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    count("slow_cut")
                elif time.monotonic() - opened[ch] < 20:
                    continue
                s.close()
            try:
                a = assign(ch)
                socks[ch] = ws_open(a["ws_url"] + "&since=0", rcvbuf=4096)
                socks[ch].setblocking(False)
                opened[ch] = time.monotonic()
                count("slow_opened")
            except Exception:
                count("slow_open_failed")
        time.sleep(1)
    for s in socks.values():
        s.close()


def worker_addr(rng):
    a = assign(f"soak-bad-{rng.randrange(1000)}")
    host, port, target = host_port(a["poll_url"])
    return host, port, target, a


def slowloris(n=40):
    rng = random.Random(SEED + 1)
    conns = []
    while running():
        while len(conns) < n:
            try:
                host, port, target, _ = worker_addr(rng)
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(f"GET {target} HTTP/1.1\r\n".encode())
                conns.append(s)
                count("slowloris_opened")
            except Exception:
                count("slowloris_open_failed")
                break
        for s in list(conns):
            try:
                s.sendall(b"X")
            except OSError:
                conns.remove(s)
                s.close()
                count("slowloris_closed_by_server")
        time.sleep(3)
    for s in conns:
        s.close()


def garbage():
    rng = random.Random(SEED + 2)
    while running():
        try:
            host, port, target, a = worker_addr(rng)
            kind = rng.choice(["random", "huge_head", "bad_line", "ws_unmasked", "ws_bad_utf8"])
            if kind.startswith("ws_"):
                s = ws_open(a["ws_url"])
                if kind == "ws_unmasked":
                    s.sendall(frame(1, b"hello", mask=False))
                else:
                    s.sendall(frame(1, b"\xc3\x28 not utf-8"))
            else:
                s = socket.create_connection((host, port), timeout=5)
                if kind == "random":
                    s.sendall(rng.randbytes(rng.randrange(1, 3000)))
                elif kind == "huge_head":
                    s.sendall(f"GET {target} HTTP/1.1\r\nX-Pad: {'a' * 20000}\r\n\r\n".encode())
                else:
                    s.sendall(b"\x00\x01 / HTTP/9.9\r\n\r\n")
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
                count(f"garbage_{kind}_closed")
            except OSError:
                count(f"garbage_{kind}_reset")
            s.close()
        except Exception:
            count("garbage_failed")
        time.sleep(0.05)


def stalled_publishes():
    u = urllib.parse.urlsplit(GATEWAY)
    while running():
        try:
            s = socket.create_connection((u.hostname, u.port), timeout=60)
            s.sendall(
                b"POST /v1/publish/soak-stalled HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\nab"
            )
            answer = s.recv(4096)
            count("stalled_408" if b" 408 " in answer.split(b"\r\n")[0] else "stalled_other")
            s.close()
        except Exception:
            count("stalled_failed")
        time.sleep(0.5)


threads = [
    threading.Thread(target=f, daemon=True)
    for f in (slow_readers, slowloris, garbage) + (stalled_publishes,) * 4
]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=max(0.0, END - time.monotonic()) + 60)
print(json.dumps(counts, sort_keys=True))
