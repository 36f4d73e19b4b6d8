"""Find the marker dots in one tile: one detection per dot, at its sub-pixel centroid.

1. colour mask: pixels in the marker range (components.core.markers), tolerant to a GAN's hue
   drift and softened edges;
2. clean-up: a morphological opening drops isolated noise pixels;
3. connected components with a minimum area; a round blob that fills its bounding box like a disc
   is one dot, and all of those are measured in one vectorised pass (most blobs: the fast path);
4. in the other blobs, touching dots are split at the peaks of the distance transform of the blob's core (a dot's
   centre is farther from the background than its rim, so two merged discs keep two peaks with a
   saddle between them);
5. a blob whose core is several times the tile set's typical dot is split into that many dots
   (k-means) when its peaks are fewer: blurred dots that touch may leave no saddle;
6. each part's centroid is weighted by how magenta its pixels are, so a softened rim pulls less
   than the core; its score is the mean of that closeness over the part.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from components.core.markers import MarkerRange, hsv_marker_mask, magenta_closeness, to_hsv

CROSS_3X3 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
# Two peaks are two dots when the depth between them falls below this share of the shallower one
# (merged discs of radius 3 px at 5 px apart: ~0.6; bumps on one blurred dot: above 0.85).
SADDLE_RATIO = 0.8
# The typical dot is measured on the tile set's own dots (a generator may paint them larger or
# smaller than the renderer did) once there are this many lone ones.
MIN_DOTS_FOR_TYPICAL_AREA = 10
# A blob at most this elongated and at least this full of its bounding box is one round dot.
ROUND_ASPECT = 1.25
ROUND_FILL = 0.65


class DetectSettings(NamedTuple):
    marker_range: MarkerRange = MarkerRange()
    # A rendered dot of radius 3 px covers 29 px (about 36 once blurred); specks below 5 px that
    # survive the opening are noise.
    min_area_px: int = 5
    # Peaks of the distance transform closer than this belong to one dot: two dots closer than
    # this are reported as one.
    min_separation_px: float = 3.0
    # A peak must be this far inside the blob's core: shallower bumps are the rim of a single dot.
    min_peak_depth_px: float = 1.5
    # A blob's core: its pixels at least this saturated, i.e. about half magenta or more. Where a
    # blurred dot's rim fades, its edge sits where the original disc's edge was.
    core_saturation: float = 0.55


class Detection(NamedTuple):
    col: float  # continuous pixel coordinates: the centre of pixel (c, r) is (c + 0.5, r + 0.5)
    row: float
    area_px: int
    score: float  # mean closeness of the dot's pixels to pure magenta, 0..1
    touches_edge: bool  # the dot is cut by the tile's border: its centroid is biased inwards
    blob_core_px: int  # core pixels of the blob this dot came from (with the dots it was split from)
    blob_dots: int  # how many dots that blob was split into


def detect_markers(rgb: np.ndarray, settings: DetectSettings = DetectSettings(),
                   dot_core_px: float | None = None) -> list[Detection]:
    """The marker dots of an (H, W, 3) RGB uint8 tile.

    `dot_core_px`, the core area of one dot (typical_dot_core_px of the tile set's detections),
    also splits a blob whose core holds that many dots more than its peaks tell apart: blurred dots
    that touch may leave no saddle, but their area still counts them.
    """
    hsv = to_hsv(rgb)
    # Opening drops isolated noise pixels. No closing: it would fill the waist between two
    # touching dots, which is what tells them apart.
    mask = cv2.morphologyEx(hsv_marker_mask(hsv, settings.marker_range), cv2.MORPH_OPEN, CROSS_3X3)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=_label_type(mask))
    if count == 1:
        return []
    core = hsv_marker_mask(hsv, settings.marker_range._replace(min_saturation=settings.core_saturation)) > 0
    core_px = np.bincount(labels[core], minlength=count)
    blob_stats = _blob_sums(rgb, labels, count)
    detections = []
    for label in range(1, count):
        left, top, width, height, area = stats[label]
        if area < settings.min_area_px:
            continue
        one_by_area = dot_core_px is None or _dot_count(core_px[label], dot_core_px) == 1
        if one_by_area and _plainly_one_dot(width, height, area):
            detections.append(_whole_blob(label, blob_stats, stats[label], int(core_px[label]), rgb.shape[:2]))
            continue
        window = (slice(top, top + height), slice(left, left + width))
        blob = labels[window] == label
        detections.extend(_split_blob(blob, blob & core[window], magenta_closeness(rgb[window]), left, top,
                                      rgb.shape[:2], settings, dot_core_px))
    return detections


def _label_type(mask: np.ndarray) -> int:
    """16-bit labels (three times faster in OpenCV) whenever they cannot run out: 8-connected blobs
    take at least 2 x 2 pixels of a grid, so an image holds at most a quarter of its pixels in labels."""
    return cv2.CV_16U if mask.size // 4 < 2 ** 16 else cv2.CV_32S


def _plainly_one_dot(width: int, height: int, area: int) -> bool:
    """A round, full blob: one dot, without looking for peaks (most blobs, so this is the fast path).

    A disc fills pi / 4 = 0.79 of its square bounding box; two touching discs side by side make a
    box twice as long, and diagonally they fill little more than half of it.
    """
    return max(width, height) <= ROUND_ASPECT * min(width, height) and area >= ROUND_FILL * width * height


def _blob_sums(rgb: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per blob label: the sum of its pixels' magenta closeness, and of closeness x column and x row."""
    pixels = np.flatnonzero(labels)
    label = labels.ravel()[pixels]
    weight = magenta_closeness(rgb.reshape(-1, 3)[pixels]).astype(np.float64)
    rows, cols = np.divmod(pixels, labels.shape[1])
    return (np.bincount(label, weight, count), np.bincount(label, weight * cols, count),
            np.bincount(label, weight * rows, count))


def _whole_blob(label: int, blob_sums: tuple[np.ndarray, np.ndarray, np.ndarray], blob_stats: np.ndarray,
                core_px: int, tile_shape: tuple[int, int]) -> Detection:
    """The detection of a blob that is one dot: its closeness-weighted centroid."""
    weight, weighted_cols, weighted_rows = (sums[label] for sums in blob_sums)
    left, top, width, height, area = blob_stats
    height_px, width_px = tile_shape
    touches = left == 0 or top == 0 or left + width == width_px or top + height == height_px
    return Detection(col=weighted_cols / weight + 0.5, row=weighted_rows / weight + 0.5, area_px=int(area),
                     score=weight / area, touches_edge=bool(touches), blob_core_px=core_px, blob_dots=1)


def typical_dot_core_px(detections: list[Detection]) -> float | None:
    """The median core area of the whole dots that were alone in their blob, when there are enough."""
    alone = [d.blob_core_px for d in detections if d.blob_dots == 1 and not d.touches_edge]
    return float(np.median(alone)) if len(alone) >= MIN_DOTS_FOR_TYPICAL_AREA else None


def holds_more_dots(detection: Detection, dot_core_px: float) -> bool:
    """Whether the detection's blob is larger than the dots it was split into."""
    return _dot_count(detection.blob_core_px, dot_core_px) > detection.blob_dots


def _dot_count(core_px: int, dot_core_px: float) -> int:
    return max(1, round(core_px / dot_core_px))


def _split_blob(blob: np.ndarray, blob_core: np.ndarray, closeness: np.ndarray, left: int, top: int,
                tile_shape: tuple[int, int], settings: DetectSettings, dot_core_px: float | None) -> list[Detection]:
    """One detection per distance-transform peak of a connected blob (a window of the tile), or per
    dot its core area holds when dot_core_px is given and the peaks are fewer.

    The peaks come from the blob's core, its pixels that are at least half magenta: blur spreads a
    rim of fainter pixels that fills the waist between two touching dots, the core keeps it.
    """
    padded = cv2.copyMakeBorder(blob_core.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    peaks = _peaks(depth, settings)
    core_px = int(blob_core.sum())
    if dot_core_px is not None and _dot_count(core_px, dot_core_px) > len(peaks):
        peaks = _cluster_centres(np.argwhere(blob_core).astype(np.float64), _dot_count(core_px, dot_core_px))
    rows, cols = np.nonzero(blob)
    # Each pixel goes to its nearest peak: the parts of two merged discs meet along the saddle.
    nearest = np.argmin((rows[:, None] - peaks[None, :, 0]) ** 2 + (cols[:, None] - peaks[None, :, 1]) ** 2, axis=1)
    weight = closeness[rows, cols]
    height_px, width_px = tile_shape
    detections = []
    for part in range(len(peaks)):
        chosen = nearest == part
        part_weight = weight[chosen]
        if chosen.sum() < settings.min_area_px or part_weight.sum() <= 0:
            continue
        part_rows, part_cols = rows[chosen] + top, cols[chosen] + left
        touches = part_rows.min() == 0 or part_cols.min() == 0 or part_rows.max() == height_px - 1 \
            or part_cols.max() == width_px - 1
        detections.append(Detection(
            col=float(np.average(part_cols, weights=part_weight)) + 0.5,
            row=float(np.average(part_rows, weights=part_weight)) + 0.5,
            area_px=int(chosen.sum()), score=float(part_weight.mean()), touches_edge=bool(touches),
            blob_core_px=core_px, blob_dots=len(peaks)))
    return detections


def _cluster_centres(pixels: np.ndarray, count: int, iterations: int = 10) -> np.ndarray:
    """k-means centres of pixel coordinates, started from the farthest-apart pixels (deterministic)."""
    centres = [pixels[np.argmax(np.linalg.norm(pixels - pixels.mean(axis=0), axis=1))]]
    while len(centres) < count:
        distance = np.min([np.linalg.norm(pixels - centre, axis=1) for centre in centres], axis=0)
        centres.append(pixels[np.argmax(distance)])
    centres = np.array(centres)
    for _ in range(iterations):
        nearest = np.argmin(np.linalg.norm(pixels[:, None] - centres[None], axis=2), axis=1)
        centres = np.array([pixels[nearest == k].mean(axis=0) if (nearest == k).any() else centres[k]
                            for k in range(count)])
    return centres


def _peaks(depth: np.ndarray, settings: DetectSettings) -> np.ndarray:
    """(P, 2) row/col of the dots in a blob: the peaks of its distance transform that a saddle
    separates from every deeper peak. A blob always has at least one: its deepest point."""
    local_max = (depth >= cv2.dilate(depth, np.ones((3, 3), np.uint8))) & (depth >= settings.min_peak_depth_px)
    if not local_max.any():
        return np.array([np.unravel_index(np.argmax(depth), depth.shape)], dtype=np.float64)
    # A flat top gives several maximal pixels: each group of touching ones is one peak, at its middle.
    count, groups, _, centroids = cv2.connectedComponentsWithStats(local_max.astype(np.uint8), connectivity=8)
    peak_depths = [float(depth[groups == group].max()) for group in range(1, count)]
    kept: list[tuple[np.ndarray, float]] = []
    for index in np.argsort(peak_depths)[::-1]:  # deepest first: a shallow bump joins the deep dot
        peak, peak_depth = centroids[index + 1, ::-1], peak_depths[index]  # (x, y) -> (row, col)
        if all(_separate(depth, peak, peak_depth, other, other_depth, settings) for other, other_depth in kept):
            kept.append((peak, peak_depth))
    return np.array([peak for peak, _ in kept])


def _separate(depth: np.ndarray, peak: np.ndarray, peak_depth: float, other: np.ndarray, other_depth: float,
              settings: DetectSettings) -> bool:
    """Whether two peaks are two dots: far enough apart, with a saddle between them.

    Along the segment between two merged discs the depth dips well below both peaks; along the
    rim bumps of one blurred dot it barely does.
    """
    distance_px = float(np.hypot(*(peak - other)))
    if distance_px < settings.min_separation_px:
        return False
    steps = np.linspace(0.0, 1.0, int(np.ceil(distance_px * 2)) + 1)
    samples = np.rint(peak[None, :] + steps[:, None] * (other - peak)[None, :]).astype(int)
    saddle_depth = depth[samples[:, 0], samples[:, 1]].min()
    return saddle_depth < SADDLE_RATIO * min(peak_depth, other_depth)
