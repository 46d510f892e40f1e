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


# --- declared bounds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundedInner:
    """Nested bounded settings."""

    weight: float = option(1.0, "a weight", ge=0)


@dataclass(frozen=True)
class Bounded:
    """Settings with declared bounds."""

    lr: float = option(1e-3, "positive", gt=0)
    gamma: float = option(0.99, "a discount", gt=0, le=1)
    dropout: float = option(0.0, "a probability", ge=0, lt=1)
    count: int = option(1, "at least one", ge=1)
    shift: float = option(0.0, "any finite number")
    cap: float = option(float("inf"), "may be infinite", gt=0, allow_inf=True)
    clip: float | None = option(None, "positive or none", gt=0)
    widths: tuple[int, ...] = option((4, 4), "widths", ge=1, nonempty=True)
    dims: tuple[int, ...] = option((), "may be empty", ge=0)
    inner: BoundedInner = nested(BoundedInner, "inner")


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("lr", "0", "--set lr=0: lr must be > 0."),
        ("lr", "-1", "--set lr=-1: lr must be > 0."),
        ("lr", "nan", "--set lr=nan: lr must be a number, not nan."),
        ("lr", "inf", "--set lr=inf: lr must be finite."),
        ("gamma", "1.5", "--set gamma=1.5: gamma must lie in (0, 1]."),
        ("gamma", "0", "--set gamma=0: gamma must lie in (0, 1]."),
        ("dropout", "1", "--set dropout=1: dropout must lie in [0, 1)."),
        ("dropout", "-0.1", "--set dropout=-0.1: dropout must lie in [0, 1)."),
        ("count", "0", "--set count=0: count must be >= 1."),
        ("shift", "-inf", "--set shift=-inf: shift must be finite."),
        ("shift", "nan", "--set shift=nan: shift must be a number, not nan."),
        ("cap", "nan", "--set cap=nan: cap must be a number, not nan."),
        ("clip", "0", "--set clip=0: clip must be > 0."),
        ("widths", "0,-3", "--set widths=0,-3: each value of widths must be >= 1."),
        ("widths", "", "--set widths=: widths must hold at least one value."),
        ("dims", "-1", "--set dims=-1: each value of dims must be >= 0."),
        ("inner.weight", "-2", "--set inner.weight=-2: inner.weight must be >= 0."),
    ],
)
def test_set_values_out_of_bounds_are_one_sentence(key: str, raw: str, message: str) -> None:
    with pytest.raises(ToolkitError) as err:
        apply_overrides(Bounded(), {key: raw})
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("key", "raw"),
    [("lr", "1e-9"), ("gamma", "1"), ("dropout", "0"), ("count", "1"), ("shift", "-5"), ("cap", "inf"),
     ("cap", "1"), ("clip", "none"), ("clip", "0.5"), ("widths", "1"), ("dims", ""), ("inner.weight", "0")],
)
def test_values_on_the_right_side_of_a_bound_pass(key: str, raw: str) -> None:
    validate(apply_overrides(Bounded(), {key: raw}))


def test_yaml_values_are_bound_checked_and_name_the_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("gamma: 2\ninner:\n  weight: -1\n")
    with pytest.raises(ToolkitError) as err:
        apply_overrides(Bounded(), load_yaml_overrides(path), source=str(path))
    assert str(err.value) == f"{path}: gamma=2: gamma must lie in (0, 1]."
    path.write_text("widths: [8, 0]\n")
    with pytest.raises(ToolkitError, match=r"widths=8,0: each value of widths must be >= 1\.$"):
        apply_overrides(Bounded(), load_yaml_overrides(path), source=str(path))


def test_saved_configs_are_bound_checked() -> None:
    with pytest.raises(ToolkitError, match=r"^saved config: lr=-1.0: lr must be > 0\.$"):
        from_dict(Bounded, {**to_dict(Bounded()), "lr": -1.0})
    with pytest.raises(ToolkitError, match=r"inner.weight=nan: inner.weight must be a number, not nan\.$"):
        from_dict(Bounded, {"inner": {"weight": float("nan")}})


def test_values_that_bypass_overrides_are_caught_by_validate() -> None:
    # a bad default or a config built in Python never went through apply_overrides
    with pytest.raises(ToolkitError, match=r"^Invalid config: widths=4,0: each value of widths must be >= 1\.$"):
        validate(Bounded(widths=(4, 0)))
    with pytest.raises(ToolkitError, match=r"^Invalid config: inner.weight=-1.0: inner.weight must be >= 0\.$"):
        validate(Bounded(inner=BoundedInner(weight=-1.0)))
    with pytest.raises(ToolkitError, match=r"shift=inf: shift must be finite"):
        validate(Bounded(shift=float("inf")))
    validate(Bounded())


def test_check_fields_raises_value_error_for_direct_builders() -> None:
    from toolkit.config import check_fields

    with pytest.raises(ValueError, match=r"^count=0: count must be >= 1$"):
        check_fields(Bounded(count=0))
    check_fields(Bounded())


def test_describe_shows_bounds() -> None:
    shown = {info.key: info.bounds_text for info in describe(Bounded)}
    assert shown["lr"] == "> 0"
    assert shown["gamma"] == "in (0, 1]"
    assert shown["dropout"] == "in [0, 1)"
    assert shown["count"] == ">= 1"
    assert shown["shift"] == ""
    assert shown["cap"] == "> 0, inf allowed"
    assert shown["widths"] == "each >= 1, non-empty"
    assert shown["inner.weight"] == ">= 0"


