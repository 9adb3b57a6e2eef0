"""The server side of the campaigns: start an `ifp serve` or connect to a running one, send it
HTTP requests, read its memory from /proc, and the options every campaign script takes for that
(--url, --token, --pid, --start, --ifp-bin, --port). Shared by bench/load.py and
bench/http_fuzz.py."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse

# The repository root: presets/ lives there, and ../shared (golden and reference configs, the
# fine-tuning data) next to it.
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

DEFAULT_IFP_BIN = "/var/tmp/ifp-target/release/ifp"


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
        """An API request with the bearer token; `obj` goes as JSON, `raw` as it is."""
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
        h = {"Authorization": "Bearer " + self.token}
        if body is not None:
            h["Content-Type"] = ctype
        return self.request(method, path, body, h, timeout)

    def healthy(self, timeout=30):
        """/healthz answers 200 and, when the pid is known, the process is still there."""
        try:
            ok = self.request("GET", "/healthz", timeout=timeout)[0] == 200
        except OSError:
            ok = False
        if self.pid and not os.path.exists(f"/proc/{self.pid}"):
            ok = False
        return ok


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


def add_server_args(ap, port, start_help):
    """The options that say which server to use: a running one (--url, --token, --pid) or one
    this script starts (--start, --ifp-bin, --port)."""
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--pid", type=int, help="the server process (for its memory figures)")
    ap.add_argument("--start", metavar="DIR", help=start_help)
    ap.add_argument("--ifp-bin", default=DEFAULT_IFP_BIN)
    ap.add_argument("--port", type=int, default=port)


def connect(ap, args, serve_args):
    """(process or None, url, token, pid) of the server the options name; with --start, an
    `ifp serve <serve_args>` started in that folder."""
    if args.start:
        proc, url, token = start_server(args.start, args.ifp_bin, args.port, serve_args)
        return proc, url, token, proc.pid
    if not (args.url and args.token):
        ap.error("--url and --token (or --start DIR)")
    return None, args.url, args.token, args.pid


def start_server(folder, ifp_bin, port, serve_args):
    """Starts `ifp serve` with its data under folder/data and its log in folder/serve.log, and
    waits (up to 2 minutes) for the admin token and a 200 from /healthz."""
    data = os.path.abspath(folder)
    os.makedirs(data, exist_ok=True)
    log = open(os.path.join(data, "serve.log"), "w")
    cmd = [ifp_bin, "serve", "--data-dir", os.path.join(data, "data"),
           "--bind", f"127.0.0.1:{port}"] + list(serve_args)
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    tok = os.path.join(data, "data", "admin-token")
    for _ in range(120):
        if p.poll() is not None:
            sys.exit(f"ifp serve exited: see {log.name}")
        # The token file appears before the listener is up, so it alone does not mean ready.
        if os.path.exists(tok) and os.path.getsize(tok) > 0:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
        time.sleep(1)
    return p, f"http://127.0.0.1:{port}", open(tok).read().strip()


def stop_server(proc):
    """SIGTERM, so that the server shuts down as it would in service; a kill after 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
