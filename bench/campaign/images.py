"""PNG building blocks shared by the load burst's hostile uploads (burst_catalogue) and the
fuzzer's image seeds and mutations (fuzz_inputs)."""

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind, data, crc=None):
    """One chunk: length, type, data and the CRC (the right one unless `crc` says otherwise)."""
    if crc is None:
        crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(w, h, raw, color=2, depth=8, interlace=0, extra=(), level=9):
    """A PNG whose IHDR declares w x h, with the `extra` (type, data) chunks and one IDAT of
    `raw` deflated at `level`; raw need not match the header, which is the point of most uses."""
    out = PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))
    for kind, data in extra:
        out += png_chunk(kind, data)
    return out + png_chunk(b"IDAT", zlib.compress(raw, level)) + png_chunk(b"IEND", b"")
