"""Configuration as frozen dataclasses, and typed overrides from the command line or YAML.

An agent's config is a frozen dataclass whose fields carry their own documentation::

    @dataclass(frozen=True)
    class MyConfig:
        lr: float = option(3e-4, "Adam learning rate.")

Nested dataclasses are addressed with dots (``--set curiosity.eta=0.5``). Every override is
checked against the field's type; an unknown key lists the valid ones.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import ToolkitError, did_you_mean

C = TypeVar("C")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text shown by ``toolkit describe``."""
    if isinstance(default, (list, dict, set)) or is_dataclass(default):
        value = default
        return field(default_factory=lambda: value, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def nested(cls: type, help: str) -> Any:
    """A field holding another config dataclass, built with its defaults."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class FieldInfo:
    """One (possibly nested) config field, as listed by ``toolkit describe``."""

    key: str
    type: Any
    default: Any
    help: str

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def describe(config_cls_or_obj: Any, prefix: str = "") -> list[FieldInfo]:
    """Flatten a config dataclass into dotted keys with types, values and help."""
    cls = config_cls_or_obj if isinstance(config_cls_or_obj, type) else type(config_cls_or_obj)
    obj = config_cls_or_obj if not isinstance(config_cls_or_obj, type) else cls()
    hints = typing.get_type_hints(cls)
    out: list[FieldInfo] = []
    for f in fields(cls):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if is_dataclass(hint):
            out.extend(describe(value, prefix + f.name + "."))
        else:
            out.append(FieldInfo(prefix + f.name, hint, value, f.metadata.get("help", "")))
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain nested dicts and lists, ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {
        f.name: to_dict(getattr(config, f.name)) if is_dataclass(getattr(config, f.name)) else plain(getattr(config, f.name))
        for f in fields(config)
    }


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(config: C, overrides: Mapping[str, Any], source: str = "--set") -> C:
    """Return ``config`` with dotted ``overrides`` applied, each value checked against its type."""
    valid = {info.key: info for info in describe(config)}
    for key, raw in overrides.items():
        if key not in valid:
            raise ToolkitError(
                f"{source}: '{key}' is not a setting of {type(config).__name__}.{did_you_mean(key, valid)} "
                f"Valid keys: {', '.join(sorted(valid))}."
            )
        value = coerce(raw, valid[key].type, key, source)
        config = _replace_dotted(config, key.split("."), value)
    return config


def parse_set_options(items: Iterable[str]) -> dict[str, str]:
    """Turn repeated ``--set key=value`` strings into a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ToolkitError(f"--set expects key=value, got '{item}'.")
        out[key.strip()] = value.strip()
    return out


def load_yaml_overrides(path: Path) -> dict[str, Any]:
    """Read a YAML file of settings; a run's own ``config.yaml`` works too."""
    import yaml

    if not path.is_file():
        raise ToolkitError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ToolkitError(f"Config file {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise ToolkitError(f"Config file {path} must hold a mapping of setting: value, not {type(data).__name__}.")
    for key in ("agent_config", "model_config"):  # a run's resolved config
        if data.get(key) and isinstance(data[key], dict):
            data = data[key]
            break
    return flatten(data)


def validate(config: Any) -> None:
    """Call the config's ``validate()`` if it defines one, turning ValueError into a user error."""
    check = getattr(config, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ToolkitError(f"Invalid config: {exc}") from None


# --- type coercion -------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"tuple of {_type_name(args[0])}" if args else "tuple"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(raw: Any, tp: Any, key: str, source: str = "--set") -> Any:
    """Convert ``raw`` (a string from the CLI or a YAML value) to type ``tp`` or explain why not."""
    try:
        return _coerce(raw, tp)
    except (TypeError, ValueError):
        raise ToolkitError(f"{source}: '{key}' expects {_type_name(tp)}, got {raw!r}.") from None


def _coerce(raw: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null", ""})):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(raw, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(raw)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if raw == choice or (isinstance(raw, str) and str(choice) == raw):
                return choice
        raise ValueError(raw)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp) or (str,)
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(_coerce(x.strip() if isinstance(x, str) else x, item_tp) for x in items if x != "")
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(raw)
    if tp is int:
        if isinstance(raw, bool):
            raise TypeError(raw)
        if isinstance(raw, int):
            return raw
        value = float(raw)  # accepts "1e6"
        if not value.is_integer():
            raise ValueError(raw)
        return int(value)
    if tp is float:
        if isinstance(raw, bool):
            raise TypeError(raw)
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise TypeError(raw)
        return raw
    raise TypeError(f"unsupported config type {tp}")


def _replace_dotted(config: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    if not rest:
        return replace(config, **{head: value})
    return replace(config, **{head: _replace_dotted(getattr(config, head), rest, value)})


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config saved with :func:`to_dict` (checked like any override)."""
    return apply_overrides(cls(), flatten(data), source="saved config")


__all__ = [
    "FieldInfo",
    "apply_overrides",
    "coerce",
    "describe",
    "flatten",
    "from_dict",
    "load_yaml_overrides",
    "nested",
    "option",
    "parse_set_options",
    "to_dict",
    "validate",
]
