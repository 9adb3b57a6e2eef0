#!/usr/bin/env python3
"""bench/fuzz/http_fuzz.py — structure-aware fuzzing of the config/YAML parser and of the
PNG/JPEG upload check, driven through a live `ifp serve` over HTTP (issue 16, item 5; not run by
CI). Python 3.9+ standard library; Pillow, when importable, adds more image seeds.

Why over HTTP and not cargo-fuzz: see bench/fuzz/README.md (in short: the parsers live in crates
that pull in candle, and the upload check in the server crate; an instrumented build of them
takes far longer than the campaign on the 2-core machine, and HTTP also exercises the server's
glue: JSON/YAML bodies -> config -> limits -> admission, and the body limit and gate).

Targets (each case is one request):
  yaml   POST /api/v1/jobs with `config_yaml` (pre-training), or kind compare/finetune with
         `finetune_yaml`, or the config as JSON (`config`): mutated seed configs (presets,
         ../shared golden and reference configs, hostile ones).
  image  POST /api/v1/uploads with the raw body: mutated PNGs (every colour type and bit
         depth, interlaced, palette + tRNS, 16-bit; IHDR fields rewritten with the CRC fixed,
         chunks dropped, duplicated, reordered, oversized, zlib streams corrupted or inflating
         far) and JPEGs (baseline, progressive, grey, CMYK, restart markers; SOF sizes
         rewritten, segments cut).
Mutations: byte-level (flips, interesting integers, cut, splice, duplicate ranges) and
structure-level (YAML scalars replaced by hostile values: +-inf, NaN, 2^63, 1e400, -1, "",
NUL, 100 KB strings, tags like !!binary/!!python/..., anchors/aliases/merge keys, deep
nesting, duplicate and unknown keys; PNG/JPEG as above). An input whose answer (status and
error message with numbers blanked) was not seen before joins the corpus, so the corpus grows
towards new validation branches.

A crash is: a 5xx other than 503 `busy`; a connection reset or no answer in 60 s; an error body
that is not JSON `{"error", "message", ...}`; the server process gone; /healthz failing after a
case; and (a wrong answer rather than a crash) a 201 for a YAML config with a `.inf`/`.nan` value. Crashing inputs go to OUT/crashes/<target>-<n>.bin with a .txt note (status, body).
Accepted jobs (201) are cancelled at once. Run it against a server with no worker slots.

Run:
  P=/var/tmp/ifp-campaign-venv/bin/python
  $P bench/fuzz/http_fuzz.py --start /tmp/ifp-fuzz --seconds 300        # own server, both targets
  $P bench/fuzz/http_fuzz.py --url URL --token T --pid PID --target image --seconds 120
Options: --target yaml|image|both (both), --seconds (300), --threads (4: the gate's places on
2 cores, so the gate seldom answers 503), --seed (1), --out (/tmp/ifp-fuzz-out),
--ifp-bin, --port (18681), --datasets (the fine-tuning data folder for --start, default
../shared/data when it exists).

Prints a progress line every 30 s and at the end, per target: execs, execs/s, crashes (unique
by status + message), corpus size, distinct answers, status counts, and the server's VmHWM;
exit 1 when there was any crash.
"""

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

# ---------------------------------------------------------------------------------------------
# Seeds


