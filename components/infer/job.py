"""The inference stage as one call: a city's plain tiles -> the generator's tiles, as a tile set.

Each generated tile keeps the exact georeference of its plain tile (manifest row and PNG chunk) and
goes to domain `a` (tiles with markers), so `locgen extract` reads it like a rendered one. Its row
adds `generated_from` (the plain tile's key) and the model to its sources. Its key carries the
hash of the plain tile's inputs and of the model file run: a re-run skips the tiles already
there, and tiles of another model never hide under the same name. The manifest is published last.

Compatibility of model and tiles (README, "Generate"): the tile size must be one the network takes;
the ground resolution (m_per_px) must be the model's within 1 %, or the markers and streets it
learnt have another size in pixels, so such tiles are refused; another map style only warns.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from components.core.colour import ColourCastMeter
from components.core.errors import GPU_NODE_FIX, LocgenError
from components.core.onnx_io import check_tile_size, fp16_path
from components.core.pngmeta import encode_png
from components.core.progress import Progress
from components.core.storage import Store, cache_folder, local_file, open_file_uri, open_store
from components.core.tileset import (
    check_claim,
    claim,
    decode_tile,
    fetch_all,
    manifest_bytes,
    manifest_key,
    plain_rows,
    png_text,
    tile_key,
    tileset_plan,
)
from components.infer.onnxmodel import Translator, open_translator, read_metadata
from components.infer.settings import GenerateSettings
from components.pretrained import BUNDLED_MODEL

M_PER_PX_TOLERANCE = 0.01
UPLOAD_THREADS = 8

log = logging.getLogger(__name__)


def generate(settings: GenerateSettings) -> dict:
    """Translate every plain tile of settings.tiles into settings.out; returns a summary."""
    published = manifest_key(settings.shard, settings.shards)
    store = open_store(settings.tiles)
    if open_store(settings.out).uri == store.uri:  # its manifest would replace the plain tiles' own
        raise LocgenError(f"--out {settings.out}: is the tile set of --tiles; give the generated tiles a folder of "
                          "their own")
    all_rows = plain_rows(store, "--tiles")
    rows = all_rows[settings.shard::settings.shards]
    model_uri = settings.model or f"bundled:{BUNDLED_MODEL.name}"  # a label that is the same on every machine
    out_store = open_store(settings.out)
    tileset = tileset_plan(out_store, "generate", {"tiles": store.uri, "model": model_uri}, settings.overwrite)
    model_path = BUNDLED_MODEL if settings.model is None else _local_model(settings.model, settings.cache_dir)
    metadata = read_metadata(model_path)
    tile_px = _check_tiles(all_rows, metadata, settings.tiles)  # a shard with no tile still checks the set
    translator = open_translator(model_path, settings.provider, tile_px, settings.batch_size, settings.cache_dir)
    if settings.require_gpu and translator.provider == "cpu":
        raise LocgenError(f"{model_uri}: runs on the CPU here ({', '.join(translator.session.get_providers())}), but "
                          f"this task was given a GPU; {GPU_NODE_FIX}")
    out_rows = [_generated_row(row, store.uri, model_uri, translator.model_sha256) for row in rows]
    existing = out_store.list_keys()
    todo = [(row, out_row) for row, out_row in zip(rows, out_rows) if out_row["path"] not in existing]
    cast = ColourCastMeter()  # of the tiles translated in this run (not of those skipped)
    claim(out_store, tileset)
    _translate_all(store, out_store, todo, translator, settings, total=len(rows), cast=cast)
    check_claim(out_store, tileset)
    out_store.publish_bytes(published, manifest_bytes(out_rows), "application/jsonl")
    colour = cast.result().as_dict()  # its means are None when no tile was translated
    return {"tileset": out_store.uri, "manifest": out_store.url(published), "tiles": len(out_rows),
            "generated": len(todo), "skipped": len(out_rows) - len(todo), "model": model_uri,
            "model_file_run": translator.model_path.name, "model_sha256": translator.model_sha256,
            "provider": translator.session.get_providers()[0],
            "colour_cast": colour, "colour_cast_mean": colour["mean"]}


def _local_model(uri: str, cache_dir: Path) -> Path:
    """The model as a local file; from s3:// together with its fp16 variant (what TensorRT runs), if any."""
    if not uri.endswith(".onnx"):
        raise LocgenError(f"--model {uri}: give the .onnx file that locgen export wrote")
    if not uri.startswith("s3://"):
        return local_file(uri, cache_dir)
    store, key = open_file_uri(uri)
    folder = cache_folder(cache_dir / "models", uri)
    path = store.download_to(key, folder / key)
    variant = fp16_path(Path(key)).as_posix()
    if store.exists(variant):
        store.download_to(variant, folder / variant)
    else:
        (folder / variant).unlink(missing_ok=True)  # never beside a newer model: only --provider tensorrt misses it
    return path


