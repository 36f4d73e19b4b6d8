"""PNG tiles: exact pixels and text chunks survive a round trip, and other readers agree."""

import io
import struct
import zlib

import numpy as np
import pytest
from isal import isal_zlib
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from components.core.pngmeta import _chunk, decode_png, encode_png, read_png_text

TEXT = {"locgen:georef": '{"bounds_3857": [1.5, 2.5, 3.5, 4.5]}', "Copyright": "© OpenStreetMap contributors"}


def test_round_trip_is_exact_and_pillow_reads_the_same_pixels_and_text():
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    png = encode_png(rgb, TEXT)
    assert np.array_equal(decode_png(png), rgb)
    assert read_png_text(png) == TEXT
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB" and image.size == (53, 37)
        assert np.array_equal(np.asarray(image), rgb)
        assert image.text == TEXT


def test_text_written_by_pillow_is_read():
    buffer = io.BytesIO()
    info = PngInfo()
    info.add_text("Copyright", "© OpenStreetMap contributors")  # Latin-1: a tEXt chunk
    info.add_itxt("locgen:georef", "{}")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(buffer, "PNG", pnginfo=info)
    assert read_png_text(buffer.getvalue()) == {"Copyright": "© OpenStreetMap contributors", "locgen:georef": "{}"}


def test_png_from_other_writers_with_row_filters_decode_the_same():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", optimize=True)  # Pillow filters the rows
    assert np.array_equal(decode_png(buffer.getvalue()), rgb)
    ours = encode_png(rgb, {})
    assert np.array_equal(decode_png(ours), rgb)
    with pytest.raises(ValueError):
        decode_png(ours[:60])  # cut short


def _png_declaring(width: int, height: int, image_data: bytes) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with this (compressed) image data."""
    return encode_png(np.zeros((16, 16, 3), dtype=np.uint8), {}).replace(
        struct.pack(">II", 16, 16), struct.pack(">II", width, height), 1).split(b"IDAT")[0][:-4] + \
        _chunk(b"IDAT", image_data) + _chunk(b"IEND", b"")


def test_a_png_declaring_more_pixels_than_a_tile_may_have_is_refused_before_inflating():
    with pytest.raises(ValueError, match=r"^40000x40000 px, beyond the 16 to 4096 px a tile may have$"):
        decode_png(_png_declaring(40000, 40000, zlib.compress(b"")))
    with pytest.raises(ValueError, match=r"^64x64 px, but its manifest row says 256x256 px$"):
        decode_png(encode_png(np.zeros((64, 64, 3), dtype=np.uint8), {}), size_px=256)


def test_image_data_that_inflates_beyond_its_pixels_is_refused_without_inflating_it_all():
    bomb = isal_zlib.compress(bytes(1 << 28), 1)  # 256 MiB of zeros in a few hundred kB, for a 256 x 256 tile
    assert len(bomb) < 1 << 20
    with pytest.raises(ValueError, match=r"^256x256 px, but its image data inflates to another size$"):
        decode_png(_png_declaring(256, 256, bomb), size_px=256)