def yaml_seeds():
    seeds = []
    for d in [os.path.join(ROOT, "presets"), os.path.join(ROOT, "..", "shared", "golden", "configs"),
              os.path.join(ROOT, "..", "shared", "reference")]:
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith(".yaml"):
                    seeds.append(("pretrain", open(os.path.join(d, f), encoding="utf-8").read()))
    ft = ("DATA:\n  TRAIN_DIR: clean/CBSD68\n  TEST_DIR: clean/Kodak24\n  NOISE_SIGMA: 25\n"
          "  CROP: 16\n  BATCH_SIZE: 2\n  VAL_IMAGES: 1\n  VAL_CROP: 32\n  MAX_TEST_IMAGES: 2\n"
          "TRAIN:\n  STEPS: 4\n  WARMUP_EPOCHS: 1\n  BASE_LR: 1e-3\nSAVE_FREQ: 2\nSEED: 0\n")
    seeds += [("compare", ft), ("finetune", ft.replace("  TEST_DIR: clean/Kodak24\n", "").replace("  MAX_TEST_IMAGES: 2\n", ""))]
    seeds += [("pretrain", s) for s in [
        "MODEL: {TYPE: uformer, UFORMER: {EMBED_DIM: 8, DEPTHS: [1,1,1,1,1,1,1,1,1], WIN_SIZE: 4}}\nDATA: {IMG_SIZE: 32}\n",
        "DATA: {NOISE: {WIDTH: 64, HEIGHT: 64, MEAN: 0.5, STD: 0.1, SEED: 3}, FILTER_TYPE: MFM}\n",
        "TRAIN: {AMP: bf16, DEVICE: cuda, OPTIMIZER: {NAME: adamw, BETAS: [0.9, 0.95]}}\n",
        "a: &a [1, 2]\nb: *a\n",
        "<<: {MODEL: {}}\n",
        "DATA:\n  NOISE_IMAGE: uploads/" + "0" * 64 + ".png\n",
        "DATA:\n  NOISE_IMAGE: /etc/passwd\n",
        "MODEL: !!binary aGVsbG8=\n",
        "? [a]\n: 1\n",
        "{}", "", "---\n...\n", "%YAML 1.2\n---\nMODEL: {}\n",
    ]]
    return seeds


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(w, h, color=2, depth=8, interlace=0, extra=()):
    chans = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row_bytes = (w * chans * depth + 7) // 8
    raw = b"".join(b"\x00" + bytes(random.getrandbits(8) for _ in range(row_bytes)) for _ in range(h))
    if interlace:  # not a valid Adam7 layout, but the decoder must refuse it cleanly
        raw = raw + raw
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))
    for k, d in extra:
        out += png_chunk(k, d)
    return out + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def image_seeds():
    random.seed(12345)
    seeds = [make_png(8, 8, 2, 8), make_png(16, 5, 6, 8), make_png(7, 9, 0, 1), make_png(9, 3, 0, 16),
             make_png(4, 4, 4, 8), make_png(5, 5, 3, 8, extra=[(b"PLTE", bytes(range(48))), (b"tRNS", b"\x00\x80")]),
             make_png(6, 6, 2, 16), make_png(8, 8, 2, 8, interlace=1),
             make_png(3, 3, 2, 8, extra=[(b"gAMA", struct.pack(">I", 45455)), (b"tEXt", b"k\x00v" * 10)])]
    try:
        from PIL import Image
        for mode, fmt, kw in [("RGB", "JPEG", {}), ("RGB", "JPEG", {"progressive": True}),
                              ("L", "JPEG", {}), ("CMYK", "JPEG", {}), ("RGB", "JPEG", {"subsampling": 0}),
                              ("RGB", "JPEG", {"quality": 5, "restart_marker_blocks": 1} ),
                              ("RGB", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("I;16", "PNG", {}),
                              ("RGB", "PNG", {"optimize": True})]:
            im = Image.new(mode, (17, 11))
            im.putdata([random.randrange(0, 256) if mode not in ("RGB", "RGBA", "CMYK") else
                        tuple(random.randrange(256) for _ in range(len(mode))) for _ in range(17 * 11)])
            b = io.BytesIO()
            try:
                im.save(b, fmt, **kw)
            except TypeError:
                kw.pop("restart_marker_blocks", None)
                im.save(b, fmt, **kw)
            seeds.append(b.getvalue())
    except ImportError:
        pass
    ref = os.path.join(ROOT, "..", "shared", "reference", "noise-0.jpg")
    if os.path.exists(ref):
        seeds.append(open(ref, "rb").read())
    return seeds


# ---------------------------------------------------------------------------------------------
# Mutators

INTERESTING = [0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024, 4095, 4096,
               16383, 16384, 16385, 32767, 32768, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1]
HOSTILE_SCALARS = [".inf", "-.inf", ".nan", ".NaN", "1e400", "-1e400", "1e-400", "-1", "0", "-0",
                   str(2**63), str(2**64), str(2**62), "9" * 400, "0x7fffffff", "0o777", "1_000",
                   "~", "null", "''", '""', "[]", "{}", "[1, 2, 3]", "true", "no", "on", "'\\0'",
                   '"\\0"', '"a\\u0000b"', '"\\ud800"', "!!binary aGVsbG8=", "!!set {a, b}",
                   "!!timestamp 2001-12-14", "!!python/object/apply:os.system [ls]", "!custom x",
                   "&x 1", "*x", "*undefined", "'" + "A" * 100_000 + "'", "\u202e\u0000",
                   "restormer", "uformer", "IFP", "MFM", "cuda", "cpu", "bf16", "../../../etc/passwd",
                   "uploads/" + "a" * 64 + ".png", "/dev/zero", "clean/CBSD68", "clean/../..", "(0.9, 0.95)",
                   "[1, 1, 1, 200000]", "[" + ", ".join(["64"] * 64) + "]", "2048", "8192", "4096", "1000000"]
KEYS = ["MODEL", "DATA", "TRAIN", "TYPE", "DIM", "IMG_SIZE", "BATCH_SIZE", "STEPS", "NOISE", "WIDTH",
        "HEIGHT", "NOISE_IMAGE", "FILTER_TYPE", "SAMPLE_RATIO", "MASK_RADIUS1", "BASE_LR", "HEADS",
        "NUM_BLOCKS", "UFORMER", "RESTORMER", "DECODER", "SAVE_FREQ", "PRINT_FREQ", "SEED", "TAG",
        "TRAIN_DIR", "TEST_DIR", "CROP", "VAL_CROP", "EMBED_DIM", "WIN_SIZE", "DEPTHS", "AMP",
        "DEVICE", "OPTIMIZER", "BETAS", "EPOCHS", "WARMUP_EPOCHS", "KEEP_CHECKPOINTS", "UNKNOWN_KEY"]


def bytes_mutate(rng, b, corpus):
    b = bytearray(b)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        op = rng.randrange(8)
        if not b:
            b += bytes([rng.randrange(256)])
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.randrange(256)
        elif op == 2 and len(b) > 4:
            v = rng.choice(INTERESTING)
            b[i:i + 4] = struct.pack(">I", v & 0xFFFFFFFF)
        elif op == 3:
            del b[i:i + rng.randrange(1, 64)]
        elif op == 4:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randrange(1, 256)]
        elif op == 5:
            b = b[:i]
        elif op == 6 and corpus:
            other = rng.choice(corpus)
            j = rng.randrange(len(other)) if other else 0
            b = b[:i] + bytearray(other[j:])
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    return bytes(b)


