"""Build frozen config dataclasses from plain YAML mappings, with errors naming the dotted field.

Used by `grn_jax.config` for every section (data, model, train, mesh) and `grn_jax.data.config`. Types
come from the dataclass annotations: int, float, str, bool, Optional[X],
X | Y, tuple[X, ...], dict and nested dataclasses. Unknown keys are errors
(a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Mapping

import yaml


_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(tp, value, path: str):
    """`value` as type `tp`, or ValueError naming `path`."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{path}: may not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, path)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{path}: {value!r} does not fit {_type_name(tp)} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{path}: expected {len(args)} entries, got {len(value)}")
        return tuple(coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [coerce(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_LITERAL.match(value.strip()):
            return float(value)  # YAML 1.1 reads '1e-4' (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{path}: cannot read a {_type_name(tp)} from {value!r}")


def build(cls, data: Any, path: str):
    """Construct dataclass `cls` from mapping `data`; every error names `path.field`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; {cls.__name__} accepts {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: coerce(hints[k], v, f"{path}.{k}") for k, v in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{path}: required field(s) {missing} not given")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def to_dict(obj) -> Any:
    """A dataclass tree as plain YAML/JSON-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.steps=20' -> (['train', 'steps'], 20); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.field=value (e.g. train.steps=20)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {item!r}: empty component in the dotted key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: value {raw!r} is not valid YAML ({e})") from e
    return parts, value


def apply_overrides(tree: dict, overrides) -> dict:
    """Set each dotted key in a nested dict (creating intermediate mappings); returns a new dict."""
    import copy

    out = copy.deepcopy(tree)
    for item in overrides or ():
        parts, value = parse_override(item)
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out
