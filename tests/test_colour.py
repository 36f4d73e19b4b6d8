"""The colour cast of generated tiles: exact on synthetic tiles, dots and their rims left out, batches add up."""

import threading

import cv2
import numpy as np
import pytest

from components.core.colour import RIM_PX, ColourCast, ColourCastMeter, colour_cast
from components.core.markers import MARKER_RGB, MarkerRange, marker_mask

SIDE = 64


def _plain(seed: int = 0) -> np.ndarray:
    """A map-like tile: blocks of pale tints of grey, too unsaturated (under 0.3) to be a marker even when
    shifted by the tests' changes, with room to add 25 to or take 20 from any channel."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(150, 200, (SIDE // 8, SIDE // 8, 1)) + rng.integers(0, 30, (SIDE // 8, SIDE // 8, 3))
    return cv2.resize(blocks.astype(np.uint8), (SIDE, SIDE), interpolation=cv2.INTER_NEAREST)


def _shifted(tile: np.ndarray, change: tuple[int, int, int]) -> np.ndarray:
    return (tile.astype(np.int16) + np.array(change, dtype=np.int16)).astype(np.uint8)


def _with_dot(tile: np.ndarray, centre: tuple[int, int], radius: int = 4) -> np.ndarray:
    dotted = tile.copy()
    cv2.circle(dotted, centre, radius, MARKER_RGB, -1)
    return dotted


def _reference(plain: np.ndarray, generated: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    change = generated.astype(np.int64) - plain.astype(np.int64)
    return np.abs(change)[kept].mean(axis=0), change[kept].mean(axis=0)


def test_a_uniform_change_of_red_is_that_change_on_red_only():
    plain = _plain()
    cast = colour_cast(plain, _shifted(plain, (10, 0, 0)))
    assert cast.per_channel == (10.0, 0.0, 0.0) and cast.signed == (10.0, 0.0, 0.0)
    assert cast.mean == pytest.approx(10 / 3) and cast.used_share == 1.0 and cast.pixels == SIDE * SIDE
    assert cast.as_dict() == {"r": 10.0, "g": 0.0, "b": 0.0, "mean": 3.3333, "signed": {"r": 10.0, "g": 0.0, "b": 0.0},
                              "used_share": 1.0, "pixels": SIDE * SIDE}


def test_signed_change_tells_a_wash_from_noise():
    plain = _plain()
    wash = colour_cast(plain, _shifted(plain, (6, -8, 6)))  # purple: red and blue up, green down
    assert wash.per_channel == (6.0, 8.0, 6.0) and wash.signed == (6.0, -8.0, 6.0)
    noise = _shifted(plain, (5, 5, 5))
    noise[::2] = _shifted(plain, (-5, -5, -5))[::2]  # as much change, no cast in any one direction
    cast = colour_cast(plain, noise)
    assert cast.per_channel == (5.0, 5.0, 5.0) and cast.signed == (0.0, 0.0, 0.0) and cast.mean == 5.0


def test_dots_and_their_rims_are_left_out():
    plain = _plain()
    generated = _with_dot(_shifted(plain, (0, 0, 12)), (20, 30))
    # A soft rim just outside the marker colour range: pale pink, as a generator blends a dot into the map.
    rim = cv2.circle(np.zeros((SIDE, SIDE), np.uint8), (20, 30), 5, 255, 1) > 0
    generated[rim] = (235, 190, 235)
    assert not (cv2.cvtColor(generated, cv2.COLOR_RGB2HSV_FULL)[rim][:, 1] >= 0.35 * 255).any()  # outside the range
    cast = colour_cast(plain, generated)
    assert cast.per_channel == (0.0, 0.0, 12.0) and cast.signed == (0.0, 0.0, 12.0)
    dot = cv2.circle(np.zeros((SIDE, SIDE), np.uint8), (20, 30), 4, 255, -1)
    left_out = cv2.dilate(dot, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RIM_PX + 1,) * 2)) > 0
    assert not (rim & ~left_out).any()
    assert cast.pixels == SIDE * SIDE - left_out.sum() and cast.used_share == pytest.approx(cast.pixels / SIDE**2)
    without_rim = colour_cast(plain, generated, rim_px=0)  # counted, the dot and its rim are a cast
    assert without_rim.pixels == SIDE * SIDE - (dot > 0).sum() and without_rim.mean > cast.mean


def test_a_marker_range_of_its_own():
    plain = _plain()
    generated = _with_dot(_shifted(plain, (3, 3, 3)), (32, 32))
    narrow = MarkerRange(hue_deg=(100.0, 140.0))  # green dots: this magenta one is counted
    assert colour_cast(plain, generated, narrow).mean > colour_cast(plain, generated).mean == 3.0


def test_a_batch_is_the_mean_of_its_tiles_weighted_by_the_pixels_used():
    plains = np.stack([_plain(seed) for seed in range(4)])
    rng = np.random.default_rng(7)
    generated = np.clip(plains.astype(np.int16) + rng.integers(-20, 25, plains.shape), 0, 255).astype(np.uint8)
    for index, centres in enumerate([[(10, 10)], [], [(40, 20), (50, 50)], [(0, 0)]]):  # a dot on a corner too
        for centre in centres:
            generated[index] = _with_dot(generated[index], centre)
    tiles = [colour_cast(plain, tile) for plain, tile in zip(plains, generated)]
    batch = colour_cast(plains, generated)
    assert batch == sum(tiles, ColourCast())  # exactly: integer sums
    weights = np.array([tile.pixels for tile in tiles], dtype=float)
    assert len(set(weights)) > 1  # the tiles differ in pixels used
    assert batch.per_channel == pytest.approx(np.average([tile.per_channel for tile in tiles], axis=0,
                                                         weights=weights), abs=1e-12)
    assert batch.signed == pytest.approx(np.average([tile.signed for tile in tiles], axis=0, weights=weights),
                                         abs=1e-12)
    assert batch.pixels == weights.sum() and batch.total_pixels == 4 * SIDE * SIDE
    # The same as plain numpy over the kept pixels (marker_mask, dilated per tile: no rim crosses to the next).
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RIM_PX + 1,) * 2)
    dots = np.stack([cv2.dilate(marker_mask(tile), kernel) for tile in generated])
    mean_abs, mean_signed = _reference(plains, generated, dots == 0)
    assert batch.per_channel == pytest.approx(mean_abs, abs=1e-12)
    assert batch.signed == pytest.approx(mean_signed, abs=1e-12)


def test_the_meter_adds_batches_from_several_threads():
    plains = np.stack([_plain(seed) for seed in range(8)])
    generated = np.stack([_with_dot(_shifted(plain, (index, 0, -index)), (30, 30)) for index, plain in
                          enumerate(plains)])
    meter = ColourCastMeter()
    assert meter.result() == ColourCast() and meter.result().mean is None
    assert meter.result().as_dict() == {"r": None, "g": None, "b": None, "mean": None,
                                        "signed": {"r": None, "g": None, "b": None}, "used_share": None, "pixels": 0}
    threads = [threading.Thread(target=meter.add, args=(plains[i:i + 2], generated[i:i + 2])) for i in range(0, 8, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert meter.result() == colour_cast(plains, generated)
    assert meter.result().signed == pytest.approx((3.5, 0.0, -3.5))


def test_bad_inputs():
    plain = _plain()
    with pytest.raises(ValueError, match="tiles of one shape"):
        colour_cast(plain, plain[:32])
    with pytest.raises(ValueError, match="uint8 RGB"):
        colour_cast(plain.astype(np.float32), plain.astype(np.float32))