SCALAR_RE = re.compile(r"(:[ \t]+)([^\n#{}\[\],]+)")


def yaml_mutate(rng, text, corpus):
    op = rng.randrange(12)
    if op <= 3:  # replace some scalar values
        ms = list(SCALAR_RE.finditer(text))
        for _ in range(rng.choice([1, 1, 2, 3])):
            if not ms:
                break
            m = rng.choice(ms)
            text = text[:m.start(2)] + rng.choice(HOSTILE_SCALARS) + text[m.end(2):]
            ms = list(SCALAR_RE.finditer(text))
        return text
    if op == 4:  # insert a key somewhere
        lines = text.split("\n")
        i = rng.randrange(len(lines) + 1)
        indent = " " * rng.choice([0, 2, 4, 6, 1, 3])
        lines.insert(i, f"{indent}{rng.choice(KEYS)}: {rng.choice(HOSTILE_SCALARS)}")
        return "\n".join(lines)
    if op == 5:  # duplicate a line (duplicate keys) or drop one
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        if rng.random() < 0.5:
            lines.insert(i, lines[i])
        else:
            del lines[i]
        return "\n".join(lines)
    if op == 6:  # deep nesting
        d = rng.choice([50, 128, 129, 1000, 10000])
        k = rng.choice(KEYS)
        return text + f"\n{k}: " + "[" * d + "]" * d + "\n"
    if op == 7:  # anchors, aliases, merge keys, wide aliases
        wide = "[" + ", ".join(["1"] * rng.choice([10, 1000, 5000])) + "]"
        return rng.choice([
            f"x: &a {wide}\ny: [" + ", ".join(["*a"] * rng.choice([2, 100, 10000])) + "]\n" + text,
            text.replace(":", ": &n" + str(rng.randrange(9)), 1),
            "base: &b {DIM: 8}\nMODEL:\n  RESTORMER:\n    <<: *b\n" + text,
            text + "\n" + "'quoted & * # ' : 1\n",
        ])
    if op == 8:  # splice with another corpus entry
        other = rng.choice(corpus) if corpus else text
        a, b = rng.randrange(len(text) + 1), rng.randrange(len(other) + 1)
        return text[:a] + other[b:]
    if op == 9:  # flow style, tabs, CRLF, BOM, documents
        return rng.choice([text.replace("\n", "\r\n"), text.replace("  ", "\t"), "\ufeff" + text,
                           "---\n" + text + "\n---\n" + text, text.replace(": ", ":"),
                           text + "\n...\n" + text, "%TAG ! tag:x,2000:\n" + text])
    if op == 10:  # unicode and control characters
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(["\u0000", "\u0007", "\u202e", "\ud7ff", "\U0001F600", "\u00a0", "\x85", "\u2028"]) + text[i:]
    return bytes_mutate(rng, text.encode("utf-8", "surrogatepass"), None).decode("utf-8", "replace")


