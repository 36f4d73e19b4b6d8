"""Settings declared once: a stage's settings dataclass is the one place where each of its settings
is named, typed, given its default and its help; the `locgen` command's options, the pipeline
steps and the hash that names a tile set all derive from it.

A field made with `setting(...)` says, besides its default:
- `help`: the option's help text (`%(default)s` is the default);
- `parse`: how a text becomes the value (a bbox, a LAT,LON pair), for the command line and for
  the pipeline's text parameters alike, as `parse(text, what)` (`what`: the option or parameter,
  for the error message); without it, the field's type is called on the text;
- `flag`, `action`, `metavar`, `group`, `choices`: how the option is spelt, when the plain `--field-name`
  does not say it (`--keep-disabled` sets `drop_disabled` to False; options of one `group` exclude
  each other);
- `within`: the numbers it takes (`Within`), checked whenever the settings are made (`Checked`), so the
  command line, the pipeline and code get the same one-line error;
- `cli=False`: set by the code that runs the stage, never by a person (progress bars, shards);
- `output=False`: does not change what the stage writes (where it goes, how many processes):
  left out of `output_identity`, so a tile set is named by every other field, by construction.

Pipeline parameters cannot be None: there, 0 and "" stand for the command line's "not given" for
every setting whose default is None (`from_parameters`), the one rule for both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.core.errors import LocgenError

_KEY = "locgen"  # the key of our part of a field's metadata


class Within(typing.NamedTuple):
    """The numbers a setting takes: from `low` to `high` (None: no bound on that side), `low` itself excluded
    when `above`, `high` when `below`; never NaN or infinite. Each element of a tuple or list is checked."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False

    def holds(self, number: float) -> bool:
        low_ok = self.low is None or number > self.low or (number == self.low and not self.above)
        high_ok = self.high is None or number < self.high or (number == self.high and not self.below)
        return math.isfinite(number) and low_ok and high_ok

    def text(self, whole: bool) -> str:
        """What to give, e.g. 'a whole number of at least 1', 'a number above 0 and at most 1000'."""
        if self.low is not None and self.high is not None and not (self.above or self.below):
            bounds = [f"from {_number_text(self.low)} to {_number_text(self.high)}"]
        else:
            bounds = [f"{'above' if self.above else 'of at least'} {_number_text(self.low)}"] if self.low is not None \
                else []
            bounds += [f"{'below' if self.below else 'at most'} {_number_text(self.high)}"] if self.high is not None \
                else []
        return " ".join(["a whole number" if whole else "a number", " and ".join(bounds)]).strip()


def check_number(what: str, value: Any, within: Within, whole: bool = False) -> None:
    """`value` (a number, or a tuple or list of them) within `within`; else one line naming `what`, the value
    and what to give."""
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    for number in numbers:
        typed = isinstance(number, int if whole else (int, float)) and not isinstance(number, bool)
        if not (typed and within.holds(number)):
            raise LocgenError(f"{what} {','.join(map(_number_text, numbers))}: give {within.text(whole)}")


def _number_text(value: Any) -> str:
    """A number as a person would write it: 4294967295, 0.5, 1e+30."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


SEED = Within(0, 2**32 - 1)  # what every random generator here (numpy, torch) takes


class Checked:
    """A settings dataclass whose numbers are checked against their `within` as it is made: from the command
    line, from pipeline parameters and from code alike."""

    def __post_init__(self) -> None:
        check_within(type(self), vars(self))


def check_within(cls, values: dict[str, Any]) -> None:
    """The `values` of settings of `cls` (by name; others are ignored) within their `within`; else one line."""
    for item in declared(cls):
        value = values.get(item.name)
        if item.within is not None and value is not None:
            element = typing.get_args(item.kind)[0] if typing.get_args(item.kind) else item.kind
            check_number(item.flag, value, item.within, whole=element is int)


def setting(default: Any = dataclasses.MISSING, *, help: str, parse: Callable[[str, str], Any] | None = None,
            flag: str | None = None, action: str | None = None, metavar: str | None = None,
            group: str | None = None, choices: tuple | None = None, within: Within | None = None, cli: bool = True,
            output: bool = True, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with what the command line and the pipeline need to know of it."""
    metadata = {_KEY: {"help": help, "parse": parse, "flag": flag, "action": action, "metavar": metavar,
                       "group": group, "choices": choices, "within": within, "cli": cli, "output": output}}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Declared(typing.NamedTuple):
    """One setting as declared: its field, its type (None stripped) and what `setting` recorded."""

    name: str
    kind: Any  # int, float, str, bool, Path, list[str], tuple[float, ...], a NamedTuple ...
    optional: bool  # None is a value (its default is None)
    required: bool  # no default
    default: Any
    help: str
    parse: Callable[[str, str], Any] | None
    flag: str
    action: str | None
    metavar: str | None
    group: str | None
    choices: tuple | None
    within: Within | None
    cli: bool
    output: bool


def declared(cls) -> list[Declared]:
    """The settings of a settings dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    result = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(_KEY)
        if meta is None:
            raise TypeError(f"{cls.__name__}.{field.name}: declare it with setting(...), so the command line and "
                            "the pipeline know it")
        kind, optional = _strip_none(hints[field.name])
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        result.append(Declared(
            field.name, kind, optional, field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING, default, meta["help"], meta["parse"],
            meta["flag"] or "--" + field.name.replace("_", "-"), meta["action"], meta["metavar"], meta["group"],
            meta["choices"], meta["within"], meta["cli"], meta["output"]))
    return result


def _strip_none(hint) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(arg for arg in args if arg is not type(None)), True
    return hint, False


def is_list(kind) -> bool:
    return typing.get_origin(kind) is list


def parse_text(item: Declared, text: str, what: str | None = None) -> Any:
    """A setting's value from its text (given as `what`, default its option): by its `parse`, else by its type."""
    if item.parse is not None:
        return item.parse(text, what or item.flag)
    kind = typing.get_args(item.kind)[0] if is_list(item.kind) else item.kind
    return kind(text)


def unset(value: Any) -> Any:
    """A pipeline parameter's value, or None where it is 0 or "" (a pipeline's "not given")."""
    return None if value in ("", 0) and not isinstance(value, bool) else value


def from_parameters(cls, parameters: dict[str, Any], **fixed: Any):
    """Settings from pipeline parameters named as the fields (`fixed`: values the step decides).

    0 and "" stand for None where None is a field's default; texts go through the field's `parse`;
    one text for a list field is a list of one.
    """
    by_name = {item.name: item for item in declared(cls)}
    unknown = sorted(set(parameters) - set(by_name))
    if unknown:
        raise TypeError(f"{cls.__name__} has no settings {unknown}")
    values = {}
    for name, value in parameters.items():
        item = by_name[name]
        if item.optional and item.default is None and unset(value) is None:
            value = None
        elif isinstance(value, str) and is_list(item.kind):
            value = [value]
        elif isinstance(value, str) and (item.parse is not None or item.kind is Path):
            value = parse_text(item, value)
        values[name] = value
    return cls(**values, **fixed)


def output_identity(settings) -> dict[str, Any]:
    """Every setting that changes what the stage writes, as JSON values: what names its output."""
    return {item.name: _json_value(getattr(settings, item.name)) for item in declared(type(settings))
            if item.output}


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_value(element) for element in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
