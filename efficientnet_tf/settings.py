"""Settings: frozen dataclass fields that carry their own help, choices and flat name.

Each configurable value is declared once, with `setting(default, help, ...)`, in the config
dataclass of the layer that uses it (`data.config`, `training.config`, `deploy.config`). A config
may nest other configs (sections); every leaf also has a flat name, unique in the whole tree,
which is what the command line calls it (`--learning_rate`) and what `from_settings` accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any


class SettingError(ValueError):
    """A bad value of one setting. `setting` is its flat name (the CLI flag without `--`)."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def setting(default: Any, help: str, *, choices: tuple | None = None, flag: str | None = None):  # noqa: A002
    """A dataclass field with its help text, allowed values and (when it differs from the field
    name) its flat name."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


def section(cls):
    """A dataclass field holding a nested config, defaulting to `cls()`."""
    return dataclasses.field(default_factory=cls, metadata={"section": True})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One leaf of a config tree, as the command line sees it."""

    name: str  # flat name, unique in the tree
    path: tuple[str, ...]  # field names from the root config
    kind: type  # bool, int, float, str or tuple (of str)
    optional: bool  # None allowed (means: resolved from other values)
    default: Any
    help: str
    choices: tuple | None


def _leaf_kind(hint) -> tuple[type, bool]:
    args = typing.get_args(hint)
    optional = type(None) in args
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if origin not in (bool, int, float, str, tuple):
        raise TypeError(f"unsupported setting type {hint!r}")
    return origin, optional


def settings_of(config_class, path: tuple[str, ...] = ()) -> list[Setting]:
    """Every leaf setting of `config_class`, sections expanded, in declaration order."""
    hints = typing.get_type_hints(config_class)
    found = []
    for field in dataclasses.fields(config_class):
        if field.metadata.get("section"):
            found.extend(settings_of(hints[field.name], path + (field.name,)))
            continue
        if "help" not in field.metadata:
            raise TypeError(f"{config_class.__name__}.{field.name} is not declared with setting()")
        kind, optional = _leaf_kind(hints[field.name])
        found.append(Setting(field.metadata["flag"] or field.name, path + (field.name,), kind, optional,
                             field.default, field.metadata["help"], field.metadata["choices"]))
    names = [s.name for s in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated and not path:
        raise TypeError(f"{config_class.__name__}: flat setting names used twice: {', '.join(duplicated)}")
    return found


def check_choices(config) -> None:
    """`SettingError` for the first leaf of `config` whose value is not among its declared choices
    (each element, for a tuple setting)."""
    for s in settings_of(type(config)):
        if not s.choices:
            continue
        value = config
        for part in s.path:
            value = getattr(value, part)
        for item in (value if s.kind is tuple else (value,)):
            if item not in s.choices:
                raise SettingError(s.name, f"unknown {s.name} {item!r}; choose from {', '.join(s.choices)}")


def from_settings(config_class, values: Mapping[str, Any]):
    """`config_class` with the leaves named in `values` (flat names) set, the rest default."""
    known = {s.name: s for s in settings_of(config_class)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SettingError(unknown[0], f"unknown setting(s) {', '.join(unknown)} for {config_class.__name__}{hint}")
    nested: dict = {}
    for name, value in values.items():
        *parents, leaf = known[name].path
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return from_dict(config_class, nested)


def to_settings(config) -> dict[str, Any]:
    """The flat {name: value} of every leaf of `config`."""
    flat = {}
    for s in settings_of(type(config)):
        value = config
        for part in s.path:
            value = getattr(value, part)
        flat[s.name] = list(value) if isinstance(value, tuple) else value
    return flat


def from_dict(config_class, values: Mapping[str, Any]):
    """A config from its nested `dataclasses.asdict` form (e.g. read back from JSON); keys the
    class no longer has are ignored, missing ones take their defaults."""
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for field in dataclasses.fields(config_class):
        if field.name not in values:
            continue
        value = values[field.name]
        if field.metadata.get("section"):
            value = from_dict(hints[field.name], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return config_class(**kwargs)


def replace_settings(config, **values):
    """A copy of `config` with the leaves named by flat name replaced."""
    return from_settings(type(config), {**to_settings(config), **values})
