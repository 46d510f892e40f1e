"""Learning curves (`toolkit plot`, :mod:`toolkit.plot`), the summary line after training and
the progress bar's time left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_clean_error
from toolkit.errors import ToolkitError
from toolkit.plot import (
    curves_figure,
    group_by_seed,
    mean_band,
    plot_runs,
    resolve_metric,
    smooth,
    summary_line,
    write_curves,
)
from toolkit.progress import TrainingProgress, format_eta


def fake_run(path: Path, seed: int = 0, lr: float = 0.001, evals: bool = True, model: bool = False) -> Path:
    """A run directory with a config.yaml and a metrics.jsonl, as training writes them."""
    path.mkdir(parents=True)
    config = {"agent": None if model else "sac", "model": "vae" if model else None, "env": "Pendulum-v1",
              "seed": seed, "steps": 1000, "agent_config": {"lr": lr, "hidden_sizes": [32, 32]}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(0, 1000, 100):
        if not model:
            rows.append({"step": step + int(rng.integers(1, 50)), "kind": "episode", "return": float(step + rng.normal()), "length": 200})
        rows.append({"step": step, "kind": "train", "critic_loss": 1.0 / (step + 1), "actor_loss": -step / 100,
                     "steps_per_second": 500.0, "updates": step})
        if evals and step % 500 == 0:
            rows.append({"step": step, "kind": "eval", "return_mean": float(step), "return_std": 5.0}
                        if not model else {"step": step, "kind": "eval", "loss": 2.0, "elbo": -90.0})
    rows.append({"step": 999, "kind": "event", "event": "restarted"})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 10")  # a torn last line
    return path


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_agent_curves_have_a_return_panel_and_one_per_loss(tmp_path) -> None:
    run = fake_run(tmp_path / "run")
    fig = curves_figure(run)
    assert titles(fig) == ["return", "actor_loss", "critic_loss"]  # no steps_per_second, updates
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "evaluation mean return" in labels and "evaluation ± std" in labels and "episode return" in labels
    path = write_curves(run)
    assert path == run / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_curves_show_train_and_eval_metrics(tmp_path) -> None:
    run = fake_run(tmp_path / "run", model=True)
    assert titles(curves_figure(run)) == ["actor_loss", "critic_loss", "elbo", "loss"]


def test_a_run_without_metrics_still_gets_a_figure(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("agent: sac\nseed: 0\n")
    assert write_curves(run).is_file()


def test_runs_differing_only_by_seed_form_one_group(tmp_path) -> None:
    a = {"agent": "sac", "seed": 0, "agent_config": {"lr": 0.1}}
    b = {"agent": "sac", "seed": 1, "agent_config": {"lr": 0.1}}
    c = {"agent": "sac", "seed": 0, "agent_config": {"lr": 0.2}}
    d = {"agent": "sac", "seed": 2, "agent_config": {"lr": 0.1}, "run_dir": "elsewhere"}
    assert group_by_seed(["a", "b", "c", "d"], [a, b, c, d]) == [[0, 1, 3], [2]]


def test_mean_band_is_the_mean_with_a_min_max_band() -> None:
    steps = np.array([0.0, 10.0, 20.0])
    grid, mean, low, high = mean_band([(steps, np.array([0.0, 1.0, 2.0])), (steps, np.array([2.0, 3.0, 4.0]))])
    np.testing.assert_array_equal(grid, steps)
    np.testing.assert_array_equal(mean, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(low, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(high, [2.0, 3.0, 4.0])
    # Curves logged at other steps are interpolated onto the range they share.
    grid, mean, _, _ = mean_band([(np.array([0.0, 100.0]), np.array([0.0, 100.0])),
                                  (np.array([50.0, 150.0]), np.array([50.0, 150.0]))], points=3)
    np.testing.assert_array_equal(grid, [50.0, 75.0, 100.0])
    np.testing.assert_array_equal(mean, [50.0, 75.0, 100.0])


def test_smoothing_is_a_trailing_mean() -> None:
    values = np.arange(100, dtype=float)
    out = smooth(values)  # window 100 // 20 = 5
    assert out[0] == 0.0 and out[1] == 0.5 and out[-1] == np.mean(values[-5:])
    np.testing.assert_array_equal(smooth(np.arange(10.0)), np.arange(10.0))  # too short to smooth


def test_seeds_are_drawn_as_one_line_with_a_band(tmp_path) -> None:
    runs = [fake_run(tmp_path / "s0", seed=0), fake_run(tmp_path / "s1", seed=1), fake_run(tmp_path / "lr", lr=0.01)]
    out = plot_runs(runs, None, tmp_path / "all.png")
    assert out.is_file()
    from toolkit import plot

    fig_runs = []
    original = plot._save
    plot._save = lambda fig, path: fig_runs.append(fig)
    try:
        plot_runs(runs, "episode/return", tmp_path / "x.png")
    finally:
        plot._save = original
    ax = fig_runs[0].axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # one mean line + band, one single run
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["lr=0.001 (2 seeds)", "lr=0.01"]


def test_metric_names(tmp_path) -> None:
    available = {"eval/return_mean", "episode/return", "train/loss", "eval/loss"}
    assert resolve_metric(None, available) == "eval/return_mean"
    assert resolve_metric(None, {"episode/return"}) == "episode/return"
    assert resolve_metric("return", available) == "episode/return"
    with pytest.raises(ToolkitError, match="several kinds"):
        resolve_metric("loss", available)
    with pytest.raises(ToolkitError, match="Unknown metric 'nope'; these runs log: episode/return, eval/loss"):
        resolve_metric("nope", available)


def test_plot_command(tmp_path, cli) -> None:
    run = fake_run(tmp_path / "run")
    result = cli("plot", run)
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").is_file()
    result = cli("plot", run, fake_run(tmp_path / "other", seed=3), "--metric", "critic_loss", "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").is_file()
    assert_clean_error(cli("plot", tmp_path), "is not a toolkit run")
    assert_clean_error(cli("plot", run, "--metric", "nope"), "Unknown metric 'nope'", "train/critic_loss")


def test_summary_line(tmp_path) -> None:
    class Result:
        wall_time, steps_per_second = 65.2, 812.4

    run = fake_run(tmp_path / "run")
    assert summary_line(run, Result()) == "Wall time 1m05s, 812 steps/s; last evaluation (step 500): return 500.0 ± 5.0."
    no_eval = fake_run(tmp_path / "noeval", evals=False)
    assert summary_line(no_eval, object()).startswith("Done; no evaluation logged")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_follows_the_recent_rate_after_a_fast_random_phase() -> None:
    """10 s of random steps at 1000 steps/s, then learning at 10 steps/s: the time left must
    soon read the learning rate's, not the since-start average's (seconds instead of minutes)."""
    clock = FakeClock()
    total = 20_000
    with TrainingProgress(total, enabled=True, clock=clock) as bar:
        step = 0
        for _ in range(40):  # random phase, drawn every 0.25 s
            clock.now += 0.25
            step += 250
            bar.update(step, None)
        assert bar.rate == pytest.approx(1000.0)
        for _ in range(24):  # 6 s of learning
            clock.now += 0.25
            step += 2.5
            bar.update(int(step), None)
        assert bar.rate == pytest.approx(10.0, rel=0.1)
        left = (total - int(step)) / 10.0
        assert bar.eta == pytest.approx(left, rel=0.1)  # about 16 minutes, not 16 seconds
        assert bar._progress.tasks[0].fields["eta"] == format_eta(bar.eta)


def test_format_eta() -> None:
    assert format_eta(None) == "-:--:--"
    assert format_eta(3725.4) == "1:02:05"


def test_a_sweep_gets_a_curves_figure(tmp_path) -> None:
    from toolkit.plot import write_sweep_curves

    runs = [fake_run(tmp_path / "c0-s0", seed=0), fake_run(tmp_path / "c0-s1", seed=1),
            fake_run(tmp_path / "c1-s0", lr=0.01)]
    assert write_sweep_curves(tmp_path, [*runs, tmp_path / "failed-trial"]) == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").is_file()
    assert write_sweep_curves(tmp_path / "empty", []) is None


def test_every_finished_run_draws_its_curves(tmp_path, cli, one_thread) -> None:
    """`toolkit train` ends by writing curves.png, and a resumed part redraws it."""
    run = tmp_path / "run"
    common = ["--set", "learning_starts=50", "--set", "batch_size=16", "--set", "hidden_sizes=16,16", "--no-progress",
              "--log-every", "50"]
    assert cli("train", "sac", "--env", "Pendulum-v1", "--steps", "200", "--run-dir", run, *common).exit_code == 0
    first = (run / "curves.png").stat().st_mtime_ns
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("resume", run, "--steps", "400", "--no-progress").exit_code == 0
    assert (run / "curves.png").stat().st_mtime_ns > first


def test_runs_of_different_learners_are_labelled_by_learner() -> None:
    from toolkit.plot import group_by_seed, group_labels

    configs = [{"agent": "ppo", "seed": 0, "agent_config": {"lr": 1e-3, "gamma": 0.9}},
               {"agent": "ppo", "seed": 0, "agent_config": {"lr": 1e-3, "gamma": 0.99}},
               {"agent": "sb3-ppo", "seed": 0, "agent_config": {"learning_rate": 3e-4, "gamma": 0.9}},
               {"agent": "sb3-ppo", "seed": 1, "agent_config": {"learning_rate": 3e-4, "gamma": 0.9}}]
    groups = group_by_seed(["a", "b", "c", "d"], configs)
    assert group_labels(configs, groups, list("abcd")) == ["ppo, gamma=0.9", "ppo, gamma=0.99", "sb3-ppo, gamma=0.9 (2 seeds)"]