# --- bounds on the shipped agents and models ----------------------------------------------------


def _all_specs():
    from toolkit.registry import registry

    from toolkit.registry import AGENTS, MODELS

    specs = [registry.agent(name) for name in registry.names(AGENTS)]
    specs += [registry.model(name) for name in registry.names(MODELS)]
    assert {"sac", "dqn", "ppo", "bc", "vae", "world-model"} <= {spec.name for spec in specs}
    return specs


def test_every_default_config_is_in_bounds_and_valid() -> None:
    from toolkit.config import check_bounds

    for spec in _all_specs():
        config = spec.config()
        check_bounds(config)
        validate(config)


def test_subclasses_keep_the_bounds_of_fields_they_redeclare() -> None:
    """A config that redeclares a field (a new default) must repeat its base's bounds (or tighten them)."""
    from dataclasses import fields, is_dataclass

    for spec in _all_specs():
        cls = spec.config
        mine = {f.name: f.metadata.get("bounds") for f in fields(cls)}
        for base in cls.__mro__[1:]:
            if not is_dataclass(base):
                continue
            for f in fields(base):
                theirs = f.metadata.get("bounds")
                if theirs is not None and theirs.text():
                    assert mine[f.name] is not None and mine[f.name].text(), (
                        f"{cls.__name__}.{f.name} drops {base.__name__}'s bounds"
                    )


@pytest.mark.parametrize(
    ("agent", "key", "value", "bound"),
    [
        ("sac", "lr", "-1", "> 0"),
        ("sac", "hidden_sizes", "0,-3", ">= 1"),
        ("sac", "gamma", "2", "in (0, 1]"),
        ("dqn", "exploration_final_eps", "1.5", "in [0, 1]"),
        ("ppo", "epochs", "0", ">= 1"),
        ("sac-icm", "curiosity.return_gamma", "1", "in [0, 1)"),
        ("bc", "hidden_sizes", "", "at least one value"),
        ("vae", "kl_samples", "0", ">= 1"),
        ("world-model", "grad_clip", "-1", ">= 0"),
    ],
)
def test_config_bounds_of_shipped_learners(agent: str, key: str, value: str, bound: str) -> None:
    from toolkit.registry import registry

    with pytest.raises(ToolkitError) as err:
        apply_overrides(registry.learner(agent).config(), {key: value})
    message = str(err.value)
    assert message.startswith(f"--set {key}={value}: ") and bound in message and message.count(".") <= 3


def test_off_policy_buffer_must_hold_a_batch() -> None:
    from toolkit.registry import registry

    config = apply_overrides(registry.agent("sac").config(), {"buffer_size": "10", "batch_size": "256"})
    with pytest.raises(ToolkitError, match="buffer_size=10 cannot hold a batch of 256"):
        validate(config)


# --- the CLI: bad values end in one sentence, nothing written ----------------------------------


def _refused(result, *fragments: str) -> None:
    from conftest import assert_clean_error

    assert_clean_error(result, *fragments)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) <= 3, result.output  # one sentence, possibly wrapped by the console


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("lr=-1", "--set lr=-1: lr must be > 0."),
        ("lr=nan", "--set lr=nan: lr must be a number, not nan."),
        ("lr=inf", "--set lr=inf: lr must be finite."),
        ("hidden_sizes=0,-3", "--set hidden_sizes=0,-3: each value of hidden_sizes must be >= 1."),
        ("buffer_size=10", "buffer_size=10 cannot hold a batch of 256"),
    ],
)
def test_cli_refuses_bad_settings(cli, tmp_path, setting: str, fragment: str) -> None:
    run_dir = tmp_path / "run"
    result = cli("train", "sac", "--env", "Pendulum-v1", "--steps", "10", "--set", setting, "--run-dir", run_dir)
    _refused(result, fragment)
    assert not run_dir.exists()


def test_cli_refuses_bad_yaml_values(cli, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tau: 0\n")
    run_dir = tmp_path / "run"
    result = cli("train", "sac", "--env", "Pendulum-v1", "--steps", "10", "--config", config, "--run-dir", run_dir)
    _refused(result, "tau=0: tau must lie in (0, 1].")
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("option_", "value", "fragment"),
    [
        ("--eval-every", "-1", "--eval-every must be 0"),
        ("--log-every", "0", "--log-every must be a positive number of steps, got 0."),
        ("--checkpoint-every", "-5", "--checkpoint-every must be 0"),
        ("--eval-episodes", "0", "--eval-episodes must be at least 1, got 0."),
    ],
)
def test_cli_refuses_bad_loop_options(cli, tmp_path, option_: str, value: str, fragment: str) -> None:
    run_dir = tmp_path / "run"
    result = cli("train", "sac", "--env", "Pendulum-v1", "--steps", "10", option_, value, "--run-dir", run_dir)
    _refused(result, fragment)
    assert not run_dir.exists()


def test_cli_describe_shows_bounds(cli) -> None:
    result = cli("describe", "sac")
    assert result.exit_code == 0, result.output
    assert "bounds" in result.output and "in (0, 1]" in result.output and "each >= 1" in result.output
