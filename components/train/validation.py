"""What a generator is worth, measured at each checkpoint on tiles training never uses.

- The dot rate: markers it paints per held-out plain tile, against the rate of the real `a` tiles.
- Places: on each training city's held-out box (rendered with `locgen render --holdout`), the points
  it generates (detected and georeferenced as the extraction stage does, each tile owning the dots
  of its core) scored against the real points there with the evaluation's metrics
  (components.core.scoring): F1 within 50 m and the grid Spearman of the counts per 100 m cell.
  `place_score`, the mean over the boxes of (F1@50m + Spearman) / 2 (a null Spearman, counts that do
  not vary, as 0), chooses the best checkpoint where the data has held-out boxes.
"""

from __future__ import annotations

import numpy as np
import torch

from components.core.detect import detect_markers, find_markers, second_pass
from components.core.scoring import score_points
from components.core.tileset import owned_detections, tile_of_row
from components.train.data import HeldOutBox, to_model_input, to_uint8_images
from components.train.networks import Generator

# A painted dot counts when its pixels are this close to pure magenta on average. Rendered markers
# score 1.0; the dots of a trained tiny generator about 0.83 (their rims blend into the map); the
# pink tint that an untrained one lays along roads 0.65 to 0.7.
PAINTED_DOT_MIN_SCORE = 0.75
PLACE_RADIUS_M = 50.0  # the F1 of the benchmark's goal
PLACE_GRID_M = 100.0  # the evaluation's default cell


def painted_dots_per_tile(generator: Generator, tiles: torch.Tensor, marker_area_px: float,
                          device: torch.device) -> float:
    """Markers the generator paints per held-out plain tile (markers_per_tile of its output)."""
    if not len(tiles):
        return float("nan")
    return markers_per_tile(translate(generator, tiles, device), marker_area_px)


def translate(generator: Generator, tiles: torch.Tensor, device: torch.device, batch_size: int = 8) -> np.ndarray:
    """uint8 (N, 3, H, W) plain tiles -> (N, H, W, 3) uint8 generated tiles, in inference mode.

    A generator that is training is put back into training mode afterwards.
    """
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        generated = [to_uint8_images(generator(to_model_input(tiles[k:k + batch_size].to(device))))
                     for k in range(0, len(tiles), batch_size)]
    generator.train(was_training)
    return np.concatenate(generated)


def markers_per_tile(images: np.ndarray, marker_area_px: float) -> float:
    """Marker-like dots per (H, W, 3) uint8 image, found by the extraction stage's detector.

    The same count on real and generated tiles, so the two rates compare. A dot counts when it
    stands alone (a blob the detector did not split), is half to twice a marker's area and nearly
    pure magenta: what an untrained generator paints instead (a pink tint, magenta lines along
    roads that the detector cuts into dot-sized pieces) does not.
    """
    return float(np.mean([sum(dot.blob_dots == 1 and marker_area_px / 2 <= dot.area_px <= 2 * marker_area_px
                              and dot.score >= PAINTED_DOT_MIN_SCORE
                              for dot in detect_markers(np.ascontiguousarray(image))) for image in images]))


def place_scores(generator: Generator, boxes: list[HeldOutBox], marker_radius_px: float,
                 device: torch.device) -> dict:
    """The generator's points on each held-out box against the real ones: per city, and `place_score`
    (None without boxes)."""
    places = {box.city: _box_scores(generator, box, marker_radius_px, device) for box in boxes}
    if not places:
        return {"places": {}, "place_score": None}
    score = float(np.mean([(place["f1@50m"] + (place["grid_spearman"] or 0.0)) / 2 for place in places.values()]))
    return {"places": places, "place_score": score}


def generated_points_lonlat(images: np.ndarray, rows: list[dict], marker_radius_px: float) -> np.ndarray:
    """(P, 2) lon/lat of the dots in generated (N, H, W, 3) tiles as the extraction stage finds them (two
    passes, `second_pass`), each tile's own (its core, inside the data)."""
    images = [np.ascontiguousarray(image) for image in images]
    found = [find_markers(image, marker_radius_px=marker_radius_px) for image in images]
    dot_core_px, again = second_pass(found)
    for index in again:
        found[index] = find_markers(images[index], dot_core_px=dot_core_px)
    points = []
    for tile_found, row in zip(found, rows):
        tile = tile_of_row(row)
        for detection in owned_detections(row, tile, tile_found.detections):
            points.append(tile.px_to_lonlat(detection.col, detection.row))
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def _box_scores(generator: Generator, box: HeldOutBox, marker_radius_px: float, device: torch.device) -> dict:
    generated = generated_points_lonlat(translate(generator, box.tiles, device), box.rows, marker_radius_px)
    scores = score_points(generated, box.points_lonlat, box.bbox, radii_m=(PLACE_RADIUS_M,), grid_m=PLACE_GRID_M)
    metrics = scores["metrics"]
    return {"f1@50m": metrics["f1@50m"], "grid_spearman": metrics["grid_spearman"],
            "generated": scores["points"]["generated"], "real": scores["points"]["truth"]}
