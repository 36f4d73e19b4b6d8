"""Dot detection on hand-made tiles with known answers."""

import cv2
import numpy as np
import pytest

from components.core.detect import (
    REJECTION_REASONS,
    Detection,
    Found,
    detect_markers,
    find_markers,
    holds_more_dots,
    second_pass,
    typical_dot_core_px,
)
from components.core.geo import tile_at
from components.core.markers import MARKER_RGB
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


# Magenta that is no markers: painted with OpenCV on a 256 px tile, as a generator may paint it.
TILE_256 = np.full((256, 256, 3), (234, 230, 221), dtype=np.uint8)


def only(reason: str | None) -> dict[str, int]:
    """The rejection counts of one blob rejected for that reason (None: of nothing rejected)."""
    return {name: int(name == reason) for name in REJECTION_REASONS}


def painted(base: np.ndarray, draw) -> np.ndarray:
    image = base.copy()
    draw(image)
    return image


def test_a_stripe_is_one_rejected_stripe_not_dozens_of_dots():
    stripe = painted(TILE_256, lambda image: cv2.rectangle(image, (28, 100), (227, 107), MARKER_RGB, cv2.FILLED))
    # 200 x 8 px: once the typical dot (29 px, radius 3) is known, its area used to make it 55 dots
    for dot_core_px in (None, 29.0):
        assert find_markers(stripe, dot_core_px=dot_core_px) == Found([], only("stripe"))


def test_a_ring_is_rejected():
    ring = painted(LAND, lambda image: cv2.circle(image, (48, 48), 8, MARKER_RGB, 3))
    for marker_radius_px in (None, 3.0):
        assert find_markers(ring, marker_radius_px=marker_radius_px) == Found([], only("ring"))


def test_a_frame_along_the_tile_border_is_rejected():
    # The bundled generator paints a band along the top of a tile of empty land, whose typical dot is 98 px.
    band = painted(TILE_256, lambda image: cv2.rectangle(image, (20, 0), (242, 4), MARKER_RGB, cv2.FILLED))
    frame = painted(TILE_256, lambda image: cv2.rectangle(image, (0, 0), (255, 255), MARKER_RGB, 4))
    for image in (band, frame):
        for dot_core_px in (None, 98.0):
            assert find_markers(image, dot_core_px=dot_core_px) == Found([], only("frame"))


def test_a_blotch_is_a_smear_and_a_thin_line_no_discs_once_the_marker_radius_is_known():
    blotch = painted(LAND, lambda image: cv2.circle(image, (48, 48), 12, MARKER_RGB, cv2.FILLED))
    assert find_markers(blotch, marker_radius_px=3.0) == Found([], only("smear"))
    line = painted(LAND, lambda image: cv2.line(image, (30, 40), (50, 40), MARKER_RGB, 2))
    assert find_markers(line, marker_radius_px=3.0) == Found([], only("not_discs"))


def test_touching_markers_still_give_one_point_each():
    pair = find_markers(dots((40.0, 50.0), (45.5, 50.0)))
    assert pair.rejected == only(None) and positions(pair.detections) == [(40.0, 50.0), (45.5, 50.0)]
    pair_r5 = find_markers(dots((40.0, 50.0), (49.0, 50.0), radius_px=5), marker_radius_px=5.0)
    assert pair_r5.rejected == only(None) and positions(pair_r5.detections) == [(39.8, 50.0), (49.0, 50.0)]
    assert all(d.roundness > 0.9 for d in pair_r5.detections)
    chain = find_markers(dots((40.0, 50.0), (45.5, 50.0), (51.0, 50.0)))
    assert chain.rejected == only(None)
    assert positions(chain.detections) == [(40.0, 50.0), (45.5, 50.0), (51.0, 50.0)]
    assert all(d.blob_dots == 3 for d in chain.detections)


@pytest.mark.parametrize("radius_px", [3, 5])
def test_a_lone_marker_is_one_round_point(radius_px):
    image = dots((40.3, 51.7), radius_px=radius_px)
    for marker_radius_px in (None, radius_px):  # the tile's own dot gives the radius when none is given
        found = find_markers(image, marker_radius_px=marker_radius_px)
        (dot,) = found.detections
        assert found.rejected == only(None) and dot.blob_dots == 1
        assert abs(dot.col - 40.3) < 0.25 and abs(dot.row - 51.7) < 0.25 and dot.roundness >= 0.9
        assert detect_markers(image, marker_radius_px=marker_radius_px) == found.detections


def test_dots_with_no_core_give_no_typical_dot_and_so_no_second_pass():
    coreless = Detection(col=5.0, row=5.0, area_px=60, score=0.8, touches_edge=False, blob_core_px=0, blob_dots=1,
                         roundness=0.5)
    assert typical_dot_core_px([coreless] * 12) is None
    assert second_pass([Found([coreless] * 12, dict.fromkeys(REJECTION_REASONS, 1))]) == (None, [])
    cored = coreless._replace(blob_core_px=40)
    assert typical_dot_core_px([cored] * 12) == 40.0
    assert second_pass([Found([cored] * 12, dict.fromkeys(REJECTION_REASONS, 0)),
                        Found([cored._replace(blob_core_px=90)], dict.fromkeys(REJECTION_REASONS, 0))]) == (40.0, [1])
