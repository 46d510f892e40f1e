"""Runs end to end: the flagship journey on Hopper, exact resume, Ctrl-C, atomic checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.runs import CHECKPOINT, read_metrics

TOOLKIT = [sys.executable, "-m", "toolkit.cli"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOLKIT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_flagship_journey_on_hopper(tmp_path: Path) -> None:
    """The acceptance commands: train sac-icm on Hopper-v4, evaluate, resume."""
    run = tmp_path / "hopper"
    train = run_cli("train", "sac-icm", "--env", "Hopper-v4", "--steps", "3000", "--seed", "1", "--run-dir", run,
                    "--no-progress", "--set", "learning_starts=2900", "--set", "batch_size=64",
                    # small networks: this checks the journey; learning is checked in test_learning.py
                    "--set", "hidden_sizes=64,64", "--set", "curiosity.hidden_size=64")
    assert train.returncode == 0, train.stderr
    assert (run / CHECKPOINT).is_file()
    train_records = read_metrics(run, "train")
    assert train_records[-1]["updates"] == 101  # one update per step from step 2900 on
    for key in ("extrinsic_reward", "intrinsic_reward", "icm_forward_loss", "critic_loss"):
        assert key in train_records[-1]

    evaluation = run_cli("eval", run, "--episodes", "2")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "over 2 episodes" in evaluation.stdout
    assert json.loads((run / "eval" / "step-3000.json").read_text())["episodes"] == 2

    resume = run_cli("resume", run, "--steps", "4000", "--no-progress")
    assert resume.returncode == 0, resume.stderr
    assert "Trained 4000 steps" in resume.stdout
    assert read_metrics(run, "train")[-1]["updates"] == 1101


def _curve(run: Path) -> list[dict]:
    records = read_metrics(run)
    for r in records:
        r.pop("steps_per_second", None)
    return records


def test_interrupted_and_resumed_run_follows_the_same_curve(cli, tmp_path: Path) -> None:
    """On CPU with one seed, stop-and-resume (mid-episode) reproduces an uninterrupted run."""
    common = ["--set", "learning_starts=200", "--set", "batch_size=32", "--set", "hidden_sizes=64,64",
              "--set", "curiosity.frame_stack=2", "--no-progress", "--log-every", "100", "--eval-every", "250",
              "--eval-episodes", "1", "--seed", "3"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", "sac-icm", "--env", "Pendulum-v1", "--steps", "750", "--run-dir", whole, *common).exit_code == 0
    assert cli("train", "sac-icm", "--env", "Pendulum-v1", "--steps", "330", "--run-dir", parts, *common).exit_code == 0
    assert cli("resume", parts, "--steps", "560", "--no-progress").exit_code == 0
    assert cli("resume", parts, "--steps", "750", "--no-progress").exit_code == 0
    a, b = _curve(whole), _curve(parts)
    assert len(a) == len(b) and any(r["kind"] == "eval" for r in a)
    assert a == b


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [*TOOLKIT, "train", "sac", "--env", "Pendulum-v1", "--steps", "1000000", "--run-dir", str(run), "--no-progress",
         "--set", "learning_starts=100", "--set", "batch_size=32", "--checkpoint-every", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or "episode" not in (run / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "toolkit resume" in out
    resumed = run_cli("resume", run, "--steps", "600", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A crash while writing leaves the previous checkpoint intact."""
    import torch

    from toolkit.runs import load_checkpoint, save_checkpoint

    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"counters": {"step": 1}})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"counters": {"step": 2}})
    assert load_checkpoint(path)["counters"]["step"] == 1
    shutil.rmtree(tmp_path)
