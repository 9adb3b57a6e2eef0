#!/usr/bin/env python3
"""bench/load.py — load and abuse campaign against a running `ifp serve` (issue 16, item 5;
not run by CI). Python 3.9+ standard library only.

What it does, in phases, while a sampler thread times `GET /healthz` (a fresh connection every
0.2 s, as a monitor would) and reads the server process's VmRSS/VmHWM from /proc/PID/status
(and the resident memory of its training child processes, `ifp attempt`):

  baseline  a few seconds of nothing, for the idle figures.
  sse       submits a tiny job and opens --sse (300) concurrent event streams on
            /api/v1/jobs/{id}/events; holds them until the job ends (needs a worker) or
            --sse-secs; counts the streams that connected, that saw the job end, and events.
  slow      slowloris: --slow (400, below the connection cap) connections send a request line
            and then one header byte every 2 s; each should be closed by the server at the
            header-read timeout. Then --idle (cap + 200) connections that send nothing at all,
            i.e. more than the cap: the cap must hold (connections past it wait in the kernel's
            queue) and /healthz must come back once the timeout frees places.
  burst     --burst-clients (48) threads at once, each --burst-rounds (3) times: new-job previews
            with the largest sizes (form fields and YAML: 8192x8192 noise, 2048 crops, batch 1024),
            API submissions with huge configs (DIM 1000000, IMG_SIZE 4096 + BATCH_SIZE 1000,
            BATCH_SIZE 2^62, STEPS 1e12, .inf/.nan, `{"config": {}}` = the paper network,
            YAML alias bombs of ~200 KB and ~1 MB, 5000-deep nesting, max_attempts 20 and
            priority 1000), uploads of small PNGs declaring 16384x16384 and of a 16 MP PNG
            whose zlib stream inflates to 48 MiB, and a JPEG header declaring 65500x65500.
            Every job the burst gets accepted is cancelled right after, so none keeps a worker.
  after     submits {"name": "after", "preset": "tiny"} and waits for it to succeed (needs a
            worker; about a minute on 2 cores with one CPU worker).

Run (a server with one CPU worker; this script does not start one unless --start):
  P=/var/tmp/ifp-campaign-venv/bin/python   # or any python3
  $P bench/load.py --url http://127.0.0.1:8080 --token "$(cat ifp-data/admin-token)" --pid PID
  $P bench/load.py --start /tmp/ifp-load     # starts `ifp serve --workers 1` itself there
  $P bench/load.py --start /tmp/ifp-burst --workers 0 --phases baseline,burst --burst-only '^preview:'
                                             # one kind of burst alone, with nothing training
  $P bench/load.py ... --phases burst,after  # a subset
Options: --ifp-bin, --workers (for --start; default /var/tmp/ifp-target/release/ifp, 1), --port (18581),
  --sse, --sse-secs, --slow, --idle, --header-timeout (the server's, default 10),
  --max-connections (the server's, default 512), --burst-clients, --burst-rounds,
  --burst-only REGEX (e.g. '^(submit|upload):' for a burst without previews), --json FILE.

Prints one line per phase while it runs, then a summary table: per phase, requests by status,
/healthz median / p99 / max latency and failed probes, the server's largest VmRSS sampled and
its VmHWM at the phase's end, the largest training-child RSS; then the SSE, slow-connection,
burst (status counts per request kind, and which hostile submissions were accepted) and
after-job results. Exit status 0 when the server stayed up, no request got a 5xx other than 503
`busy`, /healthz never failed outside the over-the-cap test, and the after job succeeded; 1
otherwise (the reasons are printed).
"""

import argparse
import asyncio
import http.client
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

# ---------------------------------------------------------------------------------------------
# Plumbing


class Server:
    def __init__(self, url, token, pid):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.url = url.rstrip("/")
        self.token = token
        self.pid = pid

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One request on a fresh connection: (status, headers dict, body bytes) or raises."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = {"Host": f"{self.host}:{self.port}"}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def api(self, method, path, obj=None, raw=None, ctype="application/json", timeout=60):
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
        h = {"Authorization": "Bearer " + self.token}
        if body is not None:
            h["Content-Type"] = ctype
        return self.request(method, path, body, h, timeout)


