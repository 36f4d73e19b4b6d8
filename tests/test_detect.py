"""Dot detection on hand-made tiles with known answers."""

import cv2
import numpy as np

from components.core.detect import detect_markers, holds_more_dots, typical_dot_core_px
from components.core.geo import tile_at
from components.render.raster import draw_markers

TILE = tile_at(24.94, 60.17, 96, 2.0)
LAND = np.full((96, 96, 3), (234, 230, 221), dtype=np.uint8)


def dots(*centres_px, radius_px=3.0, blur_px=0.0) -> np.ndarray:
    centres = np.array(centres_px, dtype=np.float64)
    image = draw_markers(LAND, TILE, np.stack(TILE.px_to_3857(centres[:, 0], centres[:, 1]), axis=1), radius_px)
    return cv2.GaussianBlur(image, (0, 0), blur_px) if blur_px else image


def positions(detections) -> list[tuple[float, float]]:
    return sorted((round(d.col, 1), round(d.row, 1)) for d in detections)


def test_a_pure_dot_is_found_once_at_its_centre_with_score_one():
    (found,) = detect_markers(dots((40.3, 51.7)))
    assert abs(found.col - 40.3) < 0.25 and abs(found.row - 51.7) < 0.25
    assert found.score == 1.0 and abs(found.area_px - np.pi * 3 ** 2) < 3  # the opening trims lone rim pixels
    assert not found.touches_edge and found.blob_dots == 1


def test_touching_dots_are_split_at_their_saddle():
    found = detect_markers(dots((40.0, 50.0), (45.5, 50.0)))  # radius 3: the discs overlap
    assert len(found) == 2 and all(d.blob_dots == 2 for d in found)
    assert positions(found)[0][0] < 41 and positions(found)[1][0] > 44.5


def test_blurred_touching_dots_are_split_by_area_once_the_typical_dot_is_known():
    lone = [detect_markers(dots((20.0 + 14 * (k % 5), 20.0 + 14 * (k // 5)), blur_px=1.0))[0] for k in range(10)]
    dot_core_px = typical_dot_core_px(lone)
    pair = dots((40.0, 50.0), (44.5, 50.0), blur_px=1.0)
    (merged,) = detect_markers(pair)  # no saddle left after the blur
    assert holds_more_dots(merged, dot_core_px)
    split = detect_markers(pair, dot_core_px=dot_core_px)
    assert len(split) == 2
    assert abs(positions(split)[0][0] - 40.0) < 1.0 and abs(positions(split)[1][0] - 44.5) < 1.0


def test_a_dot_cut_by_the_border_says_so_and_noise_is_not_a_dot():
    (cut,) = detect_markers(dots((1.0, 50.0)))
    assert cut.touches_edge
    speckled = LAND.copy()
    speckled[10, 10] = speckled[30, 31] = (255, 0, 255)  # single magenta pixels
    assert detect_markers(speckled) == []
