"""PNG encoding with text chunks, so a single tile image carries its own georeference.

OpenCV encodes fast but cannot write text chunks; a PNG chunk is simple enough (length, type,
data, CRC-32) to insert right after the IHDR chunk ourselves.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR_END = len(PNG_SIGNATURE) + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, data, CRC
# zlib level 1, no row filter: on flat-coloured map tiles the fastest setting and, measured on
# Helsinki tiles, also the smallest files (row filters only help photographs).
ENCODE_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(rgb: np.ndarray, text: dict[str, str]) -> bytes:
    """PNG bytes of an (H, W, 3) RGB uint8 image with UTF-8 text chunks (iTXt, uncompressed)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ENCODE_PARAMS)
    if not ok:
        raise RuntimeError("OpenCV could not encode the tile as PNG")
    png = encoded.tobytes()
    # iTXt: keyword, NUL, compression flag 0, method 0, empty language tag NUL, empty translated keyword NUL.
    chunks = b"".join(_chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))
                      for key, value in text.items())
    return png[:IHDR_END] + chunks + png[IHDR_END:]


def read_png_text(png: bytes) -> dict[str, str]:
    """The tEXt and iTXt (uncompressed) chunks of a PNG, as a dict."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    text = {}
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        data = png[offset + 8:offset + 8 + length]
        if kind == b"tEXt":
            key, _, value = data.partition(b"\x00")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = data.partition(b"\x00")
            if rest[:1] == b"\x00":  # uncompressed; skip the flag, method, language and translated keyword
                _, _, rest = rest[2:].partition(b"\x00")
                _, _, value = rest.partition(b"\x00")
                text[key.decode("latin-1")] = value.decode("utf-8")
        offset += 12 + length
    return text


def decode_png(png: bytes) -> np.ndarray:
    """(H, W, 3) RGB uint8 array of PNG bytes."""
    bgr = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable PNG file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
