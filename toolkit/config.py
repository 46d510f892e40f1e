"""Configuration as frozen dataclasses, and typed overrides from the command line or YAML.

An agent's config is a frozen dataclass whose fields carry their own documentation::

    @dataclass(frozen=True)
    class MyConfig:
        lr: float = option(3e-4, "Adam learning rate.")

Nested dataclasses are addressed with dots (``--set curiosity.eta=0.5``). Every override is
checked against the field's type; an unknown key lists the valid ones.

Bounds are declared on the field and checked for every value, however it arrives (defaults, a
YAML file, ``--set``, a resumed run's ``config.yaml``)::

    lr: float = option(3e-4, "Adam learning rate.", gt=0)
    gamma: float = option(0.99, "Discount factor.", gt=0, le=1)
    hidden_sizes: tuple[int, ...] = option((256, 256), "Hidden widths.", ge=1, nonempty=True)

On a tuple the bounds hold for each element. Floats must be finite (nan never passes) unless
the field says ``allow_inf=True``. A config's own ``validate()`` is left with rules that tie
several fields together.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import ToolkitError, did_you_mean

C = TypeVar("C")


@dataclass(frozen=True)
class Bounds:
    """The range a config field's value (each element, for a tuple) must lie in."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    allow_inf: bool = False
    nonempty: bool = False
    #: Why the bound holds, added to the message that refuses a value (``batch norm needs a batch``).
    reason: str | None = None

    def text(self) -> str:
        """The bounds as a user reads them: ``> 0``, ``in (0, 1]``, ``>= 1``."""
        low = (f"({_num(self.gt)}" if self.gt is not None else f"[{_num(self.ge)}" if self.ge is not None else None)
        high = (f"{_num(self.lt)})" if self.lt is not None else f"{_num(self.le)}]" if self.le is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if self.gt is not None else '>='} {low[1:]}"
        if high:
            return f"{'<' if self.lt is not None else '<='} {high[:-1]}"
        return ""

    def summary(self, is_sequence: bool = False) -> str:
        """What ``toolkit describe`` shows: ``> 0``, ``each >= 1, non-empty``, ``any float``."""
        parts = []
        if self.text():
            parts.append(("each " if is_sequence else "") + self.text())
        if self.nonempty:
            parts.append("non-empty")
        if self.allow_inf:
            parts.append("inf allowed")
        return ", ".join(parts)

    def problem(self, key: str, value: Any) -> str | None:
        """Why ``value`` breaks these bounds, in words that end a sentence; None if it does not."""
        why = self._problem(key, value)
        return f"{why} ({self.reason})" if why and self.reason else why

    def _problem(self, key: str, value: Any) -> str | None:
        if value is None or isinstance(value, (bool, str)):
            return None
        if isinstance(value, tuple):
            if self.nonempty and not value:
                return f"{key} must hold at least one value"
            for item in value:
                why = self._scalar_problem(item)
                if why:
                    return f"each value of {key} {why}"
            return None
        why = self._scalar_problem(value)
        return f"{key} {why}" if why else None

    def _scalar_problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and math.isnan(value):
            return "must be a number, not nan"
        if isinstance(value, float) and math.isinf(value) and not self.allow_inf:
            return "must be finite"
        ok = (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )
        if ok:
            return None
        text = self.text()
        return f"must lie {text}" if text.startswith("in ") else f"must be {text}"


NO_BOUNDS = Bounds()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def option(
    default: Any,
    help: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    allow_inf: bool = False,
    nonempty: bool = False,
    reason: str | None = None,
) -> Any:
    """A dataclass field with a default, the help text shown by ``toolkit describe`` and its bounds.

    ``gt``/``ge``/``lt``/``le`` bound the value (every element of a tuple) strictly or not;
    ``nonempty`` refuses an empty tuple; floats must be finite unless ``allow_inf`` (nan never).
    ``reason`` says why, in the message that refuses a value.
    """
    bounds = Bounds(gt, ge, lt, le, allow_inf, nonempty, reason)
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict, set)) or is_dataclass(default):
        value = default
        return field(default_factory=lambda: value, metadata=metadata)
    return field(default=default, metadata=metadata)


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
    bounds: Bounds = NO_BOUNDS

    @property
    def type_name(self) -> str:
        return _type_name(self.type)

    @property
    def bounds_text(self) -> str:
        """The field's bounds as ``toolkit describe`` shows them ('' when unbounded)."""
        return self.bounds.summary(is_sequence=typing.get_origin(self.type) is tuple)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of this field's bounds (a sentence without its full stop), or None."""
        return self.bounds.problem(self.key, value)


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
            out.append(FieldInfo(prefix + f.name, hint, value, f.metadata.get("help", ""),
                                 f.metadata.get("bounds", NO_BOUNDS)))
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
        why = valid[key].problem(value)
        if why:
            shown = raw if isinstance(raw, str) else _show(raw)
            where = f"--set {key}={shown}: " if source == "--set" else f"{source}: {key}={shown}: "
            raise ToolkitError(f"{where}{why}.")
        config = _replace_dotted(config, key.split("."), value)
    return config


def bounds_problem(config: Any) -> str | None:
    """The first field of ``config`` (nested ones too) out of its declared bounds, or a float
    that is nan or an infinity the field does not allow, as ``key=value: why``; None if all fit."""
    for info in describe(config):
        why = info.problem(info.default)  # describe() of an instance reports its current values
        if why:
            return f"{info.key}={_show(info.default)}: {why}"
    return None


def check_bounds(config: Any) -> None:
    """Raise a one-sentence ToolkitError if a field of ``config`` breaks its declared bounds."""
    problem = bounds_problem(config)
    if problem:
        raise ToolkitError(f"Invalid config: {problem}.")


def check_fields(config: Any) -> None:
    """Raise ValueError if a field of ``config`` breaks its declared bounds. A config's own
    ``validate()`` calls this first, so code that builds a learner straight from a config
    object (not through the CLI) is held to the same bounds."""
    problem = bounds_problem(config)
    if problem:
        raise ValueError(problem)


def _show(value: Any) -> str:
    """A value as it would be typed after ``--set key=``."""
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    return str(value)


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
    """Check every field's bounds, then call the config's ``validate()`` (its cross-field rules)
    if it defines one, turning ValueError into a user error."""
    check_bounds(config)
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
    config = apply_overrides(cls(), flatten(data), source="saved config")
    check_bounds(config)
    return config


__all__ = [
    "Bounds",
    "FieldInfo",
    "apply_overrides",
    "bounds_problem",
    "check_bounds",
    "check_fields",
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
