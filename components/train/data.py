"""Training data: the `a` (with markers) and `b` (plain) tiles of a tile set, unpaired.

Tiles are read once from the store (local or s3://) into memory as uint8: the sample sets hold a
few hundred tiles (~200 kB each), and a step then costs no I/O. Every batch is a pure function of
(seed, step): which tiles, which crop, which flip and rotation. A resumed run therefore sees
exactly the batches the uninterrupted run would have, with no sampler state to save.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from components.core.errors import LocgenError
from components.core.geo import Bounds3857, LonLatBounds, bbox_text, bounds_to_3857, contains, intersects
from components.core.progress import Progress
from components.core.storage import LocalStore, Store, cache_folder, open_store
from components.core.tileset import MANIFEST_KEY, decode_tile, fetch_all, parse_manifest

EPOCH_STREAM = 1 << 20  # keeps the epoch orders apart from the per-step draws of the same seed


class HeldOutBox(NamedTuple):
    """A training city's held-out box: its plain tiles and the real points in it, to validate places on."""

    city: str
    bbox: LonLatBounds
    rows: list[dict]  # the domain-holdout rows, in the order of `tiles`
    tiles: torch.Tensor  # (N, 3, H, W) uint8 plain tiles whose cores cover the box
    points_lonlat: np.ndarray  # (P, 2) the real points inside the box


class TileData(NamedTuple):
    a: torch.Tensor  # (N_a, 3, H, W) uint8: tiles with markers
    b: torch.Tensor  # (N_b, 3, H, W) uint8: plain tiles used for training
    held_out_b: torch.Tensor  # (N_v, 3, H, W) uint8: plain tiles kept aside to count painted dots
    marker_area_px: float  # area of one rendered marker disc
    rows: list[dict]  # the manifest rows read, for the lineage of the trained model
    manifest_sha256: str  # of the manifest as read: names the exact tile set a model was trained on
    held_out_boxes: list[HeldOutBox]  # none when the sets were rendered without --holdout

    @property
    def marker_radius_px(self) -> float:
        return math.sqrt(self.marker_area_px / math.pi)


def load_tiles(uri: str, validation_share: float, cache_dir: Path | None = None) -> TileData:
    """The a and b tiles of a tile set; a stable share of the b tiles (by id hash) is held out.

    With `cache_dir`, the tiles of a remote tile set are kept there, so a resumed or repeated run
    downloads only what it has not seen.
    """
    store = open_store(uri)
    if not store.exists(MANIFEST_KEY):
        raise LocgenError(f"--data {uri}: no {MANIFEST_KEY}; give a tile set that locgen render wrote with "
                          "--pairs (it holds domains a and b)")
    manifest = store.get_bytes(MANIFEST_KEY)
    rows = parse_manifest(manifest, store.url(MANIFEST_KEY))
    by_domain = {domain: [row for row in rows if row["domain"] == domain] for domain in ("a", "b")}
    for domain, what in (("a", "with markers"), ("b", "plain")):
        if not by_domain[domain]:
            raise LocgenError(f"--data {uri}: no domain-{domain} tiles ({what}); render training pairs with "
                              "locgen render --pairs N --locations SRC")
    sizes = sorted({row["size_px"] for row in rows})
    if len(sizes) > 1:
        raise LocgenError(f"--data {uri}: tiles of several sizes {sizes} px; render the training set at one --size-px")
    held_out = [row for row in by_domain["b"] if _held_out(row["id"], validation_share)]
    training_b = [row for row in by_domain["b"] if not _held_out(row["id"], validation_share)] or held_out
    if any("marker_radius_px" not in row for row in by_domain["a"]):
        raise LocgenError(f"--data {uri}: the manifest does not say how large the markers are (an older locgen wrote "
                          "it); run the same locgen render again, which rewrites only the manifest")
    marker_area_px = math.pi * float(np.median([row["marker_radius_px"] for row in by_domain["a"]])) ** 2
    cache = tile_cache(store, cache_dir)
    return TileData(_read(store, by_domain["a"], cache), _read(store, training_b, cache),
                    _read(store, held_out, cache), marker_area_px, rows, hashlib.sha256(manifest).hexdigest(),
                    _held_out_boxes(store, [row for row in rows if row["domain"] == "holdout"], cache))


def _held_out_boxes(store: Store, rows: list[dict], cache: LocalStore | None) -> list[HeldOutBox]:
    """The held-out box of a tile set (at most one: a render takes one --holdout), with its real points."""
    if not rows:
        return []
    bbox = LonLatBounds(*rows[0]["holdout_lonlat"])
    # A point near a tile's edge is in its neighbours' rows too: each counts once.
    points = np.unique(np.array([point for row in rows for point in row["points"]], dtype=np.float64).reshape(-1, 2),
                       axis=0)
    inside = contains(bbox, points[:, 0], points[:, 1])
    return [HeldOutBox(rows[0]["city"], bbox, rows, _read(store, rows, cache), points[inside])]


