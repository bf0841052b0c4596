"""Typed configs (dataclasses) to and from JSON, so every output carries its settings."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from her2core.errors import UserError
from her2core.util.safe_io import read_json

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass `cls` from `data`; unknown keys are a user error, tuples restored."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, source=source)
        elif (hint is tuple or origin is tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)


def save(cfg: Any, path: str | Path) -> None:
    from her2core.util.atomic import write_json

    write_json(path, to_dict(cfg))


def load(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    data = read_json(path, "config file")
    return from_dict(cls, data, source=str(path))