def proc_status(pid):
    """(VmRSS MB, VmHWM MB) of pid, or (None, None)."""
    try:
        text = open(f"/proc/{pid}/status").read()
    except OSError:
        return None, None
    def kb(key):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) / 1024 if m else None
    return kb("VmRSS"), kb("VmHWM")


def children_rss(pid):
    """Total VmRSS (MB) of pid's direct children (the training processes), over all its threads
    (a child belongs to the thread that spawned it)."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            kids = open(f"/proc/{pid}/task/{tid}/children").read().split()
        except OSError:
            continue
        for k in kids:
            rss, _ = proc_status(int(k))
            total += rss or 0.0
    return total


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[i]


class Sampler(threading.Thread):
    """Times /healthz every `period` s on a fresh connection and samples the server's memory."""

    def __init__(self, server, period=0.2):
        super().__init__(daemon=True)
        self.s, self.period = server, period
        self.phase = "start"
        self.samples = {}  # phase -> dict(lat=[], fail=0, rss=[], kids=[])
        self.stop_flag = threading.Event()

    def bucket(self, phase):
        return self.samples.setdefault(phase, {"lat": [], "fail": 0, "rss": [], "kids": [],
                                               "hwm_end": None})

    def set_phase(self, phase):
        if self.s.pid:
            self.bucket(self.phase)["hwm_end"] = proc_status(self.s.pid)[1]
        self.phase = phase
        self.bucket(phase)

    def run(self):
        while not self.stop_flag.is_set():
            phase, t0 = self.phase, time.monotonic()
            b = self.bucket(phase)
            try:
                st, _, body = self.s.request("GET", "/healthz", timeout=60)
                if st == 200:
                    b["lat"].append((time.monotonic() - t0) * 1000)
                else:
                    b["fail"] += 1
            except Exception:
                b["fail"] += 1
            if self.s.pid:
                rss, _ = proc_status(self.s.pid)
                if rss is not None:
                    b["rss"].append(rss)
                b["kids"].append(children_rss(self.s.pid))
            self.stop_flag.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def finish(self):
        self.set_phase("end")
        self.stop_flag.set()


