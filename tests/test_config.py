"""Typed config overrides: --set strings, YAML values, nested keys and their errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from toolkit.config import (
    apply_overrides,
    describe,
    from_dict,
    load_yaml_overrides,
    nested,
    option,
    parse_set_options,
    to_dict,
    validate,
)
from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class Inner:
    """Nested settings."""

    eta: float = option(1.0, "scale")
    mode: Literal["mse", "gaussian"] = option("mse", "loss")


@dataclass(frozen=True)
class Example:
    """Top-level settings."""

    lr: float = option(3e-4, "learning rate")
    steps: int = option(10, "steps")
    flag: bool = option(True, "a switch")
    sizes: tuple[int, ...] = option((256, 256), "widths")
    target: float | None = option(None, "optional")
    inner: Inner = nested(Inner, "inner settings")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def test_strings_are_coerced_to_field_types() -> None:
    cfg = apply_overrides(
        Example(),
        parse_set_options(["lr=1e-3", "steps=1e3", "flag=false", "sizes=64,32", "target=-2.5", "inner.eta=0.5", "inner.mode=gaussian"]),
    )
    assert cfg.lr == 1e-3 and cfg.steps == 1000 and cfg.flag is False
    assert cfg.sizes == (64, 32) and cfg.target == -2.5
    assert cfg.inner == Inner(eta=0.5, mode="gaussian")
    assert apply_overrides(cfg, {"target": "none"}).target is None


def test_unknown_key_lists_valid_keys_and_suggests() -> None:
    with pytest.raises(ToolkitError) as err:
        apply_overrides(Example(), {"lrr": "1"})
    message = str(err.value)
    assert "'lrr'" in message and "Did you mean 'lr'" in message
    assert "inner.eta" in message and "sizes" in message  # the valid keys are listed


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", "fast"), ("steps", "2.5"), ("flag", "maybe"), ("sizes", "a,b"), ("inner.mode", "huber")],
)
def test_wrong_value_type_names_the_expected_type(key: str, value: str) -> None:
    with pytest.raises(ToolkitError, match=f"'{key}' expects"):
        apply_overrides(Example(), {key: value})


def test_set_without_equals_is_rejected() -> None:
    with pytest.raises(ToolkitError, match="key=value"):
        parse_set_options(["lr"])


def test_yaml_file_nested_and_exponent_strings(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-3\ninner:\n  eta: 2\n")  # PyYAML reads 3e-3 as a string
    cfg = apply_overrides(Example(), load_yaml_overrides(path))
    assert cfg.lr == pytest.approx(3e-3) and cfg.inner.eta == 2.0


def test_yaml_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ToolkitError, match="does not exist"):
        load_yaml_overrides(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ToolkitError, match="not valid YAML"):
        load_yaml_overrides(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ToolkitError, match="mapping"):
        load_yaml_overrides(listed)


def test_round_trip_through_dict_and_describe() -> None:
    cfg = apply_overrides(Example(), {"sizes": "8", "inner.eta": "3"})
    assert from_dict(Example, to_dict(cfg)) == cfg
    keys = [f.key for f in describe(Example)]
    assert keys == ["lr", "steps", "flag", "sizes", "target", "inner.eta", "inner.mode"]
    assert all(f.help for f in describe(Example))


def test_validate_turns_value_errors_into_user_errors() -> None:
    with pytest.raises(ToolkitError, match="lr must be positive"):
        validate(apply_overrides(Example(), {"lr": "-1"}))
