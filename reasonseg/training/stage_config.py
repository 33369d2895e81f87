"""YAML + ``a.b=value`` overrides -> a typed dataclass: the reader shared by every training stage's config."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml

from ..errors import InputError


def read_config_dict(path: str | Path | None, overrides: list[str] = (), what: str = "training config") -> dict:
    """The YAML mapping at ``path`` (empty without one) with each ``a.b=value`` override applied (YAML-typed); a
    number steps into a list (``datasets.1.rate=0.5``: the second dataset entry's rate)."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{what} {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path} should hold a mapping of settings, not a {type(raw).__name__}")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise InputError(f"override {override!r} should look like key=value (e.g. lr=1e-4)")
        target = raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if isinstance(target, list):
                if not part.isdigit() or int(part) >= len(target):
                    raise InputError(f"override {override!r}: {'.'.join(parts[:depth])} is a list of {len(target)}; "
                                     f"give an index from 0 to {len(target) - 1}")
                part = int(part)
            elif not isinstance(target, dict):
                raise InputError(f"override {override!r}: {'.'.join(parts[:depth])} is a single value, not a mapping")
            if depth == len(parts) - 1:
                target[part] = yaml.safe_load(value)
            else:
                target = target.setdefault(part, {}) if isinstance(target, dict) else target[part]
    return raw


def build_flat_dataclass(cls, raw: dict, what: str):
    """``cls(**raw)`` after rejecting unknown keys and turning numeric strings ("1e-4") into the field's type.

    Nested mappings are kept as they are (fields holding free-form dicts, such as model configs).
    """
    if not is_dataclass(cls):
        raise TypeError(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"unknown {what} keys: {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    defaults = cls()
    values = dict(raw)
    for name, value in raw.items():
        default = getattr(defaults, name)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(f"{what} {name}: {value!r} is not a number")
        try:
            values[name] = type(default)(float(value)) if isinstance(value, str) else type(default)(value)
        except ValueError:
            raise InputError(f"{what} {name}: {value!r} is not a number") from None
    return cls(**values)