def png_chunks(b):
    if not b.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    out, i = [], 8
    while i + 8 <= len(b):
        n = struct.unpack(">I", b[i:i + 4])[0]
        kind = b[i + 4:i + 8]
        data = b[i + 8:i + 8 + n]
        out.append([kind, data])
        i += 12 + n
        if n > len(b):
            break
    return out


def png_build(chunks, fix_crc=True):
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        crc = zlib.crc32(kind + data) if fix_crc else random.getrandbits(32)
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    return out


def image_mutate(rng, b, corpus):
    chunks = png_chunks(b)
    op = rng.randrange(10)
    if chunks and op <= 5:
        ihdr = next((c for c in chunks if c[0] == b"IHDR" and len(c[1]) == 13), None)
        if op == 0 and ihdr:  # rewrite dimensions
            w, h = rng.choice([(16384, 16384), (16385, 1), (1, 16385), (65535, 65535), (2**31 - 1, 1),
                               (0, 5), (5, 0), (16384, 1024), (4096, 4097), (rng.randrange(1, 64), rng.randrange(1, 64))])
            ihdr[1] = struct.pack(">II", w, h) + ihdr[1][8:]
        elif op == 1 and ihdr:  # depth, colour type, compression, filter, interlace
            f = bytearray(ihdr[1])
            f[8 + rng.randrange(5)] = rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255, rng.randrange(256)])
            ihdr[1] = bytes(f)
        elif op == 2:  # drop, duplicate or reorder chunks
            i = rng.randrange(len(chunks))
            r = rng.random()
            if r < 0.33:
                del chunks[i]
            elif r < 0.66:
                chunks.insert(i, list(chunks[i]))
            else:
                j = rng.randrange(len(chunks))
                chunks[i], chunks[j] = chunks[j], chunks[i]
        elif op == 3:  # a zlib stream that inflates far, or a broken one
            idat = next((c for c in chunks if c[0] == b"IDAT"), None)
            if idat:
                r = rng.random()
                if r < 0.4:
                    idat[1] = zlib.compress(b"\x00" * rng.choice([10**6, 10**7, 5 * 10**7]), 9)
                elif r < 0.7:
                    d = bytearray(idat[1])
                    if d:
                        d[rng.randrange(len(d))] ^= 0xFF
                    idat[1] = bytes(d)
                else:
                    idat[1] = idat[1][:rng.randrange(len(idat[1]) + 1)]
        elif op == 4:  # extra or hostile chunks
            chunks.insert(rng.randrange(1, len(chunks) + 1), rng.choice([
                [b"acTL", struct.pack(">II", 2**31, 0)], [b"fcTL", b"\x00" * 26], [b"iCCP", b"p\x00\x00" + zlib.compress(b"\x00" * 10**6)],
                [b"zTXt", b"k\x00\x00" + zlib.compress(b"A" * 10**6)], [b"PLTE", b"\x00" * rng.choice([0, 3, 768, 771])],
                [b"tRNS", b"\xff" * rng.choice([1, 2, 6, 256, 300])], [b"sBIT", b"\x08"], [b"IDAT", b""],
                [b"eXIf", b"MM\x00*" + b"\x00" * 100], [b"aaaa", b"x" * 1000]]))
        else:  # CRC left wrong
            return png_build(chunks, fix_crc=False)
        return png_build(chunks)
    if b.startswith(b"\xff\xd8") and op <= 6:
        d = bytearray(b)
        sofs = [m.start() for m in re.finditer(rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf]", bytes(d))]
        if sofs and op <= 3:
            i = rng.choice(sofs)
            h, w = rng.choice([(65500, 65500), (65535, 1), (0, 0), (16385, 16385), (4096, 4096), (1, 65535),
                               (rng.randrange(1, 64), rng.randrange(1, 64))])
            if i + 9 <= len(d):
                d[i + 5:i + 9] = struct.pack(">HH", h, w)
            if op == 3 and i + 10 <= len(d):
                d[i + 9] = rng.choice([0, 1, 2, 3, 4, 255])  # components
            return bytes(d)
        if op <= 5:  # cut at a marker, or repeat a segment
            ms = [m.start() for m in re.finditer(rb"\xff[^\x00\xff]", bytes(d))]
            if ms:
                i = rng.choice(ms)
                return bytes(d[:i]) if rng.random() < 0.5 else bytes(d[:i]) + bytes(d[i:i + 200]) * 50 + bytes(d[i:])
        return bytes(d)[:rng.randrange(2, len(d) + 1)]
    return bytes_mutate(rng, b, corpus)


# ---------------------------------------------------------------------------------------------
# The driver


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
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.token, self.pid = u.hostname, u.port, token, pid
        self.args = args
        self.stop = threading.Event()
        self.out = args.out
        os.makedirs(os.path.join(self.out, "crashes"), exist_ok=True)
        self.crash_n = 0
        self.glock = threading.Lock()

    def post(self, path, body, ctype, timeout=60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request("POST", path, body=body, headers={"Authorization": "Bearer " + self.token, "Content-Type": ctype})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def healthy(self):
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=30)
            c.request("GET", "/healthz")
            ok = c.getresponse().status == 200
            c.close()
        except OSError:
            ok = False
        if self.pid and not os.path.exists(f"/proc/{self.pid}"):
            ok = False
        return ok

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


def vm(pid, key):
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", open(f"/proc/{pid}/status").read(), re.M)
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


def start_server(args):
    d = os.path.abspath(args.start)
    os.makedirs(d, exist_ok=True)
    cmd = [args.ifp_bin, "serve", "--data-dir", os.path.join(d, "data"), "--bind", f"127.0.0.1:{args.port}",
           "--workers", "0"]
    if args.datasets:
        cmd += ["--datasets-dir", args.datasets]
    log = open(os.path.join(d, "serve.log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    tok = os.path.join(d, "data", "admin-token")
    for _ in range(120):
        if p.poll() is not None:
            sys.exit(f"ifp serve exited: see {log.name}")
        if os.path.exists(tok) and os.path.getsize(tok):
            try:
                c = http.client.HTTPConnection("127.0.0.1", args.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
        time.sleep(1)
    return p, f"http://127.0.0.1:{args.port}", open(tok).read().strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--start", metavar="DIR")
    ap.add_argument("--ifp-bin", default="/var/tmp/ifp-target/release/ifp")
    ap.add_argument("--port", type=int, default=18681)
    default_data = os.path.join(ROOT, "..", "shared", "data")
    ap.add_argument("--datasets", default=os.path.abspath(default_data) if os.path.isdir(default_data) else None)
    ap.add_argument("--target", choices=["yaml", "image", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="/tmp/ifp-fuzz-out")
    args = ap.parse_args()

    proc = None
    if args.start:
        proc, url, token = start_server(args)
        pid = proc.pid
    else:
        if not (args.url and args.token):
            ap.error("--url and --token (or --start DIR)")
        url, token, pid = args.url, args.token, args.pid
    targets = []
    if args.target in ("yaml", "both"):
        targets.append(Target("yaml", yaml_seeds()))
    if args.target in ("image", "both"):
        targets.append(Target("image", image_seeds()))
    f = Fuzzer(args, url, token, pid)
    random.seed(args.seed)
    threads = [threading.Thread(target=f.worker, args=(targets, args.seed * 1000 + i), daemon=True)
               for i in range(args.threads)]
    t0 = time.monotonic()
    for th in threads:
        th.start()

    def report(final=False):
        el = time.monotonic() - t0
        for t in targets:
            print(f"{'final' if final else f'{el:5.0f} s'} {t.name:<5} execs={t.execs} "
                  f"execs/s={t.execs / el:.1f} crashes={sum(t.crashes.values())} unique_crashes={len(t.crashes)} "
                  f"corpus={len(t.corpus)} answers={len(t.seen)} status={json.dumps({str(k): v for k, v in sorted(t.status.items(), key=str)})}",
                  flush=True)
        if pid:
            print(f"{'final' if final else f'{el:5.0f} s'} server VmRSS={vm(pid, 'VmRSS')} MB VmHWM={vm(pid, 'VmHWM')} MB", flush=True)

    try:
        while time.monotonic() - t0 < args.seconds and not f.stop.is_set():
            f.stop.wait(min(30, args.seconds - (time.monotonic() - t0)))
            if not f.stop.is_set():
                report()
    except KeyboardInterrupt:
        pass
    f.stop.set()
    for th in threads:
        th.join(timeout=70)
    alive = f.healthy()
    report(final=True)
    print(f"server healthy at the end: {alive}")
    for t in targets:
        for sig, n in t.crashes.items():
            print(f"  crash [{t.name}] x{n}: {sig}")
        answers = sorted(t.seen)
        with open(os.path.join(args.out, f"answers-{t.name}.txt"), "w") as fh:
            fh.write("\n".join(answers) + "\n")
    print(f"distinct answers written to {args.out}/answers-*.txt; crashing inputs in {args.out}/crashes/")
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    sys.exit(1 if any(t.crashes for t in targets) or not alive else 0)


if __name__ == "__main__":
    main()
