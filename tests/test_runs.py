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


# --- issue 13: nothing lost, nothing silent ----------------------------------------------------

SMALL = ["--no-progress", "--set", "learning_starts=100", "--set", "batch_size=32", "--set", "hidden_sizes=32,32"]


def _strict_records(run: Path) -> list[dict]:
    """metrics.jsonl read with a parser that refuses NaN and infinities."""
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_monotonic(run: Path) -> None:
    """Steps strictly increase per kind in metrics.jsonl, and no TensorBoard tag has a step twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_kind: dict[str, list[int]] = {}
    for record in _strict_records(run):
        by_kind.setdefault(record["kind"], []).append(record["step"])
    for kind, steps in by_kind.items():
        assert all(a < b for a, b in zip(steps, steps[1:])), (kind, steps)
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Tags()["scalars"]
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, kind: str = "train", timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while True:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        path = run / "metrics.jsonl"
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
                     if line.strip().endswith("}") and f'"kind": "{kind}"' in line]
            if steps and steps[-1] >= step:
                return
        time.sleep(0.1)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_resume_after_kill_logs_every_step_once(tmp_path: Path) -> None:
    """kill -9 between checkpoints, then resume: metrics.jsonl and TensorBoard hold one curve."""
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*TOOLKIT, "train", "sac", "--env", "Pendulum-v1", "--steps", "100000", "--run-dir", str(run), *SMALL,
         "--checkpoint-every", "400", "--log-every", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_step(proc, run, 650)  # past the checkpoint at 400: rows 450..650+ are logged twice without the fix
    proc.kill()
    proc.wait(timeout=30)
    from toolkit.runs import load_checkpoint

    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] < 650
    resumed = run_cli("resume", run, "--steps", "900", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    _assert_monotonic(run)
    assert read_metrics(run, "train")[-1]["step"] == 900
    assert len(list((run / "tb").iterdir())) >= 2  # the second session's events file purged the first's tail


def _second_ctrl_c(run: Path, extra: list[str]) -> tuple[subprocess.CompletedProcess, str, str]:
    proc = subprocess.Popen(
        [*TOOLKIT, "train", "sac", "--env", "Pendulum-v1", "--steps", "1000000", "--run-dir", str(run), *SMALL,
         "--log-every", "50", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_for_step(proc, run, 300)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_second_ctrl_c_never_loses_the_checkpoint(tmp_path: Path) -> None:
    """Two quick Ctrl-Cs: the checkpoint write finishes (or, if the second came before it, the
    message says so); never a .tmp, a traceback or a silent exit."""
    from toolkit.runs import load_checkpoint

    run = tmp_path / "twice"
    proc, out, err = _second_ctrl_c(run, ["--checkpoint-every", "0"])
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert not list(run.rglob("*.tmp"))
    if (run / CHECKPOINT).is_file():
        step = load_checkpoint(run / CHECKPOINT)["counters"]["step"]
        assert step >= 300 and "toolkit resume" in out + err
    else:
        assert "no checkpoint was saved" in " ".join(err.split())


def _tiny_trainer(run: Path, losses, log_every: int = 10, checkpoint_every: int = 20):
    """A GradientStepTrainer on a one-parameter learner whose loss at step ``s`` is ``losses(s)``."""
    import torch

    from toolkit.runs import RunSettings
    from toolkit.trainer import GradientStepTrainer

    class Learner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def train_mode(self, on: bool) -> None:
            self.train(on)

    class Tiny(GradientStepTrainer):
        def gradient_step(self):
            return {"loss": torch.tensor(losses(self.step + 1))}

    settings = RunSettings(agent="", env="", model="tiny", steps=200, log_every=log_every,
                           checkpoint_every=checkpoint_every)
    run.mkdir(parents=True, exist_ok=True)
    return Tiny(Learner(), settings, run, torch.device("cpu"), progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path: Path, bad: float) -> None:
    from toolkit.runs import load_checkpoint
    from toolkit.trainer import NonFiniteMetricError

    run = tmp_path / "nan"
    trainer = _tiny_trainer(run, lambda step: bad if step > 51 else 1.0)
    with pytest.raises(NonFiniteMetricError) as info:
        trainer.run(200)
    message = str(info.value)
    assert "metric 'loss'" in message and "step 60" in message and "step 40" in message
    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] == 40  # not overwritten with the bad state
    records = _strict_records(run)  # strict JSON: NaN/inf are written as null
    assert records[-1]["step"] == 60 and records[-1]["loss"] is None


def test_non_finite_loss_between_log_steps_is_not_checkpointed(tmp_path: Path) -> None:
    """A checkpoint step that is no log step still refuses to save a non-finite state."""
    from toolkit.runs import load_checkpoint
    from toolkit.trainer import NonFiniteMetricError

    run = tmp_path / "nan"
    trainer = _tiny_trainer(run, lambda step: float("nan") if step > 31 else 1.0, log_every=100, checkpoint_every=15)
    with pytest.raises(NonFiniteMetricError, match="step 45"):
        trainer.run(200)
    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] == 30


def test_non_finite_loss_in_a_cli_run_is_one_sentence(cli, tmp_path: Path, monkeypatch) -> None:
    from toolkit_sac.sac import SAC

    from conftest import assert_clean_error

    update, calls = SAC.update, []

    def diverging(self, batch):  # updates start at step 100; from step ~150 the critic's loss is inf
        metrics = update(self, batch)
        calls.append(1)
        scale = float("inf") if len(calls) > 50 else 1.0
        return {**metrics, "critic_loss": metrics["critic_loss"] * scale}

    monkeypatch.setattr(SAC, "update", diverging)
    run = tmp_path / "diverged"
    result = cli("train", "sac", "--env", "Pendulum-v1", "--steps", "400", "--run-dir", run, *SMALL,
                 "--log-every", "100", "--checkpoint-every", "100")
    assert_clean_error(result, "Training stopped at step 200", "metric 'critic_loss' became inf", "(step 100)")
    assert result.exit_code == 1
    from toolkit.runs import load_checkpoint

    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] == 100
    assert _strict_records(run)[-1]["critic_loss"] is None


def test_second_ctrl_c_between_checkpoints_says_what_is_kept(tmp_path: Path) -> None:
    """Two real SIGINTs in the middle of a step: the run stops at once and says which step the
    kept checkpoint holds."""
    from toolkit.trainer import StoppedAtOnce

    run = tmp_path / "now"

    def losses(step: int) -> float:
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return 1.0

    trainer = _tiny_trainer(run, losses)
    handler_before = signal.getsignal(signal.SIGINT)  # whatever an earlier in-process CLI test left
    with pytest.raises(StoppedAtOnce) as info:
        trainer.run(200)
    assert info.value.exit_code == 130
    assert "checkpoint holds step 20, so the 4 steps since are lost" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is handler_before  # the run put the handler back
    assert not list(run.rglob("*.tmp"))


def test_second_ctrl_c_during_a_checkpoint_write_waits_for_it(tmp_path: Path, monkeypatch, capfd) -> None:
    """Real SIGINTs delivered while the checkpoint is written: the write completes."""
    import torch

    from toolkit.runs import load_checkpoint

    run = tmp_path / "slow"
    trainer = _tiny_trainer(run, lambda step: 1.0, checkpoint_every=1000)
    trainer.stop_requested  # noqa: B018  (sets the STOP file clock)
    save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C came at the step; these during the write
        os.kill(os.getpid(), signal.SIGINT)
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    trainer._stop_requested = True  # as after a first Ctrl-C
    result = trainer.run(200)
    assert result.interrupted
    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] == trainer.step
    assert "saving checkpoint, please wait" in capfd.readouterr().err
    assert not list(run.rglob("*.tmp"))


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path: Path) -> None:
    from toolkit.runs import load_checkpoint

    run = tmp_path / "stale"
    trainer = _tiny_trainer(run, lambda step: 1.0)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt.tmp").write_bytes(b"half a file")
    trainer.run(30)
    assert not list(run.rglob("*.tmp")) and load_checkpoint(run / CHECKPOINT)["counters"]["step"] == 30


def test_best_checkpoint_is_kept_and_evaluated(cli, tmp_path: Path) -> None:
    import torch

    from toolkit.runs import BEST_CHECKPOINT, load_checkpoint

    run = tmp_path / "best"
    args = ["--checkpoint-every", "200", "--log-every", "100", "--eval-every", "100", "--eval-episodes", "1"]
    assert cli("train", "sac", "--env", "Pendulum-v1", "--steps", "300", "--run-dir", run, *SMALL, *args).exit_code == 0
    evals = read_metrics(run, "eval")
    best = max(evals, key=lambda r: r["return_mean"])
    best_state = load_checkpoint(run / BEST_CHECKPOINT)
    counters = load_checkpoint(run / CHECKPOINT)["counters"]
    assert best_state["counters"]["step"] == best["step"] == counters["best_step"]
    assert counters["best_value"] == pytest.approx(best["return_mean"])
    assert cli("resume", run, "--steps", "500", "--no-progress").exit_code == 0
    evals = read_metrics(run, "eval")
    best = max(evals, key=lambda r: r["return_mean"])
    assert load_checkpoint(run / CHECKPOINT)["counters"]["best_step"] == best["step"]
    assert load_checkpoint(run / BEST_CHECKPOINT)["counters"]["step"] == best["step"]
    result = cli("eval", run, "--episodes", "1", "--checkpoint", "best")
    assert result.exit_code == 0, result.output
    out = json.loads((run / "eval" / f"best-step-{best['step']}.json").read_text())
    assert out["checkpoint"] == "best"
    weights = torch.load(run / BEST_CHECKPOINT, weights_only=True)["agent"]
    assert weights  # the learner's own state, enough to evaluate
