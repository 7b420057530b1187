"""Renders the simulator's "mini-program codes": standard QR codes (segno) that encode the scene.

Real codes are round "sun codes" nobody can decode offline; a QR lets tests and the simulated phone
read the scene back (zxing-cpp). The PNG is written here, not by segno, because a benchmark renders
thousands of codes: a 1-bit palette PNG costs about a millisecond, segno's writer several.
"""

from __future__ import annotations

import struct
import zlib

import segno

BORDER = 4  # quiet zone, in modules
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Rgb = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def render_code(scene: str, width: int, *, line_color: Rgb = (0, 0, 0), hyaline: bool = False) -> bytes:
    """A PNG of exactly ``width`` by ``width`` pixels holding a QR code of ``scene``.

    ``hyaline`` makes the background transparent (as ``is_hyaline`` does); ``line_color`` colours
    the dark modules.
    """
    # A fixed mask skips segno's evaluation of all eight (80% of the time); decoders read the mask
    # from the format information, so the code stays standard.
    qr = segno.make_qr(scene, error="m", mask=0)
    modules = int(qr.symbol_size(scale=1, border=BORDER)[0])
    scale = max(1, width // modules)
    size = max(width, modules * scale)
    spare = size - modules * scale
    left, top = spare // 2, spare // 2
    pad_bits = (-size) % 8
    blank = b"\x00" + bytes((size + pad_bits) // 8)
    dark_run, light_run = "1" * scale, "0" * scale
    margin = "0" * (left + BORDER * scale)
    tail = "0" * (size - left - modules * scale + BORDER * scale + pad_bits)
    quiet = [blank] * (BORDER * scale)
    rows: list[bytes] = [blank] * top + quiet
    for row in qr.matrix:  # the symbol without its quiet zone, one bytearray of 0/1 per row
        bits = margin + "".join([dark_run if dark else light_run for dark in row]) + tail
        line = b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big")  # filter byte 0: none
        rows.extend([line] * scale)
    rows.extend(quiet)
    rows.extend([blank] * (size - len(rows)))
    header = struct.pack(">IIBBBBB", size, size, 1, 3, 0, 0, 0)  # 1 bit per pixel, palette
    out = [PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"PLTE", bytes((255, 255, 255, *line_color)))]
    if hyaline:
        out.append(_chunk(b"tRNS", b"\x00\xff"))  # palette entry 0 (the background) fully transparent
    out.append(_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)
