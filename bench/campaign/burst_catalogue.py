"""The load burst's request catalogue: hostile API submissions (huge and non-finite configs,
alias bombs, deep nesting), hostile uploads (PNG/JPEG headers declaring huge images, a PNG whose
zlib stream inflates far) and the largest new-job page previews, sent through a signed-in page
session (`Browser`). Used by load_phases.phase_burst."""

import http.client
import os
import re
import struct
import urllib.parse
import zlib

from .images import png, png_chunk
from .server import ROOT

# The IDAT of a PNG that only declares its size: 64 zero bytes, far fewer than the header says.
FEW_ZEROS = b"\x00" * 64


def png_inflating(w, h):
    """A real w x h RGB PNG of zeros: every row is filter 0 + zeros; tiny compressed."""
    row = b"\x00" * (1 + 3 * w)
    co = zlib.compressobj(9)
    parts = [co.compress(row) for _ in range(h)]
    parts.append(co.flush())
    # The first 33 bytes are the signature and the IHDR chunk.
    return png(w, h, b"")[:33] + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


def jpeg_declaring(w, h):
    sof = struct.pack(">BHHB", 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    dqt = b"\x00" + bytes(range(1, 65))
    return (b"\xff\xd8" + b"\xff\xdb" + struct.pack(">H", len(dqt) + 2) + dqt
            + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\x00" * 64 + b"\xff\xd9")



def tiny_yaml(**over):
    text = open(os.path.join(ROOT, "presets", "tiny.yaml")).read()
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
        ("png-declares-16kx16k", png(16384, 16384, FEW_ZEROS)),
        ("png-declares-65535x1", png(65535, 1, FEW_ZEROS)),
        ("png-16mp-inflates-48mb", png_inflating(16384, 1024)),
        ("jpeg-declares-65500x65500", jpeg_declaring(65500, 65500)),
        ("png-truncated", png(64, 64, FEW_ZEROS)[:40]),
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
