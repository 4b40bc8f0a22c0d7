"""The checks of the configs' ``__post_init__``, each failure a :class:`FieldError` that
names the field and its value; the loader puts the section's dotted key in front
(``mdlm.train.log_every must be at least 1, got 0``), so a bad value stops a command
before any work starts instead of failing deep inside it.

Floats are checked finite first: NaN compares false with every bound, so a plain
``value <= 0`` test would let it through.
"""

from __future__ import annotations

import math
from typing import Any

from diladiff_cli.structs import FieldError


def at_least(cfg: Any, low: int, *names: str) -> None:
    """Each named int field of ``cfg`` is ``low`` or more."""
    for name in names:
        value = getattr(cfg, name)
        if value < low:
            raise FieldError(name, f"must be at least {low}, got {value!r}")


def all_at_least(key: str, values: tuple[int, ...], low: int) -> None:
    """Each item of a tuple field is ``low`` or more (the key names the bad item)."""
    for i, value in enumerate(values):
        if value < low:
            raise FieldError(f"{key}[{i}]", f"must be at least {low}, got {value!r}")


def number(
    key: str,
    value: float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    """``value`` (the field ``key``) is finite and within the bounds given.

    Raises:
        FieldError: naming ``key``, the bounds and the value.
    """
    if not math.isfinite(value):
        raise FieldError(key, f"must be a finite number, got {value!r}")
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    if (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (lt is not None and not value < lt)
        or (le is not None and not value <= le)
    ):
        if low is not None and high is not None:
            left, right = ("(" if gt is not None else "["), (")" if lt is not None else "]")
            bounds = f"in {left}{low:g}, {high:g}{right}"
        elif low is not None:
            bounds = f"{'>' if gt is not None else '>='} {low:g}"
        else:
            bounds = f"{'<' if lt is not None else '<='} {high:g}"
        raise FieldError(key, f"must be {bounds}, got {value!r}")


def fields_in(cfg: Any, *names: str, **bounds: float) -> None:
    """:func:`number` on each named float field of ``cfg``."""
    for name in names:
        number(name, getattr(cfg, name), **bounds)


def unit_interval(cfg: Any, *names: str) -> None:
    """Each named field is a probability or a share: finite, in [0, 1]."""
    fields_in(cfg, *names, ge=0.0, le=1.0)


def not_empty(cfg: Any, *names: str) -> None:
    """Each named string field (a path, a model name) is not blank; ``None`` passes."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not str(value).strip():
            raise FieldError(name, f"must not be empty, got {value!r}")


def distinct(key: str, values: tuple[Any, ...]) -> None:
    """A list field that is not empty and names each item once."""
    if not values or len(set(values)) != len(values):
        raise FieldError(key, f"must be distinct and not empty, got {list(values)}")
