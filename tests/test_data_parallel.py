"""Data-parallel offline training on Ray Train workers (``toolkit train ... --workers N``):
learning on the scripted PointMass dataset, replicas that stay equal, Ctrl-C, the run directory
that `toolkit eval` and `toolkit resume` use, exact resume, and clear errors for resources the
cluster does not have. One small local Ray serves the whole session (``ray_session``)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error
from test_offline import ENV, random_policy_return, scripted_dataset
from toolkit.data import save_dataset
from toolkit.distributed.data_parallel import STOP_CHECK_EVERY
from toolkit.runs import CHECKPOINT, load_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")

STEPS = 300
COMMON = ["--env", ENV, "--no-progress", "--workers", "2", "--log-every", "150", "--eval-every", "150",
          "--checkpoint-every", "150", "--eval-episodes", "10", "--set", "context_length=10",
          "--set", "embed_dim=64", "--set", "batch_size=32", "--set", "warmup_steps=50"]


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pointmass-scripted.hdf5"
    save_dataset(scripted_dataset(episodes=120, noise=0.3), path)
    return path


def _records(run: Path, *kinds: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("steps_per_second", None)
    return [r for r in records if r["kind"] in kinds]


def _train(cli, run: Path, dataset: Path, steps: int) -> None:
    result = cli("train", "decision-lstm", "--steps", steps, "--dataset", dataset, "--run-dir", run, *COMMON)
    assert result.exit_code == 0, result.output


def _stopped_and_resumed(cli, run: Path, dataset: Path) -> None:
    """Half the steps, then `toolkit resume` (which trains on two workers again) to the end."""
    _train(cli, run, dataset, STEPS // 2)
    resumed = cli("resume", run, "--steps", STEPS, "--no-progress")
    assert resumed.exit_code == 0, resumed.output


def _ctrl_c_once_logging(run: Path, timeout: float = 300.0) -> None:
    """Press Ctrl-C (SIGINT to this process, as a terminal would) once the run logs training."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.2)


def test_decision_lstm_on_two_workers_learns_stays_in_sync_stops_on_ctrl_c_and_resumes(
    cli, tmp_path: Path, dataset_file: Path
) -> None:
    run = tmp_path / "run"
    threading.Thread(target=_ctrl_c_once_logging, args=(run,), daemon=True).start()
    stopped = cli("train", "decision-lstm", "--steps", "100000", "--dataset", dataset_file, "--run-dir", run, *COMMON)
    # Ctrl-C: every worker stops at the same step, and rank 0 checkpoints it.
    assert stopped.exit_code == 130, stopped.output
    assert "Interrupted at step" in stopped.output and "toolkit resume" in stopped.output
    done = load_checkpoint(run / CHECKPOINT)["counters"]["step"]
    assert STEPS // 2 <= done < 100_000 and done % STOP_CHECK_EVERY == 0
    resumed = cli("resume", run, "--steps", done + STEPS // 2, "--no-progress")  # on two workers again
    assert resumed.exit_code == 0, resumed.output

    # It learns: the data's controller returns about -4, random actions about -40.
    evals = _records(run, "eval")
    assert [r["step"] for r in evals] == list(range(STEPS // 2, done + STEPS // 2 + 1, STEPS // 2))
    assert random_policy_return() < -25
    assert evals[-1]["return_mean"] > -10, evals
    # Gradients were averaged, so the two replicas ended both parts with identical parameters.
    syncs = _records(run, "data_parallel")
    assert [r["step"] for r in syncs] == [done, done + STEPS // 2]
    assert all(r["workers"] == 2 and r["effective_batch_size"] == 64 for r in syncs)
    assert all(r["max_parameter_difference"] == 0.0 for r in syncs)
    # The local loop's layout and checkpoint format, plus each worker's own random streams.
    state = load_checkpoint(run / CHECKPOINT)
    assert state["counters"]["step"] == done + STEPS // 2 and len(state["worker_streams"]) == 2
    assert not torch.equal(state["worker_streams"][0]["sampler"]["generator"],
                           state["worker_streams"][1]["sampler"]["generator"])  # own windows per worker
    evaluated = cli("eval", run, "--episodes", "3")
    assert evaluated.exit_code == 0, evaluated.output


@pytest.mark.slow
def test_resumed_data_parallel_run_matches_an_uninterrupted_one(cli, tmp_path: Path, dataset_file: Path) -> None:
    """Every worker's sampler and torch random state is in the checkpoint: a resumed run logs
    exactly what an uninterrupted one does (three Ray Train runs, so outside CI)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _train(cli, whole, dataset_file, STEPS)
    _stopped_and_resumed(cli, parts, dataset_file)
    assert _records(parts, "train", "eval") == _records(whole, "train", "eval")


@pytest.mark.slow
def test_one_worker_reproduces_the_local_loop(cli, tmp_path: Path, dataset_file: Path) -> None:
    """Rank 0 keeps the run's own random streams and averaging over one worker changes nothing."""
    args = ["--steps", "60", "--dataset", dataset_file, "--log-every", "30", "--eval-every", "30", "--eval-episodes", "2",
            "--env", ENV, "--no-progress", "--set", "context_length=5", "--set", "embed_dim=16", "--set", "batch_size=8"]
    for workers in ("0", "1"):
        result = cli("train", "decision-lstm", "--run-dir", tmp_path / workers, "--workers", workers, *args)
        assert result.exit_code == 0, result.output
    assert _records(tmp_path / "1", "train", "eval") == _records(tmp_path / "0", "train", "eval")


@pytest.mark.parametrize(("option", "value", "needs"), [("--workers", "3", "needs 3 CPU"),
                                                         ("--gpus-per-worker", "1", "needs 2 GPU")])
def test_workers_the_cluster_cannot_place_are_refused(
    cli, tmp_path: Path, dataset_file: Path, option: str, value: str, needs: str
) -> None:
    args = ["train", "bc", "--env", ENV, "--dataset", dataset_file, "--no-progress", "--workers", "2",
            "--run-dir", tmp_path / "r", option, value]
    assert_clean_error(cli(*args), needs, "Ray cluster has")
