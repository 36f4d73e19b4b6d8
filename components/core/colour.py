"""The colour cast of generated tiles: how far a generator shifts the map's colours, away from its dots.

A generator should paint dots and leave the map alone. Its colour cast is, over the pixels that
are not dots, the mean absolute change of each RGB channel (0-255) of the generated tile from its
plain tile, with the signed mean change per channel beside it, so that a purple or teal wash shows
as such. Dot pixels are those in the marker colour range in the generated tile (`marker_mask`),
widened by `rim_px` so a dot's soft rim, outside the range, is not counted as cast.

`colour_cast` measures one tile or a batch; `ColourCastMeter` sums batches as they come. A cast
holds integer sums, so casts add up exactly: a batch's is the mean of its tiles' weighted by the
pixels each contributes.
"""

from __future__ import annotations

from threading import Lock
from typing import NamedTuple

import cv2
import numpy as np

from components.core.markers import MarkerRange, marker_mask

RIM_PX = 2  # the soft rim a generator blends around a dot, just outside the marker colour range
CHANNELS = ("r", "g", "b")


class ColourCast(NamedTuple):
    """Sums over the non-dot pixels of some tiles; the means are properties (None without a pixel)."""

    abs_sum: tuple[int, int, int] = (0, 0, 0)  # per channel, sum of |generated - plain|
    signed_sum: tuple[int, int, int] = (0, 0, 0)  # per channel, sum of generated - plain
    pixels: int = 0  # the non-dot pixels summed over
    total_pixels: int = 0  # all pixels of the tiles

    def __add__(self, other: ColourCast) -> ColourCast:  # type: ignore[override]  # not tuple concatenation
        return ColourCast(tuple(a + b for a, b in zip(self.abs_sum, other.abs_sum)),
                          tuple(a + b for a, b in zip(self.signed_sum, other.signed_sum)),
                          self.pixels + other.pixels, self.total_pixels + other.total_pixels)

    @property
    def per_channel(self) -> tuple[float, float, float] | None:
        """Mean absolute change of r, g and b (0-255)."""
        return tuple(total / self.pixels for total in self.abs_sum) if self.pixels else None

    @property
    def mean(self) -> float | None:
        """The mean of the three channels' mean absolute change: the cast as one number."""
        return sum(self.abs_sum) / (3 * self.pixels) if self.pixels else None

    @property
    def signed(self) -> tuple[float, float, float] | None:
        """Mean signed change of r, g and b: + where the generator adds that colour."""
        return tuple(total / self.pixels for total in self.signed_sum) if self.pixels else None

    @property
    def used_share(self) -> float | None:
        """The share of the tiles' pixels measured (the rest are dots and their rims)."""
        return self.pixels / self.total_pixels if self.total_pixels else None

    def as_dict(self, digits: int = 4) -> dict:
        """JSON-ready: r, g, b, mean, signed {r, g, b}, used_share, pixels (the means None without a pixel)."""
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, digits)

        per_channel, signed = self.per_channel or (None,) * 3, self.signed or (None,) * 3
        return {**{name: rounded(value) for name, value in zip(CHANNELS, per_channel)},
                "mean": rounded(self.mean),
                "signed": {name: rounded(value) for name, value in zip(CHANNELS, signed)},
                "used_share": rounded(self.used_share), "pixels": self.pixels}


def colour_cast(plain: np.ndarray, generated: np.ndarray, marker_range: MarkerRange = MarkerRange(),
                rim_px: int = RIM_PX) -> ColourCast:
    """The colour cast of uint8 RGB generated tiles against their plain tiles: (H, W, 3) or (N, H, W, 3)."""
    if plain.shape != generated.shape or plain.shape[-1:] != (3,) or plain.ndim not in (3, 4):
        raise ValueError(f"plain {plain.shape} and generated {generated.shape}: give tiles of one shape, "
                         "(H, W, 3) or (N, H, W, 3)")
    if plain.dtype != np.uint8 or generated.dtype != np.uint8:
        raise ValueError(f"plain {plain.dtype} and generated {generated.dtype}: give uint8 RGB tiles")
    generated = np.ascontiguousarray(generated.reshape(-1, *generated.shape[-3:]))
    plain = np.ascontiguousarray(plain.reshape(generated.shape))
    count, height, width, _ = generated.shape
    # One colour conversion for the whole batch (tiles stacked as one tall image), then each tile's dilation.
    dots = marker_mask(generated.reshape(count * height, width, 3), marker_range).reshape(count, height, width)
    if rim_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_px + 1, 2 * rim_px + 1))
        dots = np.stack([cv2.dilate(tile, kernel) if tile.any() else tile for tile in dots])
    # Sums over the kept pixels by OpenCV (exact integer sums; numpy's boolean indexing and int64 sums are
    # several times slower), each tile stacked under the one before as one tall image.
    tall_generated, tall_plain = generated.reshape(count * height, width, 3), plain.reshape(count * height, width, 3)
    kept = cv2.bitwise_not(dots.reshape(count * height, width))
    pixels = cv2.countNonZero(kept)
    abs_sum = _sums(cv2.absdiff(tall_generated, tall_plain), kept, pixels)
    signed_sum = _sums(tall_generated, kept, pixels) - _sums(tall_plain, kept, pixels)
    return ColourCast(tuple(int(value) for value in abs_sum), tuple(int(value) for value in signed_sum),
                      pixels, count * height * width)


def _sums(image: np.ndarray, mask: np.ndarray, pixels: int) -> np.ndarray:
    """Per-channel sums of a uint8 (H, W, 3) image where mask is set (pixels of them), as int64.

    cv2.mean sums exactly in integers and divides once in float64: times pixels, rounded, the sum again.
    """
    return np.rint(np.array(cv2.mean(image, mask=mask)[:3]) * pixels).astype(np.int64)


class ColourCastMeter:
    """The colour cast of many tiles, added batch by batch: add(plain, generated), then result()."""

    def __init__(self, marker_range: MarkerRange = MarkerRange(), rim_px: int = RIM_PX):
        self.marker_range, self.rim_px = marker_range, rim_px
        self._cast, self._lock = ColourCast(), Lock()

    def add(self, plain: np.ndarray, generated: np.ndarray) -> ColourCast:
        """Measure one tile or batch, add it, and return its own cast. Safe to call from several threads."""
        cast = colour_cast(plain, generated, self.marker_range, self.rim_px)
        with self._lock:
            self._cast += cast
        return cast

    def result(self) -> ColourCast:
        """The cast of every tile added so far."""
        with self._lock:
            return self._cast
