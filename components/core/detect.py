"""Find the marker dots in one tile: one detection per dot, at its sub-pixel centroid.

A blob of marker colour becomes k points only when k marker-sized discs explain it; what else a
generator paints in magenta (stripes, frames along the tile's border, rings, smears) is rejected,
and `find_markers` counts the rejected blobs by reason (REJECTION_REASONS).

1. colour mask: pixels in the marker range (components.core.markers), tolerant to a GAN's hue
   drift and softened edges;
2. clean-up: a morphological opening drops isolated noise pixels;
3. connected components with a minimum area. A blob's shape is its core (its pixels at least
   about half magenta: where a blurred dot's rim fades, the core's edge sits where the disc's
   was), or all its pixels when it is faint;
4. a round blob that fills its bounding box like a disc, with its centroid on its own pixels, is
   one dot: all of those are measured in one vectorised pass (most blobs: the fast path);
5. the others are judged by their shape and its distance transform, first whatever the markers'
   size: a blob that encloses background is a ring, one far longer than wide a stripe (either is
   a frame when it runs along the tile's border);
6. the marker radius: from the tile set's typical dot (`dot_core_px`), else the radius the tiles
   were drawn with (`marker_radius_px`), else the tile's own blobs, else the renderer's 3 px. A
   blob longer than a chain of a few markers is a stripe too, one deeper than a marker by a clear
   margin (round ones too) a smear;
7. the rest is split at the peaks of the distance transform (a dot's centre is farther from the
   background than its rim, so two merged discs keep two peaks with a saddle between them), and
   into as many dots as its core holds typical dots when the peaks are fewer (k-means: blurred
   dots that touch may leave no saddle). It is not made of discs when discs of the marker radius
   at its peaks cover too little of it, nor do discs at k-means centres (as many as markers its
   area holds, one more than its peaks at least) that it fills enough;
8. each part's centroid is weighted by how magenta its pixels are, so a softened rim pulls less
   than the core; its score is the mean of that closeness over the part, its roundness the IoU of
   its shape and a disc of the marker radius at its centroid.
"""

from __future__ import annotations

import math
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

# The renderer's default marker radius (`locgen render --marker-radius-px`): the last resort.
DEFAULT_MARKER_RADIUS_PX = 3.0
# Without a known radius, the tile's own blobs give it, within these bounds (the pipelines draw
# 5 px, and the bundled generator paints its dots up to 1.3 times the radius it was trained on).
ESTIMATED_RADIUS_PX = (1.5, 8.0)
# Why a blob gave no point. Every key is always in Found.rejected.
REJECTION_REASONS = (
    "ring",       # it encloses background (at least MIN_HOLE_PX pixels): a ring or a loop
    "frame",      # a stripe or a loop that runs along the tile's border
    "stripe",     # far longer than wide, or than a chain of MAX_CHAIN_MARKERS markers: a line
    "smear",      # deeper than a marker by a clear margin: a blotch
    "not_discs",  # no set of discs of the marker radius explains it (a line thinner than a marker)
)
# Blobs smaller than a disc of half the default radius say nothing of the marker's size.
MIN_ESTIMATE_PX = 7
# Enclosed background of at least this many pixels makes a ring (noise leaves 1-2 px holes). A
# ring round and full enough for the fast path has its hole where its centroid is.
MIN_HOLE_PX = 4
# A stripe: its shape's area over the square of its width (2 x the depth of its distance transform,
# which for a disc is its radius within a pixel) above this, whatever the marker's size: a disc
# gives ~0.7, a chain of k touching markers ~0.9 k (4: 3.6), a stripe its length over its width
# (8 x 200 px: 25; the frame a generator paints along a tile's top: 11).
STRIPE_ELONGATION = 6.0
# ... or longer (its area over its width) than a chain of this many markers.
MAX_CHAIN_MARKERS = 6
# A frame: a stripe with at least this share of its length on the tile's outermost pixels.
FRAME_BORDER_SHARE = 0.5
# A smear: deeper than this many marker radii (its inscribed disc holds 2.25 markers). The bundled
# generator's dots reach 1.31 times the radius it was trained on, and 1.17 times the one measured.
SMEAR_RADII = 1.5
# A split blob is made of discs when its parts' discs cover at least this share of its shape, and
# (when larger than one marker) it at least this share of them within its box: a line much thinner
# than a marker fills little of them.
MIN_EXPLAINED = 0.75
MIN_FILLED = 0.6


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
    # 0..1: the IoU of the dot's shape (its core; all its pixels when faint) and a disc of the
    # marker radius at its centroid, within the tile (and, for a split dot, within its share)
    roundness: float