def say(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------
# Phase: SSE fan-out


async def sse_stream(s, path, deadline, stats):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), 30)
    except Exception:
        stats["connect_fail"] += 1
        return
    w.write((f"GET {path} HTTP/1.1\r\nHost: {s.host}:{s.port}\r\n"
             f"Authorization: Bearer {s.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
    await w.drain()
    t0 = time.monotonic()
    ended = False
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        status = int(head.split()[1])
        stats["status"][status] = stats["status"].get(status, 0) + 1
        if status != 200:
            return
        first = True
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(r.readline(), max(0.1, deadline - time.monotonic()))
            if not line:
                break
            if line.startswith(b"event:"):
                stats["events"] += 1
                if first:
                    stats["first_ms"].append((time.monotonic() - t0) * 1000)
                    first = False
            if line.startswith(b"data:") and re.search(rb'"status"\s*:\s*"(succeeded|failed|cancelled)"', line):
                ended = True
                break
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        stats["saw_end"] += int(ended)
        w.close()


def phase_sse(s, n, secs):
    st, _, body = s.api("POST", "/api/v1/jobs", {"name": "sse-fanout", "preset": "tiny"})
    if st != 201:
        return {"error": f"submitting the SSE job: {st} {body[:200]!r}"}
    job = json.loads(body)["id"]
    stats = {"status": {}, "events": 0, "saw_end": 0, "connect_fail": 0, "first_ms": []}
    t0 = time.monotonic()

    async def main():
        deadline = time.monotonic() + secs
        await asyncio.gather(*(sse_stream(s, f"/api/v1/jobs/{job}/events", deadline, stats)
                               for _ in range(n)))
    asyncio.run(main())
    st, _, body = s.api("GET", f"/api/v1/jobs/{job}")
    final = json.loads(body).get("status") if st == 200 else f"HTTP {st}"
    return {"job": job, "streams": n, "http_status": stats["status"],
            "connect_fail": stats["connect_fail"], "events": stats["events"],
            "saw_job_end": stats["saw_end"], "job_status": final,
            "first_event_ms_median": round(statistics.median(stats["first_ms"]), 1) if stats["first_ms"] else None,
            "seconds": round(time.monotonic() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# Phase: slow connections


async def slow_conn(s, mode, interval, hold, out):
    """mode 'trickle': request line, then a header byte every `interval` s; 'idle': nothing."""
    t0 = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), 30)
    except Exception:
        out["connect_fail"] += 1
        return
    out["opened"] += 1
    closed_at = None
    try:
        if mode == "trickle":
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await w.drain()
        payload = b"X-Slow: " + b"a" * 10_000
        i = 0
        while time.monotonic() - t0 < hold:
            if mode == "trickle":
                try:
                    w.write(payload[i % len(payload):i % len(payload) + 1])
                    await w.drain()
                except (ConnectionError, OSError):
                    closed_at = time.monotonic() - t0
                    break
                i += 1
            try:
                data = await asyncio.wait_for(r.read(4096), interval)
                if data:
                    out["responses"] += 1  # e.g. a 408; the close follows
                    data = await asyncio.wait_for(r.read(4096), interval)
                if not data:
                    closed_at = time.monotonic() - t0
                    break
            except asyncio.TimeoutError:
                pass
            except (ConnectionError, OSError):
                closed_at = time.monotonic() - t0
                break
    finally:
        w.close()
    if closed_at is None:
        out["still_open"] += 1
    else:
        out["closed_s"].append(closed_at)


def phase_slow(s, n, mode, interval, hold):
    out = {"opened": 0, "connect_fail": 0, "still_open": 0, "closed_s": [], "responses": 0}

    async def main():
        await asyncio.gather(*(slow_conn(s, mode, interval, hold, out) for _ in range(n)))
    t0 = time.monotonic()
    asyncio.run(main())
    c = out["closed_s"]
    return {"mode": mode, "connections": n, "opened": out["opened"],
            "connect_fail": out["connect_fail"], "closed_by_server": len(c),
            "still_open_after_s": hold if out["still_open"] else None,
            "still_open": out["still_open"], "responses_before_close": out["responses"],
            "close_after_s_min": round(min(c), 1) if c else None,
            "close_after_s_median": round(statistics.median(c), 1) if c else None,
            "close_after_s_max": round(max(c), 1) if c else None,
            "seconds": round(time.monotonic() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# Phase: bursts of heavy and hostile requests


def png(w, h, payload=b"\x00" * 64, color=2, bit_depth=8):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload, 9)) + chunk(b"IEND", b"")


def png_inflating(w, h):
    """A real w x h RGB PNG of zeros: every row is filter 0 + zeros; tiny compressed."""
    row = b"\x00" * (1 + 3 * w)
    co = zlib.compressobj(9)
    parts = [co.compress(row) for _ in range(h)]
    parts.append(co.flush())
    return png(w, h, b"")[:33] + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def jpeg_declaring(w, h):
    sof = struct.pack(">BHHB", 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    dqt = b"\x00" + bytes(range(1, 65))
    return (b"\xff\xd8" + b"\xff\xdb" + struct.pack(">H", len(dqt) + 2) + dqt
            + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\x00" * 64 + b"\xff\xd9")


def tiny_yaml(**over):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "presets", "tiny.yaml")
    text = open(root).read()
    for k, v in over.items():
        text = re.sub(rf"^(\s*){k}:.*$", rf"\g<1>{k}: {v}", text, count=1, flags=re.M)
    return text


def alias_bomb(target_bytes):
    wide = "[" + ", ".join(["1"] * 2000) + "]"
    n = max(1, (target_bytes - len(wide)) // 4)
    return "a: &a " + wide + "\nb: [" + ", ".join(["*a"] * n) + "]\n"


def hostile_submissions():
    """(label, JSON body) pairs."""
    return [
        ("dim-1e6", {"name": "h", "config": {"MODEL": {"RESTORMER": {"DIM": 1000000}}}}),
        ("img4096-batch1000", {"name": "h", "config": {"DATA": {"IMG_SIZE": 4096, "BATCH_SIZE": 1000}}}),
        ("batch-2^62", {"name": "h", "config_yaml": tiny_yaml(BATCH_SIZE=2**62)}),
        ("steps-1e12", {"name": "h", "config_yaml": tiny_yaml(STEPS=10**12)}),
        ("steps-inf", {"name": "h", "config_yaml": tiny_yaml(STEPS=".inf")}),
        ("lr-nan", {"name": "h", "config_yaml": tiny_yaml(BASE_LR=".nan")}),
        ("lr-inf", {"name": "h", "config_yaml": tiny_yaml(BASE_LR="-.inf")}),
        ("empty-config", {"name": "h", "config": {}}),
        ("uformer-2048", {"name": "h", "config": {"MODEL": {"TYPE": "uformer", "UFORMER": {"IMAGE_SIZE": 2048, "EMBED_DIM": 512}}, "DATA": {"IMG_SIZE": 2048, "BATCH_SIZE": 1024}}}),
        ("alias-bomb-200k", {"name": "h", "config_yaml": alias_bomb(200_000)}),
        ("alias-bomb-1m", {"name": "h", "config_yaml": alias_bomb(1_000_000)}),
        ("nest-5000", {"name": "h", "config_yaml": "[" * 5000 + "]" * 5000}),
        ("attempts-20-prio-1000", {"name": "h", "preset": "tiny", "max_attempts": 20, "priority": 1000}),
    ]


def hostile_uploads():
    return [
        ("png-declares-16kx16k", png(16384, 16384)),
        ("png-declares-65535x1", png(65535, 1)),
        ("png-16mp-inflates-48mb", png_inflating(16384, 1024)),
        ("jpeg-declares-65500x65500", jpeg_declaring(65500, 65500)),
        ("png-truncated", png(64, 64)[:40]),
    ]


class Browser:
    """A signed-in page session: cookies and the form's anti-forgery token."""

    def __init__(self, s):
        self.s = s
        self.cookies = {}

    def _req(self, method, path, body=None, headers=None):
        h = {"Origin": self.s.url}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        h.update(headers or {})
        return self.s.request(method, path, body, h)

    def _take_cookies(self, path, body=None, headers=None, method="GET"):
        # http.client joins repeated Set-Cookie headers with ", "; parse name=value pairs.
        conn = http.client.HTTPConnection(self.s.host, self.s.port, timeout=60)
        h = {"Origin": self.s.url, "Host": f"{self.s.host}:{self.s.port}"}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                self.cookies[name.strip()] = rest.split(";")[0]
        conn.close()
        return r.status, data

    def sign_in(self):
        st, html = self._take_cookies("/signin")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', html).group(1).decode()
        form = urllib.parse.urlencode({"token": self.s.token, "csrf": csrf, "next": "/jobs/new"})
        st, _ = self._take_cookies("/signin", form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}, "POST")
        st, html = self._take_cookies("/jobs/new")
        if st != 200:
            raise RuntimeError(f"GET /jobs/new after sign-in: {st}")
        self.csrf = re.search(rb'name="csrf" value="([^"]+)"', html).group(1).decode()
        # The form's fields apply only when `loaded_from` is the fingerprint of the preset the
        # page loaded (the `tiny` preset here), as a browser sends it.
        m = re.search(rb'name="loaded_from" value="([^"]*)"', html)
        self.loaded_from = m.group(1).decode() if m else ""
        return self

    def multipart(self, fields):
        b = "----ifpload" + os.urandom(8).hex()
        out = []
        for k, v in fields.items():
            out.append(f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
        out.append(f"--{b}--\r\n")
        return "".join(out).encode(), f"multipart/form-data; boundary={b}"

    def preview(self, fields):
        fields = dict(fields, csrf=self.csrf)
        if fields.get("source") == "preset":
            fields["loaded_from"] = self.loaded_from
        body, ctype = self.multipart(fields)
        return self._req("POST", "/jobs/new/preview", body, {"Content-Type": ctype})


def preview_forms():
    big = {"source": "preset", "preset": "tiny", "backbone": "restormer", "img_size": "2048",
           "batch_size": "1024", "steps": "400", "filter_type": "IFP", "sample_ratio": "0.5",
           "recover_target": "m_masked", "base_lr": "0.128", "save_freq": "200", "seed": "0",
           "noise_width": "8192", "noise_height": "8192", "noise_mean": "0.467",
           "noise_std": "0.075", "noise_seed": "1", "noise_source": "generate"}
    yaml_big = tiny_yaml(IMG_SIZE=2048, BATCH_SIZE=1024) + "\n"
    yaml_big = yaml_big.replace("DATA:\n", "DATA:\n  NOISE: {WIDTH: 8192, HEIGHT: 8192}\n", 1)
    return [("preview-fields-8192", big),
            ("preview-yaml-8192", {"source": "yaml", "config_yaml": yaml_big, "noise_source": "generate"}),
            ("preview-uformer-2048", dict(big, backbone="uformer"))]


def phase_burst(s, clients, rounds, only=None):
    browser = Browser(s).sign_in()
    subs, ups, prevs = hostile_submissions(), hostile_uploads(), preview_forms()
    # Each client cycles through every kind of request, starting at a different place.
    kinds = ([("submit",) + x for x in subs] + [("upload",) + x for x in ups]
             + [("preview",) + x for x in prevs])
    if only:
        kinds = [k for k in kinds if re.search(only, f"{k[0]}:{k[1]}")]
    results = {}  # label -> {status: count}
    latencies = {}
    accepted = []
    lock = threading.Lock()

    def one(kind, label, payload):
        t0 = time.monotonic()
        try:
            if kind == "submit":
                st, _, body = s.api("POST", "/api/v1/jobs", payload, timeout=120)
                if st == 201:
                    with lock:
                        accepted.append((label, json.loads(body)["id"]))
            elif kind == "upload":
                st, _, body = s.api("POST", "/api/v1/uploads", raw=payload,
                                    ctype="application/octet-stream", timeout=120)
            else:
                st, _, body = browser.preview(payload)
            key = st
        except Exception as e:  # connection refused/reset, timeout
            key, body = type(e).__name__, b""
        with lock:
            d = results.setdefault(f"{kind}:{label}", {})
            d[key] = d.get(key, 0) + 1
            latencies.setdefault(f"{kind}:{label}", []).append((time.monotonic() - t0) * 1000)
            if isinstance(key, int) and key >= 500 and key != 503:
                results.setdefault("_5xx_bodies", {})[f"{kind}:{label}"] = body[:300].decode(errors="replace")

    def client(i):
        for r in range(rounds):
            for j in range(len(kinds)):
                one(*kinds[(i + j + r) % len(kinds)])

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    # No accepted hostile job may keep a worker busy.
    for label, job in accepted:
        s.api("POST", f"/api/v1/jobs/{job}/cancel")
    acc = {}
    for label, _ in accepted:
        acc[label] = acc.get(label, 0) + 1
    return {"clients": clients, "rounds": rounds, "requests": sum(
        sum(v.values()) for k, v in results.items() if not k.startswith("_")),
        "by_kind": {k: v for k, v in results.items() if not k.startswith("_")},
        "latency_ms_median": {k: round(statistics.median(v)) for k, v in latencies.items()},
        "latency_ms_max": {k: round(max(v)) for k, v in latencies.items()},
        "accepted_and_cancelled": acc, "5xx_bodies": results.get("_5xx_bodies", {}),
        "seconds": round(secs, 1)}


# ---------------------------------------------------------------------------------------------
# Phase: a normal job afterwards


def phase_after(s, timeout):
    t0 = time.monotonic()
    st, _, body = s.api("POST", "/api/v1/jobs", {"name": "after", "preset": "tiny"})
    if st != 201:
        return {"submit_status": st, "body": body[:300].decode(errors="replace"), "ok": False}
    job = json.loads(body)["id"]
    status = None
    while time.monotonic() - t0 < timeout:
        st, _, body = s.api("GET", f"/api/v1/jobs/{job}")
        if st == 200:
            d = json.loads(body)
            status = d["status"]
            if status in ("succeeded", "failed", "cancelled"):
                break
        time.sleep(2)
    return {"job": job, "status": status, "loss": d.get("loss") if st == 200 else None,
            "error": d.get("error") if st == 200 else None,
            "seconds": round(time.monotonic() - t0, 1), "ok": status == "succeeded"}


# ---------------------------------------------------------------------------------------------


def start_server(args):
    data = os.path.abspath(args.start)
    os.makedirs(data, exist_ok=True)
    log = open(os.path.join(data, "serve.log"), "w")
    cmd = [args.ifp_bin, "serve", "--data-dir", os.path.join(data, "data"),
           "--bind", f"127.0.0.1:{args.port}", "--workers", str(args.workers),
           "--max-connections", str(args.max_connections),
           "--header-timeout-secs", str(args.header_timeout)]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    tok = os.path.join(data, "data", "admin-token")
    for _ in range(120):
        if p.poll() is not None:
            sys.exit(f"ifp serve exited: see {log.name}")
        if os.path.exists(tok) and os.path.getsize(tok) > 0:
            try:
                http.client.HTTPConnection("127.0.0.1", args.port, timeout=2).request("GET", "/healthz")
                break
            except OSError:
                pass
        time.sleep(1)
    return p, f"http://127.0.0.1:{args.port}", open(tok).read().strip()


def fmt(x, nd=0):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--pid", type=int, help="the server process (for its memory figures)")
    ap.add_argument("--start", metavar="DIR", help="start `ifp serve --workers 1` in DIR")
    ap.add_argument("--ifp-bin", default="/var/tmp/ifp-target/release/ifp")
    ap.add_argument("--port", type=int, default=18581)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker slots of the --start server (0: API only, for a burst's own memory; "
                         "the sse and after phases need one)")
    ap.add_argument("--phases", default="baseline,sse,slow,burst,after")
    ap.add_argument("--sse", type=int, default=300)
    ap.add_argument("--sse-secs", type=float, default=240)
    ap.add_argument("--slow", type=int, default=400)
    ap.add_argument("--idle", type=int, default=None, help="default: max-connections + 200")
    ap.add_argument("--header-timeout", type=int, default=10)
    ap.add_argument("--max-connections", type=int, default=512)
    ap.add_argument("--burst-clients", type=int, default=48)
    ap.add_argument("--burst-rounds", type=int, default=3)
    ap.add_argument("--burst-only", metavar="REGEX", help="only the burst requests whose kind:label matches")
    ap.add_argument("--after-timeout", type=float, default=600)
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()

    proc = None
    if args.start:
        proc, url, token = start_server(args)
        pid = proc.pid
    else:
        if not (args.url and args.token):
            ap.error("--url and --token (or --start DIR)")
        url, token, pid = args.url, args.token, args.pid
    s = Server(url, token, pid)
    if not pid:
        say("note: no --pid, so no memory figures")
    sampler = Sampler(s)
    sampler.start()
    results = {"url": url, "pid": pid, "nproc": os.cpu_count(),
               "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    phases = args.phases.split(",")
    problems = []
    try:
        for ph in phases:
            t0 = time.monotonic()
            if ph == "baseline":
                sampler.set_phase("baseline")
                time.sleep(5)
                r = {"seconds": 5}
            elif ph == "sse":
                sampler.set_phase("sse")
                r = phase_sse(s, args.sse, args.sse_secs)
            elif ph == "slow":
                sampler.set_phase("slow-trickle")
                hold = args.header_timeout * 3 + 5
                r1 = phase_slow(s, args.slow, "trickle", 2.0, hold)
                say(f"[slow-trickle] {json.dumps(r1)}")
                idle = args.idle if args.idle is not None else args.max_connections + 200
                sampler.set_phase("slow-over-cap")
                r2 = phase_slow(s, idle, "idle", 1.0, args.header_timeout * 4 + 5)
                say(f"[slow-over-cap] {json.dumps(r2)}")
                sampler.set_phase("slow-recovered")
                time.sleep(3)
                r = {"trickle": r1, "over_cap": r2}
                results[ph] = r
                continue
            elif ph == "burst":
                sampler.set_phase("burst")
                r = phase_burst(s, args.burst_clients, args.burst_rounds, args.burst_only)
                if r["5xx_bodies"]:
                    problems.append(f"burst: 5xx other than 503 busy: {r['5xx_bodies']}")
            elif ph == "after":
                sampler.set_phase("after")
                r = phase_after(s, args.after_timeout)
                if not r.get("ok"):
                    problems.append(f"after job did not succeed: {r}")
            else:
                ap.error(f"unknown phase {ph}")
            results[ph] = r
            say(f"[{ph}] {round(time.monotonic() - t0)} s: {json.dumps(r)}")
    finally:
        sampler.finish()
        sampler.join(timeout=70)

    # Summary
    say("")
    say(f"server {url} pid {pid}; {os.cpu_count()} CPUs; load average at start {' '.join(results['loadavg_start'])}, "
        f"at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    say(f"{'phase':<16}{'probes':>7}{'fail':>6}{'med ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'RSS max MB':>12}{'HWM end MB':>12}{'train RSS MB':>14}")
    table = {}
    for ph, b in sampler.samples.items():
        if ph in ("start", "end") or not (b["lat"] or b["fail"]):
            continue
        row = {"probes": len(b["lat"]) + b["fail"], "fail": b["fail"],
               "median_ms": round(statistics.median(b["lat"]), 1) if b["lat"] else None,
               "p99_ms": round(pct(b["lat"], 99), 1) if b["lat"] else None,
               "max_ms": round(max(b["lat"]), 1) if b["lat"] else None,
               "rss_max_mb": round(max(b["rss"]), 1) if b["rss"] else None,
               "hwm_end_mb": round(b["hwm_end"], 1) if b["hwm_end"] else None,
               "train_rss_max_mb": round(max(b["kids"]), 1) if b["kids"] else None}
        table[ph] = row
        say(f"{ph:<16}{row['probes']:>7}{row['fail']:>6}{fmt(row['median_ms'], 1):>9}{fmt(row['p99_ms'], 1):>9}"
            f"{fmt(row['max_ms'], 1):>9}{fmt(row['rss_max_mb'], 1):>12}{fmt(row['hwm_end_mb'], 1):>12}"
            f"{fmt(row['train_rss_max_mb'], 1):>14}")
        if b["fail"] and ph not in ("slow-over-cap",):
            problems.append(f"/healthz failed {b['fail']} times during {ph}")
    results["healthz"] = table
    if "sse" in results:
        r = results["sse"]
        say(f"\nSSE: {r.get('streams')} streams, HTTP {r.get('http_status')}, {r.get('connect_fail')} failed to connect, "
            f"{r.get('saw_job_end')} saw the job end ({r.get('job_status')}), {r.get('events')} events, "
            f"first event median {r.get('first_event_ms_median')} ms")
    if "slow" in results:
        for k, r in results["slow"].items():
            say(f"slow {k}: {r['connections']} connections ({r['mode']}), {r['opened']} opened, "
                f"{r['closed_by_server']} closed by the server after {r['close_after_s_min']}-{r['close_after_s_max']} s "
                f"(median {r['close_after_s_median']}), {r['still_open']} still open at the end")
    if "burst" in results:
        r = results["burst"]
        say(f"\nburst: {r['requests']} requests from {r['clients']} clients in {r['seconds']} s")
        for k, v in sorted(r["by_kind"].items()):
            say(f"  {k:<40} {json.dumps(v, sort_keys=True):<34} median {r['latency_ms_median'][k]} ms, max {r['latency_ms_max'][k]} ms")
        say(f"  accepted (201, then cancelled): {r['accepted_and_cancelled'] or 'none'}")
    if "after" in results:
        r = results["after"]
        say(f"\nafter: job {r.get('job')} {r.get('status')} in {r.get('seconds')} s (loss {r.get('loss')}, error {r.get('error')})")
    if pid:
        rss, hwm = proc_status(pid)
        results["server_alive_at_end"] = rss is not None
        say(f"server process {'alive' if rss is not None else 'GONE'} at the end; VmHWM {fmt(hwm, 1)} MB")
        if rss is None:
            problems.append("the server process is gone")
    results["problems"] = problems
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    say("\n" + ("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
