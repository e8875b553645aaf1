"""Experiment configs: frozen dataclasses, to and from config.json, seen flat.

A command's Config may nest a sub-config: a field whose type is itself a dataclass (e.g. the
training settings a job carries, ``training: GanTraining``). Each knob is declared once, in the
sub-config, and everything outside sees the configuration *flat*, one name per knob: the
command line (tyro, with the sub-config's prefix omitted: ``--epochs``, not
``--training.epochs``), config.json's ``"config"`` (so run directories from before a knob moved
into a sub-config still load), ``--quick`` overrides, and the flags ``--resume`` compares. Flat
names are unique by construction (:func:`flat_fields` refuses a clash).

Hand-written: tyro flattens the command line but has no flat view of a nested dataclass for
the rest; ``dataclasses.replace`` does not reach into nested fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bnlab.lab.runs import to_json

__all__ = [
    "build",
    "config_from_dict",
    "config_to_dict",
    "differing_settings",
    "field_defaults",
    "flat_fields",
    "flat_values",
    "given_fields",
    "replace_flat",
]

T = TypeVar("T")


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_subconfig(tp: Any) -> bool:
    tp = _strip(tp)
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def flat_fields(cls: type[Any]) -> dict[str, tuple[str, ...]]:
    """Flat name -> attribute path, in declaration order: ``{"epochs": ("training",
    "epochs"), "seeds": ("seeds",), ...}``. A sub-config field has no flat name of its own."""
    kind: Any = cls  # a class is hashable; mypy's type[Any] is not declared so
    return dict(_flat_fields(kind))


@functools.cache
def _flat_fields(cls: Any) -> dict[str, tuple[str, ...]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        if _is_subconfig(hints[f.name]):
            inner = {k: (f.name, *p) for k, p in flat_fields(_strip(hints[f.name])).items()}
        else:
            inner = {f.name: (f.name,)}
        clash = set(inner) & set(out)
        if clash:
            raise TypeError(f"{cls.__name__}: the setting {sorted(clash)[0]!r} is declared twice")
        out.update(inner)
    return out


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def flat_values(cfg: Any) -> dict[str, Any]:
    """Every knob of ``cfg`` by its flat name."""
    return {name: _get(cfg, path) for name, path in flat_fields(type(cfg)).items()}


def field_defaults(cls: type[Any]) -> dict[str, Any]:
    """The default of every knob that has one, by flat name."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if _is_subconfig(hints[f.name]):
            out.update(flat_values(value))
        else:
            out[f.name] = value
    return out


def replace_flat(cfg: T, changes: Mapping[str, Any]) -> T:
    """``dataclasses.replace`` by flat names, into sub-configs as needed."""
    paths = flat_fields(type(cfg))
    unknown = sorted(set(changes) - set(paths))
    if unknown:
        raise TypeError(f"{type(cfg).__name__} has no setting {unknown[0]!r}")
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        head = paths[name][0]
        if len(paths[name]) > 1:  # a sub-config's knob keeps its flat name inside it
            nested.setdefault(head, {})[name] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = replace_flat(getattr(cfg, head), inner)
    return dataclasses.replace(cfg, **direct)  # type: ignore[type-var]


def build(cls: type[T], **flat: Any) -> T:
    """A config from flat settings over the defaults: ``build(GanConfig, epochs=5, seeds=(0,
    1))`` instead of spelling out its sub-configs (for code and tests; the CLI has tyro)."""
    return replace_flat(cls(), flat)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config as config.json holds it: flat names, plain JSON (tuples become lists, paths
    strings, dataclass values such as GAN variants dicts)."""
    return {name: to_json(value) for name, value in flat_values(cfg).items()}


def differing_settings(
    configs: Sequence[Any], leave_out: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Per config, the flat settings (as config.json writes their values) in which the
    configs differ, those named in ``leave_out`` aside: what tells runs apart."""
    flat = [config_to_dict(c) for c in configs]
    keys = sorted({k for c in flat for k in c} - leave_out)
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in flat}) > 1]
    return [{k: c.get(k) for k in differ} for c in flat]


def _convert(tp: Any, value: Any) -> Any:
    """JSON value -> the field's type: lists to tuples, strings to Paths, dicts to dataclasses."""
    tp = _strip(tp)
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if args:
            return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if tp is Path:
        return Path(value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp, include_extras=True)
        cls: Any = tp
        return cls(**{k: _convert(hints[k], v) for k, v in value.items() if k in hints})
    return value


def _describe(tp: Any) -> str:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if tp is type(None):
        return "null"
    if tp is Path:
        return "a path"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "an object" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))
    )


def _check(tp: Any, value: Any, name: str) -> None:
    """Raise ValueError naming ``name`` unless the JSON ``value`` fits the field type ``tp``:
    config.json goes through the same types as the command line (an edited ``"epochs":
    "three"`` or ``"modes": "bogus"`` is refused, not trained with)."""
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                _check(option, value, name)
                return
            except ValueError:
                pass
        raise ValueError(f"{name}: {value!r} is not {_describe(tp)}")
    ok: bool
    if tp is type(None):
        ok = value is None
    elif origin is typing.Literal:
        ok = value in typing.get_args(tp)
    elif origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{name}: {value!r} is not {_describe(tp)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args and len(args) != len(value):
            raise ValueError(f"{name}: {value!r} does not have {len(args)} values")
        for i, (arg, item) in enumerate(zip(args, value, strict=False)):
            _check(arg, item, f"{name}[{i}]")
        return
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp in (str, Path):
        ok = isinstance(value, str)
    elif dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{name}: {value!r} is not {_describe(tp)}")
        hints = typing.get_type_hints(tp, include_extras=True)
        for key, item in value.items():
            if key not in hints:
                raise ValueError(f"{name}: unknown key {key!r}")
            _check(hints[key], item, f"{name}.{key}")
        return
    else:  # a type config.json does not describe further
        return
    if not ok:
        raise ValueError(f"{name}: {value!r} is not {_describe(tp)}")


def _leaf_type(cls: type[Any], path: tuple[str, ...]) -> Any:
    """The annotated type of the field at ``path`` (through sub-configs)."""
    tp: Any = cls
    for name in path:
        tp = typing.get_type_hints(_strip(tp), include_extras=True)[name]
    return tp


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """A Config from config.json's ``"config"`` (flat names) over its defaults: a knob left
    out (a run from before it existed) takes the default the Config declares, its sub-config
    field's default included. Unknown names, and values of the wrong type (checked against
    the field's annotation, Literal choices included), are an error naming them. (Every Config has a
    default for every field: a command runs with no flags.)"""
    paths = flat_fields(cls)
    unknown = sorted(set(values) - set(paths))
    if unknown:
        raise ValueError(f"settings this version of bnlab does not know: {', '.join(unknown)}")
    for name, v in values.items():
        _check(_leaf_type(cls, paths[name]), v, name)
    converted = {name: _convert(_leaf_type(cls, paths[name]), v) for name, v in values.items()}
    return replace_flat(cls(), converted)


def given_fields(cls: type[Any], argv: list[str]) -> set[str]:
    """The flat names that ``argv`` sets explicitly (``--epochs 5``, ``--no-metrics``)."""
    names = set(flat_fields(cls))
    out = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names:
            out.add(name)
    return out