class Found(NamedTuple):
    detections: list[Detection]
    rejected: dict[str, int]  # blobs that gave no point, by reason: every key of REJECTION_REASONS


def detect_markers(rgb: np.ndarray, settings: DetectSettings = DetectSettings(), dot_core_px: float | None = None,
                   *, marker_radius_px: float | None = None) -> list[Detection]:
    """The marker dots of an (H, W, 3) RGB uint8 tile: `find_markers(...).detections`."""
    return find_markers(rgb, settings, dot_core_px, marker_radius_px).detections


def find_markers(rgb: np.ndarray, settings: DetectSettings = DetectSettings(), dot_core_px: float | None = None,
                 marker_radius_px: float | None = None) -> Found:
    """The marker dots of an (H, W, 3) RGB uint8 tile, and how many blobs were no markers, by reason.

    `dot_core_px`, the core area of one dot (typical_dot_core_px of the tile set's detections),
    gives the marker radius and also splits a blob whose core holds that many dots more than its
    peaks tell apart: blurred dots that touch may leave no saddle, but their area still counts them.
    Without it, `marker_radius_px` (the radius the tiles were drawn with) gives the radius; without
    either, the tile's own blobs do (a generator's tiles record none), or else the renderer's 3 px.
    """
    if marker_radius_px is not None and not marker_radius_px > 0:
        raise ValueError(f"marker_radius_px {marker_radius_px}: give a radius above 0")
    rejected = dict.fromkeys(REJECTION_REASONS, 0)
    hsv = to_hsv(rgb)
    # Opening drops isolated noise pixels. No closing: it would fill the waist between two
    # touching dots, which is what tells them apart.
    mask = cv2.morphologyEx(hsv_marker_mask(hsv, settings.marker_range), cv2.MORPH_OPEN, CROSS_3X3)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=_label_type(mask))
    if count == 1:
        return Found([], rejected)
    # A blob's pixels are in the marker range, so its core is those also saturated enough (rounded
    # as hsv_marker_mask does).
    core = _Core(hsv[..., 1], round(settings.core_saturation * 255.0))
    widths, heights, areas = (stats[:, key] for key in (cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
    blobs = _BlobPixels(rgb, hsv, labels, count, core, areas)
    candidates = areas >= settings.min_area_px
    candidates[0] = False
    # A round, full blob is one dot, without looking for peaks (most blobs: the fast path). A disc
    # fills pi / 4 = 0.79 of its square bounding box; two touching discs side by side make a box
    # twice as long, and diagonally they fill little more than half of it. A ring that round has its
    # hole at its centre.
    round_ = candidates & (np.maximum(widths, heights) <= ROUND_ASPECT * np.minimum(widths, heights)) \
        & (areas >= ROUND_FILL * widths * heights) & blobs.centre_inside(labels)
    if dot_core_px is not None:  # unless its area holds more dots than one
        round_ &= np.maximum(1, np.rint(blobs.core_px / dot_core_px)) == 1
    # The other blobs, by their shape: rings, and stripes whatever the marker's size.
    shapes = []
    for label in np.flatnonzero(candidates & ~round_):
        shape = _measure(label, labels, core, bool(blobs.use_core[label]), stats[label])
        reason = _not_markers(shape)
        if reason is None:
            shapes.append(shape)
        else:
            rejected[reason] += 1
    radius_px = _known_radius(dot_core_px, marker_radius_px) or _estimated_radius(np.concatenate([
        np.sqrt(blobs.shape_px[round_ & (blobs.shape_px >= MIN_ESTIMATE_PX)] / np.pi),
        [shape.deepest for shape in shapes if shape.shape_px >= MIN_ESTIMATE_PX]]))
    blotch = round_ & (np.sqrt(blobs.shape_px / np.pi) > SMEAR_RADII * radius_px)
    rejected["smear"] += int(blotch.sum())
    round_ &= ~blotch
    detections = _whole_blobs(np.flatnonzero(round_), blobs, stats, blobs.disc_iou(radius_px), rgb.shape[:2])
    for shape in shapes:
        split = _split_blob(shape, blobs, settings, dot_core_px, radius_px, rgb.shape[:2])
        if isinstance(split, str):
            rejected[split] += 1
        else:
            detections.extend(split)
    return Found(detections, rejected)


def _label_type(mask: np.ndarray) -> int:
    """16-bit labels (three times faster in OpenCV) whenever they cannot run out: 8-connected blobs
    take at least 2 x 2 pixels of a grid, so an image holds at most a quarter of its pixels in labels."""
    return cv2.CV_16U if mask.size // 4 < 2 ** 16 else cv2.CV_32S


def _known_radius(dot_core_px: float | None, marker_radius_px: float | None) -> float | None:
    """The radius of one marker when it is known: measured on the tile set, or given."""
    if dot_core_px is not None:
        return math.sqrt(dot_core_px / math.pi)
    return None if marker_radius_px is None else float(marker_radius_px)


def _estimated_radius(own_radii: np.ndarray) -> float:
    """The radius of one marker from the tile's own blobs (round ones: the radius of their area; the others:
    the depth of their deepest point): the median of those at least half as large as the largest, so that
    fragments and specks do not pull it down, nor one blotch up."""
    if not len(own_radii):
        return DEFAULT_MARKER_RADIUS_PX
    large = np.sort(own_radii[own_radii >= own_radii.max() / 2])
    median = (large[(len(large) - 1) // 2] + large[len(large) // 2]) / 2
    return min(max(float(median), ESTIMATED_RADIUS_PX[0]), ESTIMATED_RADIUS_PX[1])


class _Core(NamedTuple):
    """Which pixels of the blobs are their core: those at least this saturated."""

    saturation: np.ndarray  # (H, W) uint8, the tile's saturation channel (to_hsv)
    least: int  # 0..255


class _BlobPixels:
    """The pixels of every blob of a tile in one vectorised pass: their magenta closeness, and per
    label its sums (for the centroids), its core, and its shape (the core where it holds at least
    half the blob, else every pixel: a faint blob's core says little about its outline)."""

    def __init__(self, rgb: np.ndarray, hsv: np.ndarray, labels: np.ndarray, count: int, core: _Core,
                 areas: np.ndarray):
        pixels = np.flatnonzero(labels)
        self.label = labels.ravel()[pixels]
        self.closeness = magenta_closeness(rgb.reshape(-1, 3)[pixels]).astype(np.float64)
        self.rows, self.cols = np.divmod(pixels, labels.shape[1])
        self.weight = np.bincount(self.label, self.closeness, count)
        self.weighted_cols = np.bincount(self.label, self.closeness * self.cols, count)
        self.weighted_rows = np.bincount(self.label, self.closeness * self.rows, count)
        in_core = hsv.reshape(-1, 3)[pixels, 1] >= core.least
        self.core_px = np.bincount(self.label[in_core], minlength=count)
        self.use_core = 2 * self.core_px >= areas
        self.in_shape = in_core | ~self.use_core[self.label]
        self.shape_px = np.bincount(self.label[self.in_shape], minlength=count)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Per label, the row and column of its closeness-weighted centroid (pixel indices)."""
        weight = np.maximum(self.weight, 1e-12)  # label 0, the background, has no pixel in the sums
        return self.weighted_rows / weight, self.weighted_cols / weight

    def centre_inside(self, labels: np.ndarray) -> np.ndarray:
        """Per label, whether the pixel at its centroid is its own."""
        rows, cols = (np.rint(centre).astype(np.intp) for centre in self.centres())
        return labels[rows, cols] == np.arange(len(rows))

    def disc_iou(self, radius_px: float) -> np.ndarray:
        """Per label, the IoU of its shape and a disc of radius_px at its centroid (the disc taken as
        pi r^2: the round blobs that this is for lie inside the tile)."""
        centre_rows, centre_cols = self.centres()
        label = self.label[self.in_shape]
        distance2 = (self.cols[self.in_shape] - centre_cols[label]) ** 2 \
            + (self.rows[self.in_shape] - centre_rows[label]) ** 2
        inside = np.bincount(label[distance2 <= radius_px ** 2], minlength=len(centre_rows))
        return inside / (self.shape_px + np.pi * radius_px ** 2 - inside)

    def pixels_of(self, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows, columns and magenta closeness of one blob's pixels."""
        chosen = self.label == label
        return self.rows[chosen], self.cols[chosen], self.closeness[chosen]


def _whole_blobs(round_labels: np.ndarray, blobs: _BlobPixels, stats: np.ndarray, roundness: np.ndarray,
                 tile_shape: tuple[int, int]) -> list[Detection]:
    """The detections of the blobs that are one dot each: their closeness-weighted centroids (in one pass)."""
    left, top, width, height, area = (stats[round_labels, key] for key in range(5))
    weight = blobs.weight[round_labels]
    height_px, width_px = tile_shape
    touches = (left == 0) | (top == 0) | (left + width == width_px) | (top + height == height_px)
    columns = ((blobs.weighted_cols[round_labels] / weight + 0.5).tolist(),
               (blobs.weighted_rows[round_labels] / weight + 0.5).tolist(), area.tolist(), (weight / area).tolist(),
               touches.tolist(), blobs.core_px[round_labels].tolist(),
               np.minimum(roundness[round_labels], 1.0).tolist())
    return [Detection(col, row, area_px, score, touches_edge, core_px, 1, round_)
            for col, row, area_px, score, touches_edge, core_px, round_ in zip(*columns)]


def typical_dot_core_px(detections: list[Detection]) -> float | None:
    """The median core area of the whole dots that were alone in their blob, when there are enough and it
    is above 0 (faint dots, all rim and no core, tell nothing of a dot's size)."""
    alone = [d.blob_core_px for d in detections if d.blob_dots == 1 and not d.touches_edge]
    median_px = float(np.median(alone)) if len(alone) >= MIN_DOTS_FOR_TYPICAL_AREA else 0.0
    return median_px if median_px > 0 else None


def second_pass(found: list[Found]) -> tuple[float | None, list[int]]:
    """Which tiles of a set to detect again, and with what dot core: the typical dot (known only once every
    tile was seen) splits the blobs that hold more dots than their peaks told apart, and may explain a
    blob rejected before it was known. (None, []) with too few lone dots to know the typical one."""
    dot_core_px = typical_dot_core_px([d for tile_found in found for d in tile_found.detections])
    if dot_core_px is None:
        return None, []
    return dot_core_px, [index for index, tile_found in enumerate(found) if any(tile_found.rejected.values())
                         or any(holds_more_dots(d, dot_core_px) for d in tile_found.detections)]


def holds_more_dots(detection: Detection, dot_core_px: float) -> bool:
    """Whether the detection's blob is larger than the dots it was split into."""
    return _dot_count(detection.blob_core_px, dot_core_px) > detection.blob_dots


def _dot_count(core_px: int, dot_core_px: float) -> int:
    return max(1, round(core_px / dot_core_px))


class _Shape(NamedTuple):
    """A blob that is not plainly one dot, in its bounding box."""

    label: int
    origin: tuple[int, int]  # the box's top row and left column in the tile
    blob: np.ndarray  # its pixels
    blob_core: np.ndarray  # their core
    shape: np.ndarray  # the core where it holds at least half the blob, else every pixel
    shape_px: int
    depth: np.ndarray  # the shape's distance transform (where its peaks tell touching dots apart)
    deepest: float  # its maximum, the shape mirrored across the tile's border: a cut dot keeps its depth
    on_border_px: int  # its pixels on the tile's outermost rows and columns
    hole_px: int  # the background it encloses


def _measure(label: int, labels: np.ndarray, core: _Core, use_core: bool, blob_stats: np.ndarray) -> _Shape:
    """A blob in its bounding box, with what judges it."""
    left, top, width, height, _ = (int(value) for value in blob_stats)
    window = (slice(top, top + height), slice(left, left + width))
    blob = labels[window] == label
    blob_core = blob & (core.saturation[window] >= core.least)
    shape = blob_core if use_core else blob
    at_border = (top == 0, top + height == labels.shape[0], left == 0, left + width == labels.shape[1])
    depth = _depth(shape, (False, False, False, False))
    deepest = float((_depth(shape, at_border) if any(at_border) else depth).max())
    on_border = sum(np.count_nonzero(side) for side, at in zip((blob[0], blob[-1], blob[:, 0], blob[:, -1]), at_border)
                    if at)
    return _Shape(label, (top, left), blob, blob_core, shape, int(np.count_nonzero(shape)), depth, deepest,
                  on_border, _hole_px(blob))


def _hole_px(blob: np.ndarray) -> int:
    """The background pixels a blob encloses: those that no 4-connected path joins to the outside
    (the blobs are 8-connected)."""
    outside = cv2.copyMakeBorder(blob.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(outside, None, (0, 0), 1, flags=4)
    return int(outside.size - np.count_nonzero(outside))


def _not_markers(shape: _Shape) -> str | None:
    """Why a blob is no markers whatever their size ('ring', 'frame', 'stripe'), or None."""
    if shape.hole_px >= MIN_HOLE_PX:  # a frame all around the tile encloses it
        return "frame" if _runs_along_border(shape) else "ring"
    if shape.shape_px > STRIPE_ELONGATION * (2 * shape.deepest) ** 2:
        return "frame" if _runs_along_border(shape) else "stripe"
    return None


def _runs_along_border(shape: _Shape) -> bool:
    """Whether a long blob lies along the tile's border: a frame (its length: its area over its width)."""
    return shape.on_border_px >= FRAME_BORDER_SHARE * shape.shape_px / (2 * shape.deepest)


def _split_blob(blob_shape: _Shape, blobs: _BlobPixels, settings: DetectSettings, dot_core_px: float | None,
                radius_px: float, tile_shape: tuple[int, int]) -> list[Detection] | str:
    """One detection per distance-transform peak of a connected blob, or per dot its core area
    holds when dot_core_px is given and the peaks are fewer; or why it is no markers.

    The peaks come from the blob's shape, its core unless faint: blur spreads a rim of fainter
    pixels that fills the waist between two touching dots, the core keeps it.
    """
    shape, shape_px, deepest = blob_shape.shape, blob_shape.shape_px, blob_shape.deepest
    if shape_px > MAX_CHAIN_MARKERS * 2 * radius_px * 2 * deepest:  # longer than a chain of markers
        return "frame" if _runs_along_border(blob_shape) else "stripe"
    if deepest > SMEAR_RADII * radius_px:
        return "smear"
    peaks = _peaks(blob_shape.depth, settings)
    core_px = int(np.count_nonzero(blob_shape.blob_core))
    if dot_core_px is not None and _dot_count(core_px, dot_core_px) > len(peaks):
        peaks = _cluster_centres(np.argwhere(blob_shape.blob_core).astype(np.float64), _dot_count(core_px, dot_core_px))
    grid_rows, grid_cols = np.arange(shape.shape[0])[:, None], np.arange(shape.shape[1])[None, :]
    # Each pixel goes to its nearest peak: the parts of two merged discs meet along the saddle.
    nearest, distance2 = _nearest_centre(grid_rows, grid_cols, peaks)
    if not _explained(blob_shape, distance2, peaks, radius_px, tile_shape):
        # Blurred dots that touch may leave no saddle: as many discs as markers its area holds, and
        # one more than its peaks at least (the border may cut them).
        markers = max(len(peaks) + 1, math.ceil(shape_px / (math.pi * radius_px ** 2)))
        centres = _cluster_centres(np.argwhere(shape).astype(np.float64), markers)
        if not _explained(blob_shape, _nearest_centre(grid_rows, grid_cols, centres)[1], centres, radius_px,
                          tile_shape):
            return "not_discs"
    top, left = blob_shape.origin
    height_px, width_px = tile_shape
    rows, cols, closeness = blobs.pixels_of(blob_shape.label)
    part_of = nearest[rows - top, cols - left]
    parts = len(peaks)
    area_px = np.bincount(part_of, minlength=parts)
    weight = np.bincount(part_of, closeness, parts)
    with np.errstate(invalid="ignore", divide="ignore"):
        part_rows = np.bincount(part_of, closeness * rows, parts) / weight
        part_cols = np.bincount(part_of, closeness * cols, parts) / weight
    touches = np.bincount(part_of, (rows == 0) | (cols == 0) | (rows == height_px - 1) | (cols == width_px - 1),
                          parts) > 0
    roundness = _part_roundness(shape, nearest, part_rows - top, part_cols - left, radius_px,
                                _disc_px_in_tile(part_rows, part_cols, radius_px, tile_shape))
    return [Detection(col=float(part_cols[part] + 0.5), row=float(part_rows[part] + 0.5),
                      area_px=int(area_px[part]), score=float(weight[part] / area_px[part]),
                      touches_edge=bool(touches[part]), blob_core_px=core_px, blob_dots=parts,
                      roundness=float(roundness[part]))
            for part in range(parts) if area_px[part] >= settings.min_area_px and weight[part] > 0]


def _explained(blob_shape: _Shape, distance2: np.ndarray, centres: np.ndarray, radius_px: float,
               tile_shape: tuple[int, int]) -> bool:
    """Whether discs of the marker radius at these centres (in the box) cover enough of a shape, and a
    shape larger than one marker enough of them, within the tile (distance2: each pixel of the box's
    squared distance to the nearest centre). Half a pixel more: the peaks lie on the pixel grid."""
    reach2 = (radius_px + 0.5) ** 2
    covered = np.count_nonzero(blob_shape.shape & (distance2 <= reach2))
    if covered < MIN_EXPLAINED * blob_shape.shape_px:
        return False
    if blob_shape.shape_px <= math.pi * radius_px ** 2:
        return True
    # The discs' pixels: in the box with room for them around it, within the tile.
    margin = int(math.ceil(radius_px + 0.5))
    top, left = blob_shape.origin
    height, width = blob_shape.shape.shape
    rows = np.arange(max(-margin, -top), min(height + margin, tile_shape[0] - top))[:, None]
    cols = np.arange(max(-margin, -left), min(width + margin, tile_shape[1] - left))[None, :]
    return covered >= MIN_FILLED * np.count_nonzero(_nearest_centre(rows, cols, centres)[1] <= reach2)


def _nearest_centre(grid_rows: np.ndarray, grid_cols: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of a window (its row and column indices, broadcast), the index of its nearest centre ((K, 2)
    row/col) and the squared distance to it."""
    distance2 = (grid_rows[None] - centres[:, 0, None, None]) ** 2 + (grid_cols[None] - centres[:, 1, None, None]) ** 2
    return np.argmin(distance2, axis=0), np.min(distance2, axis=0)


def _part_roundness(shape: np.ndarray, nearest: np.ndarray, rows: np.ndarray, cols: np.ndarray, radius_px: float,
                    disc_px: list[float]) -> np.ndarray:
    """Per part of a split blob (the pixels of the box nearest its peak), the IoU of its shape and a disc at
    its centroid (rows, cols: in the box; disc_px: its pixels within the tile). The disc's pixels outside
    the box are taken as the part's."""
    parts = len(rows)
    with np.errstate(invalid="ignore"):  # a part with no pixel has no centroid
        in_disc = (np.arange(shape.shape[0])[None, :, None] - rows[:, None, None]) ** 2 \
            + (np.arange(shape.shape[1])[None, None, :] - cols[:, None, None]) ** 2 <= radius_px ** 2
    own_disc = in_disc[0] if parts == 1 else np.choose(nearest, in_disc)
    cells = nearest.ravel()
    overlap = np.bincount(cells, (own_disc & shape).ravel(), parts)
    outside_box = np.maximum(0.0, np.array(disc_px) - in_disc.sum(axis=(1, 2)))
    union = np.bincount(cells, (own_disc | shape).ravel(), parts) + outside_box
    return np.clip(overlap / np.maximum(union, 1.0), 0.0, 1.0)


def _disc_px_in_tile(rows: np.ndarray, cols: np.ndarray, radius_px: float, tile_shape: tuple[int, int]) -> list[float]:
    """The area of discs (centres in pixel indices) within the tile: pi r^2 less what each border cuts off
    (where two borders cut the same disc, the corner is cut off twice: a fraction of a pixel for markers)."""
    height_px, width_px = tile_shape
    areas = []
    for row, col in zip(rows.tolist(), cols.tolist()):
        area = math.pi * radius_px ** 2
        for distance in (row + 0.5, height_px - 0.5 - row, col + 0.5, width_px - 0.5 - col):
            if distance < radius_px:  # False for NaN: a part with no pixel
                cut = max(distance, -radius_px) / radius_px
                area -= radius_px ** 2 * (math.acos(cut) - cut * math.sqrt(1 - cut ** 2))
        areas.append(area)
    return areas


def _depth(shape: np.ndarray, at_border: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """The distance transform of a shape (a window of the tile) to its background, the shape
    mirrored across the tile's border where asked (top, bottom, left, right: the window's sides
    that lie on it): a dot the border cuts keeps its depth."""
    top, bottom, left, right = at_border
    height, width = shape.shape
    mirrored = shape.astype(np.uint8)
    if top or bottom:
        mirrored = np.concatenate([mirrored[::-1]] * top + [mirrored] + [mirrored[::-1]] * bottom, axis=0)
    if left or right:
        mirrored = np.concatenate([mirrored[:, ::-1]] * left + [mirrored] + [mirrored[:, ::-1]] * right, axis=1)
    padded = cv2.copyMakeBorder(mirrored, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return depth[1 + height * top:1 + height * (1 + top), 1 + width * left:1 + width * (1 + left)]


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
    group_depths = np.zeros(count)
    np.maximum.at(group_depths, groups[local_max], depth[local_max])
    peak_depths = group_depths[1:].tolist()
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