def _check_tiles(rows: list[dict], metadata: dict, uri: str) -> tuple[int, int]:
    """The one tile size (height, width) of the rows, after checking the model can take them."""
    sizes = sorted({row["size_px"] for row in rows})
    if len(sizes) > 1:
        raise LocgenError(f"--tiles {uri}: tiles of several sizes {sizes} px; generate each size separately")
    check_tile_size(sizes[0], sizes[0], metadata["size_multiple_px"], metadata["min_size_px"], f"--tiles {uri}")
    for m_per_px in sorted({row["m_per_px"] for row in rows}):
        if abs(m_per_px / metadata["m_per_px"] - 1) > M_PER_PX_TOLERANCE:
            raise LocgenError(f"--tiles {uri}: tiles at {m_per_px:g} m/px, but the model learnt at "
                              f"{metadata['m_per_px']:g} m/px (markers and streets would have other sizes in "
                              f"pixels); render the tiles with --m-per-px {metadata['m_per_px']:g}")
    styles = {row["style_sha256"] for row in rows} - {metadata["style_sha256"]}
    if styles:
        log.warning("the tiles' map style (%s) is not the one the model learnt (version %s); its dots may be "
                    "off: render the tiles with the model's locgen version, or train again",
                    ", ".join(sorted(style[:12] for style in styles)), metadata["style_version"])
    return sizes[0], sizes[0]


def _generated_row(row: dict, plain_tiles: str, model_uri: str, model_sha256: str) -> dict:
    """The manifest row of a generated tile: the plain tile's georeference, domain a, where the plain
    tile is (its key in `generated_from`, its tile set in `generated_from_tiles`), the model's lineage."""
    inputs_hash = hashlib.sha256(json.dumps({"plain_tile": row["inputs_sha256"], "model": model_sha256},
                                            sort_keys=True).encode()).hexdigest()
    return {**row, "domain": "a", "path": tile_key("a", row["id"], inputs_hash), "inputs_sha256": inputs_hash,
            "generated_from": row["path"], "generated_from_tiles": plain_tiles,
            "sources": [*row["sources"], {"uri": model_uri, "kind": "onnx-model", "sha256": model_sha256}]}


def _translate_all(store: Store, out_store: Store, todo: list[tuple[dict, dict]], translator: Translator,
                   settings: GenerateSettings, total: int, cast: ColourCastMeter) -> None:
    """Translate in batches; each batch is read and run while the one before it uploads (and its colour
    cast is added to `cast`, on the upload threads too)."""
    keys = [row["path"] for row, _ in todo]
    pngs = fetch_all(store, keys)
    with (Progress("generate", total, "tile", initial=total - len(todo), enabled=settings.progress) as bar,
          ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as uploads):
        uploading: list[Future] = []
        measuring: list[Future] = []
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start:start + settings.batch_size]
            tiles = np.stack([decode_tile(next(pngs), store.url(row["path"]), row) for row, _ in chunk])
            generated = translator.translate(tiles)
            measuring.append(uploads.submit(cast.add, tiles, generated))
            _wait(uploading, bar)
            uploading = [uploads.submit(out_store.put_bytes, out_row["path"], encode_png(image, png_text(out_row)),
                                        "image/png")
                         for (_, out_row), image in zip(chunk, generated)]
        _wait(uploading, bar)
        for measured in measuring:
            measured.result()  # raises a failed measurement's error


def _wait(uploads: list[Future], bar: Progress) -> None:
    for upload in uploads:
        upload.result()  # raises the first failed upload's error
    bar.update(len(uploads))
