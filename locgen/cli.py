"""The `locgen` command line: every stage runs from here as well as from its KFP component.

Bad input ends with one line `locgen: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import shlex
import sys
import typing
from pathlib import Path

from components.core.errors import LocgenError, redacted
from components.core.logs import log_to_stderr
from components.core.settings import check_within, declared, is_list
from components.export.settings import ExportSettings
from components.extract.evaluate import EvaluateSettings, FitBaselineSettings, evaluate, fit_baseline
from components.extract.job import ExtractSettings, extract
from components.infer.settings import GenerateSettings
from components.render.job import RenderSettings, render
from components.train.config import PRESETS, TrainConfig, TrainSettings, preset_config

# A value such as -87.64,41.88,-87.62,41.89 (west of Greenwich) or -33.9,18.4 (south of the equator): argparse
# takes a word that starts with "-" and is not a plain number for an option, so --bbox would get no value.
_NEGATIVE_VALUE = re.compile(r"-\.?[0-9]")


class Parser(argparse.ArgumentParser):
    """locgen's argument parser, and each command's: options are spelt out whole (a prefix such as --token would
    otherwise be taken for --token-file and its value shown in the error); a value that starts with a minus
    sign is taken as the value of the option before it; a bad command line is one line `locgen: error: ...`
    that names the command and shows no value it did not recognise (one may be a secret)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args=None, namespace=None):
        # the options that take exactly one value, those of mutually exclusive groups included
        value_options = {option for action in self._actions if action.nargs is None for option in action.option_strings}
        joined = []
        for word in sys.argv[1:] if args is None else args:
            if joined and joined[-1] in value_options and _NEGATIVE_VALUE.match(word):
                joined[-1] = f"{joined[-1]}={word}"
            else:
                joined.append(word)
        return super().parse_known_args(joined, namespace)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            options = sorted({word.partition("=")[0] for word in extras if word.startswith("-")})
            named = (f"unknown options {', '.join(options)}" if options else
                     f"{len(extras)} unexpected value{'s' if len(extras) > 1 else ''}")
            command = " ".join([self.prog, *([parsed.command] if getattr(parsed, "command", None) else [])])
            self.error(f"{named} (values not shown); see `{command} --help` for what it takes")
        return parsed

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "render" of "locgen render"; "" for locgen itself
        self.exit(2, redacted(f"locgen: error: {command + ': ' if command else ''}{message}\n"))


