"""The command line: every bad input ends in one clear sentence, a non-zero exit, no traceback,
and nothing already on disk is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error

from toolkit.runs import CHECKPOINT

FAST = ["--set", "learning_starts=100", "--set", "batch_size=32", "--set", "hidden_sizes=32,32",
        "--no-progress", "--log-every", "100"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished short run on Pendulum shared by the read-only tests."""
    from typer.testing import CliRunner

    from toolkit.cli import app

    run_dir = tmp_path_factory.mktemp("runs") / "pendulum"
    result = CliRunner().invoke(app, ["train", "sac", "--env", "Pendulum-v1", "--steps", "300", "--run-dir", str(run_dir), *FAST])
    assert result.exit_code == 0, result.output
    return run_dir


def test_list_shows_first_party_agents(cli) -> None:
    result = cli("list")
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if "-policy" in line or "offline" in line]
    assert any("sac " in r and "toolkit-rl" in r and "off-policy" in r and "ok" in r for r in rows)
    assert any("sac-icm" in r and "toolkit-rl" in r for r in rows)
    for name in ("dqn", "reinforce", "a2c", "ppo", "bc", "decision-lstm", "decision-transformer"):
        assert any(f" {name} " in r and "ok" in r for r in rows), name


def test_describe_lists_fields_with_defaults(cli) -> None:
    result = cli("describe", "sac-icm")
    assert result.exit_code == 0
    text = result.output
    for key in ("batch_size", "learning_starts", "curiosity.", "0.005"):
        assert key in text


def test_unknown_agent_suggests(cli, tmp_path) -> None:
    assert_clean_error(cli("train", "sacc", "--env", "Pendulum-v1", "--run-dir", tmp_path / "r"), "Unknown agent or model 'sacc'", "Did you mean 'sac'")
    assert_clean_error(cli("describe", "sca"), "Unknown agent", "'sac'")
    assert not (tmp_path / "r").exists()


def test_unknown_env_suggests(cli, tmp_path) -> None:
    assert_clean_error(cli("train", "sac", "--env", "Hoper-v4", "--run-dir", tmp_path / "r"), "Unknown environment 'Hoper-v4'", "Hopper-v4")
    assert not (tmp_path / "r").exists()


def test_unknown_config_key_lists_valid_ones(cli, tmp_path) -> None:
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--set", "lrr=0.1"), "'lrr' is not a setting", "Did you mean 'lr'", "batch_size")


def test_wrong_value_type(cli) -> None:
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--set", "lr=fast"), "'lr' expects float, got 'fast'")
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--set", "gamma=2"), "gamma must lie in (0, 1]")


def test_bad_config_file(cli, tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: many\n")
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--config", path), "'batch_size' expects int")
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--config", tmp_path / "none.yaml"), "does not exist")


def test_continuous_agent_on_discrete_env(cli, tmp_path) -> None:
    assert_clean_error(
        cli("train", "sac", "--env", "CartPole-v1", "--run-dir", tmp_path / "r"),
        "Agent 'sac' needs box actions, but CartPole-v1 has Discrete(2)",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_non_positive_steps(cli, steps: str) -> None:
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--steps", steps), "--steps must be a positive number")


def test_missing_run_dir(cli, tmp_path) -> None:
    for command in ("eval", "resume"):
        assert_clean_error(cli(command, tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(cli("eval", tmp_path / "empty"), "is not a toolkit run")


def test_existing_run_dir_is_never_overwritten(cli, trained_run) -> None:
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*") if p.is_file()}
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--run-dir", trained_run, *FAST), "already exists", "toolkit resume")
    after = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint(cli, trained_run, tmp_path, damage: str) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    ckpt = run / CHECKPOINT
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    for command in (["eval", run], ["resume", run, "--steps", "400"]):
        assert_clean_error(cli(*command), f"Checkpoint {ckpt} is corrupt or truncated")
    assert ckpt.stat().st_size == len({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])


def test_resume_needs_more_steps(cli, trained_run) -> None:
    assert_clean_error(cli("resume", trained_run, "--steps", "200"), "already trained 300 steps")


def test_eval_writes_json_and_video(cli, trained_run) -> None:
    result = cli("eval", trained_run, "--episodes", "2", "--video")
    assert result.exit_code == 0, result.output
    assert "±" in result.output
    out = json.loads((trained_run / "eval" / "step-300.json").read_text())
    assert out["episodes"] == 2 and len(out["returns"]) == 2
    video = trained_run / out["video"]
    assert video.stat().st_size > 1000 and video.read_bytes()[4:8] == b"ftyp"  # an MP4 container


def test_run_dir_layout(trained_run) -> None:
    import yaml

    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["agent"] == "sac" and config["env"] == "Pendulum-v1"
    assert config["agent_config"]["batch_size"] == 32 and config["agent_config"]["hidden_sizes"] == [32, 32]
    kinds = {json.loads(line)["kind"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()}
    assert {"train", "episode"} <= kinds
    assert any((trained_run / "tb").iterdir())
    assert not list(trained_run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_default_run_dir_is_under_runs(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("train", "sac", "--env", "toolkit/PointMass-v0", "--steps", "120", "--seed", "4", *FAST)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs" / "sac" / "toolkit_PointMass-v0").iterdir()
    assert run.name.endswith("-s4") and (run / CHECKPOINT).is_file()


# --- issue 13: every file-system and checkpoint error is one sentence ---------------------------


def test_run_dir_under_a_file(cli, tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert_clean_error(cli("train", "sac", "--env", "Pendulum-v1", "--steps", "120", "--run-dir", afile / "run", *FAST),
                       "Cannot create run directory", f"{afile} is a file, not a directory")


def test_unwritable_run_dir(cli) -> None:
    result = cli("train", "sac", "--env", "Pendulum-v1", "--steps", "120", "--run-dir", "/proc/run", *FAST)
    assert_clean_error(result, "Cannot create run directory /proc/run")
    assert len(result.output.strip().splitlines()) <= 3


def test_corrupt_checkpoint_message_is_ours(cli, trained_run, tmp_path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    ckpt = run / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    result = cli("eval", run)
    assert_clean_error(result, f"Checkpoint {ckpt} is corrupt or truncated", "1000 bytes")
    text = " ".join(result.output.split())
    assert "Pytorch" not in text and "miniz" not in text and text.endswith(").")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_a_disallowed_object(cli, trained_run, tmp_path) -> None:
    import shutil

    import torch

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    ckpt = run / CHECKPOINT
    torch.save({"format": "toolkit-checkpoint", "version": 1, "agent": _Evil()}, ckpt)
    for command in (["eval", run], ["resume", run, "--steps", "400"]):
        result = cli(*command)
        assert_clean_error(result, "holds objects that safe loading", "nothing in it was executed")
        assert "corrupt" not in result.output and "this must never run" not in result.output


def test_eval_best_without_one(cli, trained_run) -> None:
    assert_clean_error(cli("eval", trained_run, "--checkpoint", "best"), "has no best checkpoint", "--eval-every")
    assert_clean_error(cli("eval", trained_run, "--checkpoint", "worst"), "Unknown checkpoint 'worst'")
