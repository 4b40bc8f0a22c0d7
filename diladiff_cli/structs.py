"""Strict conversion between plain mappings and frozen config dataclasses.

Used by the recipe loader (YAML) and by checkpoints (JSON metadata): an unknown
key, a wrong type or a missing required field is a :class:`RecipeError` that
names the key and the source.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from diladiff_cli.errors import RecipeError


class FieldError(ValueError):
    """A ``__post_init__`` check that failed on one field.

    :func:`build_dataclass` prefixes ``key`` with the dataclass's own dotted key, so the
    message names the whole path (``mdlm.train.log_every must be at least 1, got 0``).

    Args:
        key: the field, dotted below the dataclass that checks it (``model.two_times``).
        reason: what is wrong, value included (``must be at least 1, got 0``).
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key} {reason}")
        self.key = key
        self.reason = reason


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, file: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (ints to floats,
    lists to tuples, mappings to dataclasses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # `X | None`: X's own error, naming the key inside X
            return _convert(value, options[0], key, file)
        for arg in options:
            try:
                return _convert(value, arg, key, file)
            except RecipeError:
                continue
        raise _type_error(value, tp, key, file)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _type_error(value, tp, key, file)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _type_error(value, tp, key, file)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise RecipeError(f"{file}: {key}: expected {len(args)} items, got {len(value)}")
            items = [
                _convert(v, a, f"{key}[{i}]", file)
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{key}[{i}]", file) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, file)
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", file) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{file}: {key}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, key, file)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, tp, key, file)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(value, tp, key, file)
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML (YAML 1.1) reads `1e-3` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise _type_error(value, tp, key, file)
        if not math.isfinite(number):  # no setting means anything at nan or inf
            raise RecipeError(f"{file}: {key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(value, tp, key, file)
    raise RecipeError(f"{file}: {key}: unsupported config type {tp!r}")


def _type_error(value: Any, tp: Any, key: str, file: str) -> RecipeError:
    shown = repr(value)
    if len(shown) > 80:  # a whole mapping given where a number goes: its start is enough
        shown = shown[:77] + "..."
    return RecipeError(f"{file}: {key}: expected {_type_name(tp)}, got {shown}")


def build_dataclass(cls: type, raw: dict, prefix: str, file: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise RecipeError(f"{file}: unknown key '{where}' (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], key, file)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{file}: missing required key '{key}'")
    try:
        return cls(**kwargs)
    except FieldError as err:  # __post_init__ validation of one field
        key = f"{prefix}.{err.key}" if prefix else err.key
        raise RecipeError(f"{file}: {key} {err.reason}") from None
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise RecipeError(f"{file}: {prefix or 'recipe'}: {err}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain JSON/YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, raw: dict, *, source: str = "checkpoint") -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output (e.g. a checkpoint's metadata)."""
    return build_dataclass(cls, raw, "", source)