def add_settings(parser: argparse.ArgumentParser, cls, only: tuple[str, ...] | None = None) -> None:
    """The options of a settings dataclass (components.core.settings), as it declares them: names,
    types, defaults, help; `only`: these settings alone."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for item in declared(cls):
        if not item.cli or (only is not None and item.name not in only):
            continue
        if item.group is not None and item.group not in groups:
            groups[item.group] = parser.add_mutually_exclusive_group()
        target = parser if item.group is None else groups[item.group]
        options = {"dest": item.name, "help": item.help}
        if item.kind is bool:
            options.update(action=item.action or ("store_false" if item.default else "store_true"))
        else:
            element = typing.get_args(item.kind)[0] if is_list(item.kind) else item.kind
            parse = element if item.parse is None else functools.partial(item.parse, what=item.flag)
            options.update(type=parse, metavar=item.metavar, choices=item.choices,
                           required=item.required)
            if is_list(item.kind):
                options.update(action="append", default=None if item.required else [])
            else:
                options.update(default=item.default)
        target.add_argument(item.flag, **options)


def settings_from(cls, args: argparse.Namespace, **fixed):
    """The settings the options of `add_settings` gave (and `fixed`, what the command decides)."""
    given = {item.name: getattr(args, item.name) for item in declared(cls) if hasattr(args, item.name)}
    return cls(**{**given, **fixed})


def _lazy(target: str):
    """The function `module:name`, imported when it runs: torch and onnxruntime are in some images only."""
    module, _, name = target.partition(":")
    return lambda settings: getattr(importlib.import_module(module), name)(settings)


def _evaluate(settings: EvaluateSettings) -> dict:
    return {"out": settings.out, "verdict": evaluate(settings)["verdict"]}


# The commands whose options are a stage's settings: name, settings, what runs them, help, description.
SETTINGS_COMMANDS = (
    ("render", RenderSettings, render, "render map tiles (and tiles with markers) into a tile set",
     "Render exactly georeferenced OSM map tiles to a local path or s3://."),
    ("extract", ExtractSettings, extract, "turn the marker dots of a tile set into points",
     "Extract one point per marker dot, as CSV or GeoJSON."),
    ("evaluate", EvaluateSettings, _evaluate, "score generated points against real ones and the baselines",
     "Precision/recall/F1 at 25, 50, 100 m, median distances, grid rank correlation and memorisation, beside "
     "uniform and along-road baselines, and with --class-shares one fitted on training cities."),
    ("fit-baseline", FitBaselineSettings, fit_baseline, "fit the map class shares of real points, for evaluate",
     "Measure the shares of the map classes (roads, paths, building outlines, open land, water, none) among real "
     "points of training cities, as JSON for evaluate --class-shares."),
    ("export", ExportSettings, _lazy("components.export.exporter:export"),
     "export a trained generator to ONNX, checked against PyTorch",
     "Write MODEL.onnx (fp32), MODEL.fp16.onnx (for TensorRT) and MODEL.parity.json; fail when ONNX and PyTorch "
     "disagree."),
    ("generate", GenerateSettings, _lazy("components.infer.job:generate"),
     "translate a city's plain tiles with the ONNX generator",
     "Run the generator on every plain tile of a tile set (ONNX Runtime: TensorRT, CUDA or CPU) and write the "
     "generated tiles as a tile set."),
)


def _settings_command(commands, name: str, cls, run, help: str, description: str) -> None:
    """A command whose options are the settings `cls` declares, running `run(settings)`."""
    parser = commands.add_parser(name, help=help, description=description)
    add_settings(parser, cls)
    parser.set_defaults(run=lambda args: run(settings_from(cls, args)))


def _locations_parser(commands) -> None:
    parser = commands.add_parser("locations", help="normalise location sources to points, to inspect them",
                                 description="Write the points of location sources as CSV or GeoJSON.")
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="GBFS gbfs.json/feed (file or URL), CSV, GeoJSON, or osm:KEY=VALUE")
    parser.add_argument("--osm", action="append", default=[], metavar="FILE", help="OSM file for osm: sources")
    parser.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.geojson")
    parser.add_argument("--lat-column", help="CSV latitude column (default: found by its usual name)")
    parser.add_argument("--lon-column", help="CSV longitude column (default: found by its usual name)")
    add_settings(parser, RenderSettings, only=("drop_disabled", "drop_reserved", "feed_max_mb", "feed_deadline_s"))
    parser.set_defaults(run=_run_locations)


def _run_locations(args) -> dict:
    from components.sources.locations import feed_limits, load_locations, write_locations

    check_within(RenderSettings, vars(args))  # the options it shares with render
    sources = [load_locations(spec, osm_files=args.osm, drop_disabled=args.drop_disabled,
                              drop_reserved=args.drop_reserved, lat_column=args.lat_column,
                              lon_column=args.lon_column, limits=feed_limits(args)) for spec in args.sources]
    write_locations(sources, args.out)
    return {"out": args.out, "points": sum(len(source.points) for source in sources),
            "sources": [{"uri": s.uri, "kind": s.kind, "points": len(s.points), "sha256": s.sha256}
                        for s in sources]}


def _train_parser(commands) -> None:
    parser = commands.add_parser("train", help="train FastCUT on a tile set of training pairs",
                                 description="Train the generator: plain tiles (b) -> tiles with markers (a).")
    add_settings(parser, TrainSettings, only=("data", "out"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="settings to start from (tiny)")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="tiles per step (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override any setting of the preset, e.g. --set lr=1e-4 (repeatable)")
    add_settings(parser, TrainSettings, only=("resume", "resume_if_any", "overwrite", "init_from", "device",
                                              "cache_dir"))
    parser.set_defaults(run=_run_train)


def _train_config(args) -> TrainConfig:
    preset = PRESETS[args.preset]
    try:
        return preset_config(args.preset, args.steps, args.batch_size, **dict(_setting(preset, text)
                                                                               for text in args.set))
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
    from components.train.train import train

    return train(settings_from(TrainSettings, args, config=_train_config(args)))


def _compile_parser(commands) -> None:
    parser = commands.add_parser("compile", help="compile the Kubeflow pipelines to YAML",
                                 description="Write pipeline/train.yaml, generate.yaml and end-to-end.yaml.")
    parser.add_argument("--registry", help="the registry the stage images come from "
                                           "(default $LOCGEN_IMAGE_REGISTRY or localhost:5000/locgen)")
    parser.add_argument("--tag", help="the stage images' tag (default $LOCGEN_IMAGE_TAG or the version; "
                                      "images/build.sh tags VERSION-COMMIT)")
    parser.add_argument("--out-dir", type=Path, help="where to write them (default: the pipeline/ package)")
    parser.add_argument("--cpu-only", action="store_true",
                        help="for a cluster without GPUs: no task asks for one (train and infer run on the CPU)")
    parser.add_argument("--gpu-node-selector", action="append", default=[], metavar="LABEL=VALUE",
                        help="GPU tasks run only on nodes with this label, e.g. "
                             "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 (repeatable)")
    parser.add_argument("--max-parallel", type=int, default=8,
                        help="tasks a loop over cities or shards runs at once (%(default)s)")
    parser.set_defaults(run=_run_compile)


def _run_compile(args) -> dict:
    from pipeline.images import DEFAULT_REGISTRY, DEFAULT_TAG, REGISTRY_ENV, TAG_ENV
    from pipeline.local import PIPELINE_DIR, compile_all  # kfp: installed where pipelines are compiled or run

    registry = args.registry or os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY)
    selector = {}
    for text in args.gpu_node_selector:
        label, _, value = text.partition("=")
        if not label or not value:
            raise LocgenError(f"--gpu-node-selector {text}: give LABEL=VALUE, e.g. nvidia.com/gpu.present=true")
        selector[label] = value
    tag = args.tag or os.environ.get(TAG_ENV, DEFAULT_TAG)
    written = compile_all(args.out_dir or PIPELINE_DIR, registry, gpus=not args.cpu_only, gpu_node_selector=selector,
                          max_parallel=args.max_parallel, tag=tag)
    return {"written": [str(path) for path in written]}


def _run_parser(commands) -> None:
    parser = commands.add_parser("run", help="run the end-to-end pipeline here (kfp.local) on the sample data",
                                 description="Train the tiny preset on central Helsinki (or on the cities of "
                                             "--param 'cities=[...]'), generate for Kotka and for the held-out "
                                             "part of Helsinki (scored against its real bicycle points), extract "
                                             "the points: the Kubeflow pipeline, run locally.")
    parser.add_argument("--pretrained", action="store_true", help="skip training: use the bundled generator")
    parser.add_argument("--store", type=Path, default=Path("out/pipeline"),
                        help="where the tiles, models and points go (%(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a pipeline parameter, e.g. steps=500 or target_grid=3 (JSON for lists; repeatable)")
    parser.add_argument("--verbose", action="store_true",
                        help="show kfp.local's whole log (each task's output and its inputs and outputs) as it comes; "
                             "without it, a line a task, and the whole log in a file under STORE/kfp/logs")
    parser.set_defaults(run=_run_run)


def _run_run(args) -> dict:
    from pipeline.local import parse_parameters, run_sample

    return run_sample(args.store, parse_parameters(args.param), args.pretrained, args.verbose)


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
    parser.add_argument("--namespace", help="on a multi-user Kubeflow: your profile's namespace (default: in a pod, "
                                            "the pod's own)")
    parser.add_argument("--wait", type=int, metavar="SECONDS",
                        help="wait up to this long for the run's end; print its state and, for a training run, "
                             "whether it promoted its model; exit 2 when it did not succeed")
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    parser.set_defaults(run=_run_submit)


def _run_submit(args) -> dict:
    from pipeline.local import parse_parameters
    from pipeline.submit import describe, plan, send

    submission = plan(args.host, args.pipeline, parse_parameters(args.param), args.experiment, args.schedule,
                      args.token_file, args.namespace, args.wait)
    return describe(submission) if args.dry_run else {**describe(submission), **send(submission)}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="locgen", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in SETTINGS_COMMANDS:
        _settings_command(commands, *command)
    _locations_parser(commands)
    _train_parser(commands)
    _compile_parser(commands)
    _run_parser(commands)
    _submit_parser(commands)
    return parser


def _resume_command(argv: list[str], args: argparse.Namespace) -> str:
    """The command that continues an interrupted one: training needs --resume (without --overwrite, which
    would start afresh); every other command resumes when it runs again."""
    if args.command != "train" or args.resume or args.resume_if_any:
        return shlex.join(["locgen", *argv])
    return shlex.join(["locgen", *(word for word in argv if word != "--overwrite"), "--resume"])


def _file_problem(error: OSError) -> str:
    """One line for a local file or folder that could not be read or written (a path under a file, a read-only
    or full disk, no permission), naming the path."""
    fix = "check the path" if isinstance(error, FileNotFoundError) else \
        "give a path in a folder this user may write to, on a disk with free space"
    return f"{error.filename}: {error.strerror or error}; {fix}"


def main(argv: list[str] | None = None) -> int:
    log_to_stderr()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        args = parser.parse_args(argv)
        summary = args.run(args)
    except LocgenError as error:
        parser.exit(2, redacted(f"locgen: error: {error}\n"))
    except OSError as error:
        if error.filename is None:  # not about a path of ours: a defect, shown whole
            raise
        parser.exit(2, redacted(f"locgen: error: {_file_problem(error)}\n"))
    except KeyboardInterrupt:
        again = f"resume with: {_resume_command(argv, args)}" if args else "run the command again"
        parser.exit(130, redacted(f"locgen: interrupted; {again}\n"))
    print(redacted(json.dumps(summary, indent=2)))
    return 0