def load_tile_sets(uris: list[str], validation_share: float, cache_dir: Path | None = None) -> TileData:
    """The tiles of several tile sets (one a city, say) as one training set: each set's a and b tiles
    and its held-out share, side by side. The sets must agree on what a model learns at: tile size,
    ground resolution and marker size."""
    if not uris:
        raise LocgenError("no training data; give --data with a tile set that locgen render wrote with --pairs")
    sets = [load_tiles(uri, validation_share, cache_dir) for uri in uris]
    if len(sets) == 1:
        return sets[0]
    _check_alike(uris, sets)
    joined = "\n".join(data.manifest_sha256 for data in sets).encode()
    _check_holdouts_apart(uris, sets)
    return TileData(_cat([data.a for data in sets]), _cat([data.b for data in sets]),
                    _cat([data.held_out_b for data in sets]), sets[0].marker_area_px,
                    [row for data in sets for row in data.rows], hashlib.sha256(joined).hexdigest(),
                    [box for data in sets for box in data.held_out_boxes])


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tiles of several sets as one tensor (an empty set, of shape (0, 3, 1, 1), adds nothing)."""
    present = [tensor for tensor in tensors if len(tensor)]
    return torch.cat(present) if present else tensors[0]


def _check_alike(uris: list[str], sets: list[TileData]) -> None:
    """One clear error where two training sets differ in what a model learns at."""
    first = sets[0].rows[0]
    for uri, data in zip(uris[1:], sets[1:]):
        row = data.rows[0]
        for name, what, fix in (("size_px", "tiles of", "--size-px"),
                                ("m_per_px", "a ground resolution of", "--m-per-px")):
            if abs(row[name] / first[name] - 1) > 0.01:
                raise LocgenError(f"--data {uri}: {what} {row[name]:g}, but {uris[0]} has {first[name]:g}; render "
                                  f"every training set with one {fix}")
        if abs(data.marker_area_px / sets[0].marker_area_px - 1) > 0.01:
            raise LocgenError(f"--data {uri}: markers of another size than in {uris[0]}; render every training set "
                              "with one --marker-radius-px")
        if row["style_sha256"] != first["style_sha256"]:
            raise LocgenError(f"--data {uri}: another map style than {uris[0]}; render every training set with one "
                              "locgen version")


def _check_holdouts_apart(uris: list[str], sets: list[TileData]) -> None:
    """One clear error where a set's training tile covers another set's held-out box: a model would be
    validated on ground it trained on (each render keeps its own box clear, not the others')."""
    for uri, data in zip(uris, sets):
        for box in data.held_out_boxes:
            box_3857 = bounds_to_3857(box.bbox)
            for other_uri, other in zip(uris, sets):
                touching = [row["id"] for row in other.rows if row["domain"] in ("a", "b")
                            and intersects(Bounds3857(*row["bounds_3857"]), box_3857)]
                if touching:
                    raise LocgenError(f"--data {other_uri}: training tile {touching[0]} (of {len(touching)}) covers "
                                      f"the held-out box {bbox_text(box.bbox)} of --data {uri}; render the sets with "
                                      "held-out boxes clear of every set's training area, or train on them apart")


def tile_cache(store: Store, cache_dir: Path | None) -> LocalStore | None:
    """The local copy of a remote tile set's tiles (none for a local one).

    Safe to keep for ever: a tile's key holds the hash of everything that decides its pixels, so
    a changed tile has a new key and a cached one never goes stale.
    """
    if cache_dir is None or isinstance(store, LocalStore):
        return None
    return LocalStore(cache_folder(Path(cache_dir) / "tiles", store.uri))


def _held_out(tile_id: str, share: float) -> bool:
    """Whether a tile is kept for validation: by a hash of its id, so the split never moves."""
    return int(hashlib.sha256(tile_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def _read(store: Store, rows: list[dict], cache: LocalStore | None) -> torch.Tensor:
    if not rows:
        return torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
    keys = [row["path"] for row in rows]
    if cache is not None:
        missing = [key for key in keys if not cache.exists(key)]
        with Progress("download tiles", len(missing), "tile", enabled=bool(missing)) as bar:
            for key, png in zip(missing, fetch_all(store, missing)):
                cache.put_bytes(key, png)
                bar.update()
    source = store if cache is None else cache
    images = [decode_tile(png, store.url(row["path"]), row) for row, png in zip(rows, fetch_all(source, keys))]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def batch(tiles: torch.Tensor, step: int, seed: int, batch_size: int, crop_px: int, stream: int) -> torch.Tensor:
    """The batch of a step, uint8 (N, 3, crop, crop): tiles in shuffled epochs, random crops, flips, 90 deg turns.

    `stream` keeps the a and b draws apart (the domains are unpaired). uint8 until the device:
    a quarter of the bytes to copy, and the conversion runs where the model does (to_model_input).
    """
    rng = np.random.default_rng([seed, stream, step])
    count = len(tiles)
    first = step * batch_size
    indices = [int(_epoch_order(seed, stream, (first + k) // count, count)[(first + k) % count])
               for k in range(batch_size)]
    height, width = tiles.shape[2:]
    if min(height, width) < crop_px:
        raise LocgenError(f"tiles of {height} x {width} px are smaller than the {crop_px} px training crop; "
                          "render larger tiles or lower crop_px")
    images = []
    for index in indices:
        top, left = rng.integers(0, height - crop_px + 1), rng.integers(0, width - crop_px + 1)
        image = tiles[index, :, top:top + crop_px, left:left + crop_px]
        image = torch.rot90(image, int(rng.integers(4)), dims=(1, 2))  # maps have no up: any turn is a map
        if rng.random() < 0.5:
            image = torch.flip(image, dims=(2,))
        images.append(image)
    return torch.stack(images)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, stream: int, epoch: int, count: int) -> np.ndarray:
    """The order in which an epoch visits the tiles: each tile once."""
    return np.random.default_rng([seed, stream, EPOCH_STREAM, epoch]).permutation(count)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> float in [-1, 1], the generator's input normalisation."""
    return images.float().div(127.5).sub(1.0)


def to_uint8_images(batch_tensor: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 RGB."""
    pixels = batch_tensor.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).byte()
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
