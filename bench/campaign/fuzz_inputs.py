"""http_fuzz.py's inputs: the seeds (pre-training configs from presets/ and ../shared, a
fine-tuning config, hostile YAML; PNGs of every colour type and depth, JPEGs when Pillow is
there) and the mutators (byte-level; YAML scalars, keys, nesting, anchors and encodings; PNG
chunks and IHDR fields, JPEG SOF sizes and segments)."""

import io
import os
import random
import re
import struct
import zlib

from .images import PNG_SIGNATURE, png, png_chunk
from .server import ROOT

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


def make_png(w, h, color=2, depth=8, interlace=0, extra=()):
    chans = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row_bytes = (w * chans * depth + 7) // 8
    raw = b"".join(b"\x00" + bytes(random.getrandbits(8) for _ in range(row_bytes)) for _ in range(h))
    if interlace:  # not a valid Adam7 layout, but the decoder must refuse it cleanly
        raw = raw + raw
    # zlib's default level, as the seeds have always been made.
    return png(w, h, raw, color, depth, interlace, extra, level=-1)


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
    out = PNG_SIGNATURE
    for kind, data in chunks:
        out += png_chunk(kind, data, None if fix_crc else random.getrandbits(32))
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
