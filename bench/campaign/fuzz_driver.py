"""http_fuzz.py's driver: a `Target` per kind of input (its corpus, answers seen, status and
crash counts) and the `Fuzzer`, whose worker threads mutate a corpus entry, send it, judge the
answer (a crash, a malformed error, a wrong 201), keep inputs with new answers and record
crashing inputs under OUT/crashes/."""

import json
import os
import random
import re
import threading

from .fuzz_inputs import image_mutate, yaml_mutate
from .server import Server


class Target:
    def __init__(self, name, seeds):
        self.name = name
        self.corpus = list(seeds)
        self.seen = set()
        self.execs = 0
        self.status = {}
        self.crashes = {}  # signature -> count
        self.lock = threading.Lock()


NON_FINITE = re.compile(r"(?im)^[^#\n]*:\s*[-+]?\.(inf|nan)\s*(#.*)?$")


def answer_signature(status, body):
    try:
        d = json.loads(body)
        msg = d.get("message", "") if isinstance(d, dict) else ""
        kp = d.get("key_path", "") if isinstance(d, dict) else ""
    except ValueError:
        msg, kp = body[:80].decode(errors="replace"), ""
    # Quoted parts echo the input (key names, values): blank them so that one branch is one answer.
    msg = re.sub(r"`[^`]*`|\"[^\"]*\"|'[^']*'", "Q", msg)
    msg = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", msg)[:60]
    return f"{status}|{kp}|{msg}"


def well_formed_error(body):
    try:
        d = json.loads(body)
    except ValueError:
        return False
    return isinstance(d, dict) and isinstance(d.get("error"), str) and isinstance(d.get("message"), str)


class Fuzzer:
    def __init__(self, args, url, token, pid):
        self.s = Server(url, token, pid)
        self.args = args
        self.stop = threading.Event()
        self.out = args.out
        os.makedirs(os.path.join(self.out, "crashes"), exist_ok=True)
        self.crash_n = 0
        self.glock = threading.Lock()

    def post(self, path, body, ctype, timeout=60):
        st, _, data = self.s.api("POST", path, raw=body, ctype=ctype, timeout=timeout)
        return st, data

    def healthy(self):
        return self.s.healthy()

    def record_crash(self, t, payload, why):
        sig = why.split("\n")[0][:120]
        with t.lock:
            first = sig not in t.crashes
            t.crashes[sig] = t.crashes.get(sig, 0) + 1
        if first:
            with self.glock:
                self.crash_n += 1
                n = self.crash_n
            p = os.path.join(self.out, "crashes", f"{t.name}-{n}")
            open(p + ".bin", "wb").write(payload if isinstance(payload, bytes) else payload.encode())
            open(p + ".txt", "w").write(why + "\n")
            print(f"CRASH {t.name}: {sig} -> {p}.bin", flush=True)

    def one(self, t, rng):
        parent = rng.choice(t.corpus)
        if t.name == "yaml":
            kind, text = parent
            text = yaml_mutate(rng, text, [c[1] for c in t.corpus])
            if rng.random() < 0.1:  # the same config as JSON, when it parses as a mapping
                body = {"name": "fuzz", "config_yaml": text}
            elif kind == "pretrain":
                body = {"name": "fuzz", "config_yaml": text}
            else:
                body = {"name": "fuzz", "kind": kind, "preset": "tiny", "finetune_yaml": text}
            try:
                raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
            except (UnicodeEncodeError, ValueError):
                raw = json.dumps(body).encode()
            payload, path, ctype, child = raw, "/api/v1/jobs", "application/json", (kind, text)
        else:
            payload = image_mutate(rng, parent, t.corpus)
            path, ctype, child = "/api/v1/uploads", "application/octet-stream", payload
        try:
            st, resp = self.post(path, payload, ctype)
        except Exception as e:  # reset, refused, timeout
            st, resp = type(e).__name__, b""
        with t.lock:
            t.execs += 1
            t.status[st] = t.status.get(st, 0) + 1
        if not isinstance(st, int):
            alive = self.healthy()
            self.record_crash(t, payload, f"no answer: {st}; server healthy after: {alive}")
            if not alive:
                self.stop.set()
            return
        if st >= 500 and st != 503:
            self.record_crash(t, payload, f"HTTP {st}: {resp[:500]!r}")
        elif st >= 400 and st != 503 and not well_formed_error(resp):
            self.record_crash(t, payload, f"HTTP {st} with a body that is not the error JSON: {resp[:300]!r}")
        if st == 201 and t.name == "yaml" and NON_FINITE.search(child[1]):
            # Not a crash but a wrong answer: a non-finite number must be refused (issue 16,
            # "finite numbers only"), not accepted as something else.
            self.record_crash(t, payload, "201 for a config with a non-finite value (.inf/.nan)")
        if st == 201 and t.name == "yaml":
            try:
                job = json.loads(resp)["id"]
                self.post(f"/api/v1/jobs/{job}/cancel", b"", "application/json")
            except (ValueError, KeyError, OSError):
                pass
        sig = answer_signature(st, resp)
        with t.lock:
            if sig not in t.seen:
                t.seen.add(sig)
                if len(payload) < 2_000_000:
                    t.corpus.append(child)

    def worker(self, targets, seed):
        rng = random.Random(seed)
        n = 0
        while not self.stop.is_set():
            t = targets[n % len(targets)]
            n += 1
            self.one(t, rng)
            if n % 200 == 0 and not self.healthy():
                self.record_crash(t, b"", "/healthz failed between cases")
                self.stop.set()
