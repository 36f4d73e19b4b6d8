"""PNG tiles: exact pixels and text chunks survive a round trip, and other readers agree."""

import io

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from components.core.pngmeta import decode_png, encode_png, read_png_text

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
