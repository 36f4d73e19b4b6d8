"""Each stage's settings are declared once (components.core.settings): the command line's options,
the components' parameters and the name of a tile set derive from them, and this test fails where
they disagree."""

import argparse
import typing
from pathlib import Path

import pytest

from components.core.errors import LocgenError
from components.core.geo import LonLatBounds
from components.core.settings import declared, from_parameters, is_list, output_identity, unset
from components.export.settings import ExportSettings
from components.extract.evaluate import EvaluateSettings
from components.extract.job import ExtractSettings
from components.infer.settings import GenerateSettings
from components.render.job import RenderSettings
from components.train.config import TrainConfig, TrainSettings
from locgen.cli import build_parser
from pipeline.components import build_components
from pipeline.images import DEFAULT_REGISTRY
from pipeline.local import setting_fed_by

# Parameters the pipeline decides for a task, not settings of its stage.
STEP_PARAMETERS = {"store", "run_id", "shard", "shards", "gpus", "nodes"}  # what a step decides, not a setting
# The component, and the settings its parameters feed (the first that has a name wins), each with its command.
COMPONENTS = [("render_tiles", ((RenderSettings, "render"),)), ("generate_tiles", ((GenerateSettings, "generate"),)),
              ("extract_points", ((ExtractSettings, "extract"), (EvaluateSettings, "evaluate")))]
COMMANDS = [("render", RenderSettings), ("generate", GenerateSettings), ("evaluate", EvaluateSettings),
            ("export", ExportSettings), ("train", TrainSettings), ("extract", ExtractSettings)]
# The training values come from a preset (TrainConfig), changed by these options, not from TrainSettings.
TRAIN_CONFIG_OPTIONS = {"preset", "steps", "batch_size", "set"}
KFP_TYPES = {"Integer": (int,), "Float": (float,), "String": (str,), "typing.List[str]": (list[str],)}


def _command(name: str) -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices[name]


def _options(name: str) -> dict[str, argparse.Action]:
    return {action.dest: action for action in _command(name)._actions if action.dest != "help"}


@pytest.mark.parametrize(("command", "cls"), COMMANDS)
def test_every_option_of_a_command_is_a_setting_declared_once(command, cls):
    options = _options(command)
    settable = {item.name: item for item in declared(cls) if item.cli}
    manual = TRAIN_CONFIG_OPTIONS if command == "train" else set()
    assert set(options) - manual == set(settable)
    for name, item in settable.items():
        action = options[name]
        assert action.option_strings == [item.flag] and action.help == item.help
        assert action.required == item.required
        if not item.required:
            assert action.default == ([] if is_list(item.kind) else item.default), name


@pytest.mark.parametrize(("component", "fed"), COMPONENTS)
def test_every_component_parameter_is_a_setting_of_its_stage_of_the_same_type(component, fed):
    spec = getattr(build_components(DEFAULT_REGISTRY), component).component_spec
    parameters = {name: spec_input.type for name, spec_input in spec.inputs.items()
                  if spec_input.type in KFP_TYPES and name not in STEP_PARAMETERS}
    assert parameters
    classes = tuple(cls for cls, _ in fed)
    for name, kfp_type in parameters.items():
        item = setting_fed_by(name, classes)
        assert item is not None and item.cli, f"{component}({name}): no setting of {classes} by that name"
        text_given = kfp_type == "String" and (item.parse is not None or item.kind in (str, Path) or is_list(item.kind))
        assert text_given or item.kind in KFP_TYPES[kfp_type], f"{component}({name}): {kfp_type} for {item.kind}"
        command = next(command for cls, command in fed if item in declared(cls))
        assert item.name in _options(command), f"{component}({name}): locgen {command} has no option for it"


def test_the_train_component_takes_the_presets_values_by_their_names():
    spec = build_components(DEFAULT_REGISTRY).train_generator.component_spec
    parameters = {name for name, spec_input in spec.inputs.items() if spec_input.type in KFP_TYPES} - STEP_PARAMETERS
    assert parameters == {"preset", "steps", "batch_size", "init_from"}
    assert {"steps", "batch_size"} <= set(typing.get_type_hints(TrainConfig))
    assert "init_from" in {item.name for item in declared(TrainSettings) if item.cli}
    assert parameters <= set(_options("train"))


def test_a_tile_set_is_named_by_every_render_setting_but_where_it_goes_and_how_it_runs():
    outside = {item.name for item in declared(RenderSettings) if not item.output}
    assert outside == {"out", "workers", "cache_dir", "progress", "shard", "shards", "overpass_max_mb",
                       "overpass_deadline_s", "feed_max_mb", "feed_deadline_s", "overwrite"}
    base = RenderSettings(osm=["city.osm.pbf"], out="a", pairs=10, locations=["x.csv"])
    for item in declared(RenderSettings):
        if item.output:
            changed = from_parameters(RenderSettings, {"osm": "city.osm.pbf", "out": "a", "pairs": 10,
                                                       "locations": ["x.csv"]})
            setattr(changed, item.name, _another(item.default))
            assert output_identity(changed) != output_identity(base), item.name
    assert output_identity(RenderSettings(osm=["city.osm.pbf"], out="b", pairs=10, locations=["x.csv"], workers=4,
                                          shard=1, shards=2)) == output_identity(base)


def _another(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "other"]
    return (1.0, 2.0, 3.0, 4.0)  # None: a bbox, a centre or a count


def test_pipeline_parameters_become_settings_by_the_one_rule_for_not_given():
    settings = from_parameters(RenderSettings, {"osm": "city.osm.pbf", "out": "", "pairs": 0, "grid": 0, "bbox": "",
                                                "center": "60.53,26.95", "holdout": "24.9,60.1,25.0,60.2",
                                                "seed": 0, "city": ""})
    assert settings.osm == ["city.osm.pbf"] and settings.pairs is None and settings.grid is None
    assert settings.bbox is None and settings.city is None and settings.seed == 0  # 0 is a seed, not "not given"
    assert settings.center == (26.95, 60.53) and settings.holdout == LonLatBounds(24.9, 60.1, 25.0, 60.2)
    assert (unset(0), unset(""), unset(3), unset(False)) == (None, None, 3, False)
    with pytest.raises(LocgenError, match="holdout: '1,2' is not WEST,SOUTH,EAST,NORTH"):
        from_parameters(RenderSettings, {"osm": "x", "out": "", "holdout": "1,2"})
    with pytest.raises(TypeError, match=r"RenderSettings has no settings \['colour'\]"):
        from_parameters(RenderSettings, {"osm": "x", "out": "", "colour": "red"})


def test_the_evaluation_settings_that_were_out_of_reach_are_options_now(tmp_path):
    args = build_parser().parse_args(["evaluate", "--generated", "g.csv", "--truth", "t.csv", "--bbox",
                                      "24.9,60.1,25.0,60.2", "--out", "r.json", "--radii-m", "10,30",
                                      "--grid-m", "250", "--memorisation-m", "2"])
    assert (args.radii_m, args.grid_m, args.memorisation_m) == ((10.0, 30.0), 250.0, 2.0)
    with pytest.raises(LocgenError, match="--radii-m 10,-3: give ground distances above 0"):
        build_parser().parse_args(["evaluate", "--generated", "g", "--truth", "t", "--bbox", "24.9,60.1,25.0,60.2",
                                   "--out", "r.json", "--radii-m", "10,-3"])
