"""The marker colour: what the renderer paints, the map style avoids and the detector looks for.

Markers are filled discs of pure magenta. A GAN repaints them with softened edges, noise and a
shifted hue, so the detector accepts a range around magenta; the map style must never produce a
pixel in the default range (tested on every sample tile), so that range finds markers and nothing
else.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

MARKER_RGB = (255, 0, 255)


class MarkerRange(NamedTuple):
    """Hue interval (degrees, 0-360) and the least saturation and value (0-1) of a marker pixel."""

    hue_deg: tuple[float, float] = (260.0, 340.0)  # magenta is 300: +-40 deg covers a GAN's drift
    min_saturation: float = 0.35  # softened edges blend with the map's greys and whites
    min_value: float = 0.35


def marker_mask(rgb: np.ndarray, marker_range: MarkerRange = MarkerRange()) -> np.ndarray:
    """uint8 mask (255 where the pixel is in the range) of an (H, W, 3) RGB uint8 image."""
    return hsv_marker_mask(to_hsv(rgb), marker_range)


def to_hsv(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's full-range HSV: all three channels scaled to 0..255."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)


def hsv_marker_mask(hsv: np.ndarray, marker_range: MarkerRange) -> np.ndarray:
    """marker_mask of an image already in to_hsv form (for several ranges over one image)."""
    low_hue, high_hue = (round(deg / 360.0 * 255.0) for deg in marker_range.hue_deg)
    low = (low_hue, round(marker_range.min_saturation * 255.0), round(marker_range.min_value * 255.0))
    return cv2.inRange(hsv, low, (high_hue, 255, 255))


def magenta_closeness(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, 1 for pure magenta down to 0 for the farthest colour (float32; shape (...) of (..., 3))."""
    distance = np.linalg.norm(rgb.astype(np.float32) - np.array(MARKER_RGB, dtype=np.float32), axis=-1)
    return 1.0 - distance / np.float32(np.sqrt(3) * 255.0)
