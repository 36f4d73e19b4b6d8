"""The `locgen` command line: every stage runs from here as well as from its KFP component.

Bad input ends with one line `locgen: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from components.core.errors import LocgenError
from components.core.geo import parse_bbox, parse_latlon
from components.core.markers import MarkerRange
from components.core.storage import default_cache_dir
from components.extract.evaluate import EvaluateSettings, evaluate
from components.extract.job import ExtractSettings, extract
from components.infer.settings import AUTO_ORDER, GenerateSettings
from components.render.job import RenderSettings, render
from components.train.config import PRESETS, TrainConfig

# The defaults live in the settings classes, not here.
DEFAULTS = RenderSettings(osm=[], out="")
EXTRACT_DEFAULTS = ExtractSettings(tiles="", out="")
GENERATE_DEFAULTS = GenerateSettings(tiles="", out="")


def _add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-disabled", action="store_true", help="keep GBFS vehicles marked is_disabled")
    parser.add_argument("--drop-reserved", action="store_true", help="drop GBFS vehicles marked is_reserved")


def _render_parser(commands) -> None:
    parser = commands.add_parser("render", help="render map tiles (and tiles with markers) into a tile set",
                                 description="Render exactly georeferenced OSM map tiles to a local path or s3://.")
    parser.add_argument("--osm", action="append", required=True, metavar="SRC",
                        help="OSM data: .osm.pbf/.osm/.osm.bz2 path, s3:// URI, or 'overpass' (repeatable)")
    parser.add_argument("--out", required=True, metavar="URI", help="tile set: local path or s3://bucket/prefix")
    area = parser.add_mutually_exclusive_group()
    area.add_argument("--bbox", type=parse_bbox, metavar="W,S,E,N", help="cover this area (degrees)")
    area.add_argument("--center", type=parse_latlon, metavar="LAT,LON", help="centre of an N x N grid")
    parser.add_argument("--grid", type=int, metavar="N",
                        help="tiles per side around --center (15: the original's grid)")
    parser.add_argument("--pairs", type=int, metavar="N", help="training pairs placed around the locations")
    parser.add_argument("--locations", action="append", default=[], metavar="SRC",
                        help="GBFS gbfs.json/feed (file or URL), CSV, GeoJSON, or osm:KEY=VALUE (repeatable)")
    parser.add_argument("--city", help="city name recorded with every tile (default: the OSM file's name)")
    parser.add_argument("--size-px", type=int, default=DEFAULTS.size_px, help="tile size in pixels (%(default)s)")
    parser.add_argument("--m-per-px", type=float, default=DEFAULTS.m_per_px,
                        help="ground metres per pixel at the tile centre (%(default)s)")
    parser.add_argument("--overlap-px", type=int, default=DEFAULTS.overlap_px,
                        help="overlap of neighbouring area tiles in pixels (%(default)s)")
    parser.add_argument("--marker-radius-px", type=float, default=DEFAULTS.marker_radius_px,
                        help="marker disc radius (%(default)s)")
    parser.add_argument("--empty-share", type=float, default=DEFAULTS.empty_share,
                        help="share of pairs with no location (%(default)s)")
    parser.add_argument("--holdout", type=lambda text: parse_bbox(text, "--holdout"), metavar="W,S,E,N",
                        help="held-out region for evaluation: no training pair touches it")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed of the pair placement")
    parser.add_argument("--workers", type=int, default=DEFAULTS.workers, help="processes, 0: all cores (%(default)s)")
    parser.add_argument("--overpass-url", default=DEFAULTS.overpass_url,
                        help="Overpass API interpreter for --osm overpass (%(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULTS.cache_dir,
                        help="download cache (default $LOCGEN_CACHE or ~/.cache/locgen)")
    _add_location_options(parser)
    parser.set_defaults(run=_run_render)


def _run_render(args) -> dict:
    return render(RenderSettings(
        osm=args.osm, out=args.out, bbox=args.bbox, center=args.center, grid=args.grid, pairs=args.pairs,
        locations=args.locations, city=args.city, size_px=args.size_px, m_per_px=args.m_per_px,
        overlap_px=args.overlap_px, marker_radius_px=args.marker_radius_px, empty_share=args.empty_share,
        holdout=args.holdout, seed=args.seed, workers=args.workers, drop_disabled=not args.keep_disabled,
        drop_reserved=args.drop_reserved, overpass_url=args.overpass_url, cache_dir=args.cache_dir))


def _locations_parser(commands) -> None:
    parser = commands.add_parser("locations", help="normalise location sources to points, to inspect them",
                                 description="Write the points of location sources as CSV or GeoJSON.")
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="GBFS gbfs.json/feed (file or URL), CSV, GeoJSON, or osm:KEY=VALUE")
    parser.add_argument("--osm", action="append", default=[], metavar="FILE", help="OSM file for osm: sources")
    parser.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.geojson")
    parser.add_argument("--lat-column", help="CSV latitude column (default: found by its usual name)")
    parser.add_argument("--lon-column", help="CSV longitude column (default: found by its usual name)")
    _add_location_options(parser)
    parser.set_defaults(run=_run_locations)


def _run_locations(args) -> dict:
    from components.sources.locations import load_locations, write_locations

    sources = [load_locations(spec, osm_files=args.osm, drop_disabled=not args.keep_disabled,
                              drop_reserved=args.drop_reserved, lat_column=args.lat_column,
                              lon_column=args.lon_column) for spec in args.sources]
    write_locations(sources, args.out)
    return {"out": args.out, "points": sum(len(source.points) for source in sources),
            "sources": [{"uri": s.uri, "kind": s.kind, "points": len(s.points), "sha256": s.sha256}
                        for s in sources]}


def _extract_parser(commands) -> None:
    parser = commands.add_parser("extract", help="turn the marker dots of a tile set into points",
                                 description="Extract one point per marker dot, as CSV or GeoJSON.")
    parser.add_argument("--tiles", required=True, metavar="URI", help="tile set: local path or s3://bucket/prefix")
    parser.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.geojson (local or s3://)")
    parser.add_argument("--dedupe-m", type=float, default=EXTRACT_DEFAULTS.dedupe_m,
                        help="merge a dot seen in two tiles within this geodesic distance (%(default)s m)")
    parser.add_argument("--preview", metavar="FILE.png", help="also write a preview of the area with the points")
    parser.add_argument("--domain", help="only the tiles of this domain, e.g. a (default: every tile)")
    detect = EXTRACT_DEFAULTS.detect
    parser.add_argument("--hue-deg", type=_pair, default=detect.marker_range.hue_deg, metavar="LOW,HIGH",
                        help="marker hue range in degrees (%(default)s)")
    parser.add_argument("--min-saturation", type=float, default=detect.marker_range.min_saturation,
                        help="least saturation of a marker pixel, 0-1 (%(default)s)")
    parser.add_argument("--min-value", type=float, default=detect.marker_range.min_value,
                        help="least brightness of a marker pixel, 0-1 (%(default)s)")
    parser.add_argument("--min-area-px", type=int, default=detect.min_area_px,
                        help="smallest dot in pixels (%(default)s)")
    parser.set_defaults(run=_run_extract)


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise LocgenError(f"--hue-deg {text}: give LOW,HIGH in degrees, e.g. 260,340") from None
    return low, high


def _run_extract(args) -> dict:
    marker_range = MarkerRange(args.hue_deg, args.min_saturation, args.min_value)
    detect = EXTRACT_DEFAULTS.detect._replace(marker_range=marker_range, min_area_px=args.min_area_px)
    return extract(ExtractSettings(tiles=args.tiles, out=args.out, dedupe_m=args.dedupe_m, preview=args.preview,
                                   domain=args.domain, detect=detect))


def _evaluate_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="score generated points against real ones and two baselines",
                                 description="Precision/recall/F1 at 25, 50, 100 m, median distances, grid rank "
                                             "correlation and memorisation, beside uniform and along-road baselines.")
    parser.add_argument("--generated", required=True, metavar="FILE", help="the points to score (CSV or GeoJSON)")
    parser.add_argument("--truth", action="append", required=True, metavar="SRC",
                        help="real positions: any location source (repeatable)")
    parser.add_argument("--bbox", type=parse_bbox, required=True, metavar="W,S,E,N", help="the area scored")
    parser.add_argument("--osm", action="append", default=[], metavar="FILE",
                        help="OSM file for the roads baseline and osm: sources (repeatable)")
    parser.add_argument("--train-points", action="append", default=[], metavar="SRC",
                        help="training locations, for the memorisation share (repeatable)")
    parser.add_argument("--out", required=True, metavar="FILE.json", help="report (the Markdown goes beside it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the baselines (%(default)s)")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> dict:
    report = evaluate(EvaluateSettings(generated=args.generated, truth=args.truth, bbox=args.bbox, out=args.out,
                                       osm=args.osm, train_points=args.train_points, seed=args.seed))
    return {"out": args.out, "verdict": report["verdict"]}


def _train_parser(commands) -> None:
    parser = commands.add_parser("train", help="train FastCUT on a tile set of training pairs",
                                 description="Train the generator: plain tiles (b) -> tiles with markers (a).")
    parser.add_argument("--data", required=True, metavar="URI", help="tile set from locgen render --pairs")
    parser.add_argument("--out", required=True, metavar="URI", help="checkpoints, generator.pt, metrics, samples")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="settings to start from (tiny)")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="tiles per step (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override any setting of the preset, e.g. --set lr=1e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where an s3:// tile set's tiles are kept (default $LOCGEN_CACHE or ~/.cache/locgen)")
    parser.set_defaults(run=_run_train)


def _train_config(args) -> TrainConfig:
    preset = PRESETS[args.preset]
    values = dict(_setting(preset, text) for text in args.set)
    values.update({name: value for name, value in (("steps", args.steps), ("batch_size", args.batch_size))
                   if value is not None})
    try:
        return preset.override(**values)
    except ValueError as error:
        raise LocgenError(f"--set: {error}") from None


def _setting(preset: TrainConfig, text: str) -> tuple[str, object]:
    """NAME=VALUE, the value read as the type the preset holds for NAME."""
    name, _, raw = text.partition("=")
    if not hasattr(preset, name) or not raw:
        raise LocgenError(f"--set {text}: give NAME=VALUE with a setting of TrainConfig (components/train/config.py)")
    current = getattr(preset, name)
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return name, raw.lower() == "true"
        if isinstance(current, tuple):
            return name, tuple(int(value) for value in raw.split(","))
        return name, type(current)(raw)
    except ValueError:
        raise LocgenError(f"--set {text}: {name} takes a {type(current).__name__} like {current!r}") from None


def _run_train(args) -> dict:
    # Imported here: torch is needed by training alone, and the other stages' images do not ship it.
    from components.train.train import TrainSettings, train

    return train(TrainSettings(data=args.data, out=args.out, config=_train_config(args), resume=args.resume,
                               device=args.device, cache_dir=args.cache_dir))


def _export_parser(commands) -> None:
    parser = commands.add_parser("export", help="export a trained generator to ONNX, checked against PyTorch",
                                 description="Write MODEL.onnx (fp32), MODEL.fp16.onnx (for TensorRT) and "
                                             "MODEL.parity.json; fail when ONNX and PyTorch disagree.")
    parser.add_argument("--checkpoint", metavar="URI",
                        help="generator.pt of locgen train, local or s3:// (default: the bundled generator)")
    parser.add_argument("--out", required=True, metavar="URI.onnx", help="the model to write, local or s3://")
    parser.add_argument("--tiles", metavar="URI",
                        help="tile set whose plain tiles the parity check runs on (default: the training tile set)")
    parser.set_defaults(run=_run_export)


def _run_export(args) -> dict:
    from components.export.exporter import ExportSettings, export  # torch and onnx: only the export image has them

    return export(ExportSettings(out=args.out, checkpoint=args.checkpoint, tiles=args.tiles))


def _generate_parser(commands) -> None:
    parser = commands.add_parser("generate", help="translate a city's plain tiles with the ONNX generator",
                                 description="Run the generator on every plain tile of a tile set (ONNX Runtime: "
                                             "TensorRT, CUDA or CPU) and write the generated tiles as a tile set.")
    parser.add_argument("--model", metavar="URI.onnx",
                        help="MODEL.onnx of locgen export, local or s3:// (default: the bundled model)")
    parser.add_argument("--tiles", required=True, metavar="URI", help="tile set with plain tiles (locgen render)")
    parser.add_argument("--out", required=True, metavar="URI", help="the generated tile set, local or s3://")
    parser.add_argument("--provider", choices=("auto", *AUTO_ORDER), default=GENERATE_DEFAULTS.provider,
                        help="auto: TensorRT, else CUDA, else CPU (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=GENERATE_DEFAULTS.batch_size,
                        help="tiles per run (%(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=GENERATE_DEFAULTS.cache_dir,
                        help="downloaded models and TensorRT engines (default $LOCGEN_CACHE or ~/.cache/locgen)")
    parser.set_defaults(run=_run_generate)


def _run_generate(args) -> dict:
    from components.infer.job import generate  # onnxruntime: installed where inference runs

    return generate(GenerateSettings(tiles=args.tiles, out=args.out, model=args.model, provider=args.provider,
                                     batch_size=args.batch_size, cache_dir=args.cache_dir))


def _compile_parser(commands) -> None:
    parser = commands.add_parser("compile", help="compile the Kubeflow pipelines to YAML",
                                 description="Write pipeline/train.yaml, generate.yaml and end-to-end.yaml.")
    parser.add_argument("--registry", help="the registry the stage images come from "
                                           "(default $LOCGEN_IMAGE_REGISTRY or localhost:5000/locgen)")
    parser.add_argument("--out-dir", type=Path, help="where to write them (default: the pipeline/ package)")
    parser.add_argument("--cpu-only", action="store_true",
                        help="for a cluster without GPUs: no task asks for one (train and infer run on the CPU)")
    parser.set_defaults(run=_run_compile)


def _run_compile(args) -> dict:
    from pipeline.local import PIPELINE_DIR, compile_all  # kfp: installed where pipelines are compiled or run

    written = compile_all(args.out_dir or PIPELINE_DIR, args.registry, gpus=not args.cpu_only)
    return {"written": [str(path) for path in written]}


def _run_parser(commands) -> None:
    parser = commands.add_parser("run", help="run the end-to-end pipeline here (kfp.local) on the sample data",
                                 description="Train the tiny preset on central Helsinki, generate for Kotka and for "
                                             "the held-out part of Helsinki (scored against its real bicycle "
                                             "points), extract the points: the Kubeflow pipeline, run locally.")
    parser.add_argument("--pretrained", action="store_true", help="skip training: use the bundled generator")
    parser.add_argument("--store", type=Path, default=Path("out/pipeline"),
                        help="where the tiles, models and points go (%(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a pipeline parameter, e.g. steps=500 or target_grid=3 (JSON for lists; repeatable)")
    parser.set_defaults(run=_run_run)


def _run_run(args) -> dict:
    from pipeline.local import parse_parameters, run_sample

    return run_sample(args.store, parse_parameters(args.param), args.pretrained)


def _submit_parser(commands) -> None:
    from pipeline.submit import PIPELINE_NAMES, TOKEN_ENV

    parser = commands.add_parser("submit", help="submit a pipeline to a Kubeflow Pipelines endpoint",
                                 description="Upload the compiled pipeline as a new version, start a run (or "
                                             "schedule recurring runs) and print its link in the Kubeflow UI.")
    parser.add_argument("--host", required=True, metavar="URL", help="the KFP endpoint, e.g. http://localhost:8080")
    parser.add_argument("--pipeline", choices=list(PIPELINE_NAMES), default="end-to-end",
                        help="which pipeline (%(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a pipeline parameter (JSON for lists; repeatable)")
    parser.add_argument("--experiment", default="locgen", help="the experiment the run goes in (%(default)s)")
    parser.add_argument("--schedule", metavar="CRON", help="recurring runs on this cron schedule, e.g. '0 3 * * 1'")
    parser.add_argument("--token-file", type=Path,
                        help=f"a file holding the bearer token (default ${TOKEN_ENV}, or in a pod the "
                             "ServiceAccount token at $KF_PIPELINES_SA_TOKEN_PATH)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    parser.set_defaults(run=_run_submit)


def _run_submit(args) -> dict:
    from pipeline.local import parse_parameters
    from pipeline.submit import describe, plan, send

    submission = plan(args.host, args.pipeline, parse_parameters(args.param), args.experiment, args.schedule,
                      args.token_file)
    return describe(submission) if args.dry_run else {**describe(submission), **send(submission)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locgen", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _render_parser(commands)
    _locations_parser(commands)
    _extract_parser(commands)
    _evaluate_parser(commands)
    _train_parser(commands)
    _export_parser(commands)
    _generate_parser(commands)
    _compile_parser(commands)
    _run_parser(commands)
    _submit_parser(commands)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes, not to the one of the first call (tests and
    callers swap it; a handler holding a closed stream fails every later message)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    """locgen's own messages (not its libraries' chatter) as `locgen: ...` lines on stderr; stdout is the summary."""
    logger = logging.getLogger("components")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("locgen: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    _log_to_stderr()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        summary = args.run(args)
    except LocgenError as error:
        parser.exit(2, f"locgen: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, "locgen: interrupted; run the same command again to resume\n")
    print(json.dumps(summary, indent=2))
    return 0

