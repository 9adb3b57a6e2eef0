"""load.py's measuring and its phases: the `Sampler` thread (a /healthz probe on a fresh
connection every 0.2 s and the server's memory from /proc, filed under the running phase) and
the phases themselves: SSE fan-out, slow and over-the-cap connections, the burst (its requests
are in burst_catalogue) and a normal job afterwards. Each phase returns a dict of its figures."""

import asyncio
import json
import re
import statistics
import threading
import time

from .burst_catalogue import Browser, hostile_submissions, hostile_uploads, preview_forms
from .server import children_rss, proc_status


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
