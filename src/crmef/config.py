"""Dataclass configs filled from YAML files and ``--set a.b=value`` overrides.

A config is a (possibly nested) dataclass. :func:`load_config` reads a YAML mapping, applies
dotted overrides, and builds the dataclass, coercing values to the annotated field types
(``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, unions, ``list[...]``,
``tuple[..., ...]``, ``dict[...]``, ``Literal[...]`` and nested dataclasses). Unknown keys and
values that cannot be coerced raise :class:`~crmef.errors.ConfigError` naming the dotted key
(and the file), before any work starts.

Example::

    @dataclass
    class Optim:
        lr: float = 3e-4

    @dataclass
    class Run:
        optim: Optim = field(default_factory=Optim)
        steps: int = 10

    cfg = load_config(Run, "run.yaml", ["optim.lr=1e-3", "steps=5"])
    print(dump_config(cfg))  # resolved YAML, for the run directory
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from crmef.errors import ConfigError

T = TypeVar("T")

__all__ = ["load_config", "from_dict", "to_dict", "dump_config", "parse_overrides", "apply_overrides"]


def parse_overrides(overrides: Sequence[str] | None) -> list[tuple[str, Any]]:
    """Parse ``["a.b=1", "c=[x, y]"]`` into ``[("a.b", 1), ("c", ["x", "y"])]``.

    Values are parsed as YAML scalars/flow collections (``1e-3`` → float, ``true`` → bool,
    ``null`` → None, ``[a, b]`` → list); anything unparsable stays a string.

    Raises:
        ConfigError: an override without ``=`` or with an empty key.
    """
    out: list[tuple[str, Any]] = []
    for text in overrides or []:
        if "=" not in text:
            raise ConfigError(f"override {text!r} must look like key=value (e.g. search.eta=0.5)")
        key, raw = text.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {text!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] | None) -> dict[str, Any]:
    """Return a copy of the nested mapping ``data`` with dotted overrides set."""
    data = _deep_copy(data)
    for key, value in parse_overrides(overrides):
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping at the top level, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | None = None,
) -> T:
    """Build the dataclass ``cls`` from a YAML file plus dotted overrides.

    Args:
        cls: a dataclass type (fields may be nested dataclasses).
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``"a.b=value"`` strings applied after the file.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type (the message names
            the dotted key and the file).
    """
    data = _read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, coercing values to the field types.

    Raises:
        ConfigError: unknown keys or values that do not fit their field's type.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints.get(name, Any), key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` to the annotation ``tp`` (raises ConfigError naming ``key``)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (types.UnionType is not None and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        # Try exact-type matches first so "bool | Cfg" keeps a bool and "int | None" keeps an int.
        members = [a for a in args if a is not type(None)]
        for member in members:
            if isinstance(member, type) and not dataclasses.is_dataclass(member) and type(value) is member:
                return value
        for member in members:
            try:
                return _coerce(value, member, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: value {value!r} does not fit {_type_name(tp)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{key}.{k}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, type):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> Any:
    """A plain (YAML/JSON-ready) nested dict of a dataclass config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text (loadable again with :func:`load_config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
