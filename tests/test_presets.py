"""Per-env presets of an agent's spec: `toolkit train --preset`, `toolkit describe --env`."""

from __future__ import annotations

import dataclasses

import yaml

from conftest import assert_clean_error
from toolkit.registry import registry
from toolkit.session import build_config


def _spec_with_preset():
    """dqn with a made-up preset for CartPole-v1, independent of the one the plugin ships."""
    preset = {"settings": {"lr": 5e-4, "batch_size": 32, "hidden_sizes": (32,)}, "return": 123.0, "command": "x"}
    return dataclasses.replace(registry.agent("dqn"), presets={"CartPole-v1": preset})


def test_preset_sits_between_defaults_and_the_config_file_and_set(tmp_path):
    spec = _spec_with_preset()
    defaults = build_config(spec)
    config = build_config(spec, preset="CartPole-v1")
    assert (config.lr, config.batch_size, config.hidden_sizes) == (5e-4, 32, (32,))
    assert config.gamma == defaults.gamma  # a key the preset leaves alone keeps its default
    file = tmp_path / "c.yaml"
    file.write_text("batch_size: 16\nlr: 2e-4\n")
    config = build_config(spec, file, ["lr=1e-4"], preset="CartPole-v1")
    assert (config.lr, config.batch_size, config.hidden_sizes) == (1e-4, 16, (32,))  # --set > file > preset
    assert build_config(spec).lr == defaults.lr  # no preset unless asked for


def test_train_with_preset_records_resolved_values_and_the_preset(cli, tmp_path):
    preset = registry.agent("dqn").preset("CartPole-v1")["settings"]
    run = tmp_path / "run"
    result = cli("train", "dqn", "--env", "CartPole-v1", "--preset", "--set", "lr=1e-3", "--steps", "200",
                 "--no-progress", "--device", "cpu", "--run-dir", run, "--checkpoint-every", "0")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preset"] == "CartPole-v1"
    config = saved["agent_config"]
    assert config["lr"] == 1e-3  # --set beats the preset
    assert config["lr_final"] == preset["lr_final"]
    assert list(config["hidden_sizes"]) == list(preset["hidden_sizes"])


def test_train_without_preset_records_none(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "dqn", "--env", "CartPole-v1", "--steps", "100", "--no-progress", "--device", "cpu",
                 "--run-dir", run, "--checkpoint-every", "0")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preset"] is None
    assert saved["agent_config"]["train_every"] == registry.agent("dqn").config().train_every


def test_missing_preset_is_one_sentence_naming_the_envs_that_have_one(cli, tmp_path):
    result = cli("train", "dqn", "--env", "Acrobot-v1", "--preset", "--steps", "100", "--no-progress",
                 "--run-dir", tmp_path / "run")
    assert_clean_error(result, "no preset for Acrobot-v1", "CartPole-v1")
    assert not (tmp_path / "run").exists()
    assert_clean_error(cli("describe", "dqn", "--env", "Acrobot-v1"), "no preset for Acrobot-v1", "CartPole-v1")


def test_describe_env_shows_the_preset(cli):
    preset = registry.agent("dqn").preset("CartPole-v1")
    result = cli("describe", "dqn", "--env", "CartPole-v1")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Preset for CartPole-v1" in text
    assert "hidden_sizes" in text and "256" in text
    assert preset["command"] in text
    if preset["return"] is not None:
        assert str(preset["return"]) in text
    assert "Preset" not in " ".join(cli("describe", "dqn").output.split())
