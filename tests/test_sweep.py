"""`toolkit sweep` on Ray Tune: a grid of configurations times seeds, each trial an ordinary run
directory, the results and summary CSVs and the printed table; random search; and the clear
errors for a bad grid, given before anything starts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import assert_clean_error
from toolkit.distributed.sweep import SweepPlan, TrialRow, plan_sweep, summarise
from toolkit.runs import CHECKPOINT

TINY_DQN = ["--steps", "300", "--set", "learning_starts=100", "--set", "buffer_size=1000", "--eval-episodes", "2"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_of_two_configurations_and_two_seeds_writes_its_tables(cli, ray_session, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = cli("sweep", "dqn", "--env", "CartPole-v1", "--grid", "lr=1e-3,3e-4", "--seeds", "2",
                 "--sweep-dir", sweep_dir, *TINY_DQN)
    assert result.exit_code == 0, result.output

    trials = _rows(sweep_dir / "results.csv")
    assert sorted((r["lr"], r["seed"]) for r in trials) == [("1e-3", "0"), ("1e-3", "1"), ("3e-4", "0"), ("3e-4", "1")]
    for row in trials:  # each trial is a normal run dir, and its final return is its evaluation's
        run = Path(row["run_dir"])
        assert run.parent == sweep_dir.resolve() and (run / "config.yaml").is_file() and (run / CHECKPOINT).is_file()
        assert row["error"] == "" and row["steps"] == "300"
        (evaluation,) = (run / "eval").glob("step-*.json")
        assert float(row["final_return"]) == pytest.approx(json.loads(evaluation.read_text())["return_mean"])
        settings = yaml.safe_load((run / "config.yaml").read_text())
        assert settings["agent_config"]["lr"] == float(row["lr"]) and settings["seed"] == int(row["seed"])
        assert settings["agent_config"]["learning_starts"] == 100  # --set reaches every trial

    summary = _rows(sweep_dir / "summary.csv")
    assert sorted(r["lr"] for r in summary) == ["1e-3", "3e-4"]
    for row in summary:
        mine = [float(t["final_return"]) for t in trials if t["lr"] == row["lr"]]
        assert row["n"] == "2" and row["failed"] == "0"
        assert float(row["mean"]) == pytest.approx(sum(mine) / 2)
    assert float(summary[0]["mean"]) >= float(summary[1]["mean"])  # best first

    # The printed table, and Tune's own records kept with the sweep rather than in ~/ray_results.
    text = " ".join(result.output.split())
    assert "final return" in text and "±" in text and "1e-3" in text and "3e-4" in text
    assert "summary.csv" in text
    assert (sweep_dir / "tune").is_dir()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--grid", "lrr=1e-3,3e-4"], ["'lrr' is not a setting", "Did you mean 'lr'", "Valid keys:", "gamma"]),
        (["--grid", "lr=fast,1e-3"], ["--grid", "'lr' expects float", "'fast'"]),
        (["--grid", "lr"], ["--grid expects key=value1,value2"]),
        (["--grid", "lr=1e-3,1e-3"], ["lists a value twice"]),
        (["--grid", "lr=1e-3", "--grid", "lr=3e-4"], ["names 'lr' twice"]),
        (["--grid", "lr=1e-3,3e-4", "--set", "lr=1e-2"], ["'lr' is given both by --grid and by --set"]),
        (["--grid", "lr=1e-3,3e-4", "--samples", "2"], ["--samples", "--search random"]),
        (["--grid", "lr=1e-3,3e-4", "--search", "random", "--samples", "3"], ["more configurations than the grid has (2)"]),
        (["--grid", "lr=1e-3,3e-4", "--seeds", "0"], ["--seeds must be at least 1"]),
        (["--grid", "lr=1e-3", "--search", "bayes"], ["--search must be one of grid, random"]),
    ],
)
def test_bad_sweeps_fail_with_one_sentence_before_anything_starts(cli, tmp_path: Path, args, fragments) -> None:
    result = cli("sweep", "dqn", "--env", "CartPole-v1", "--sweep-dir", tmp_path / "sweep", *args)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "sweep").exists()


def test_unknown_agent_and_env_are_refused_before_anything_starts(cli, tmp_path: Path) -> None:
    assert_clean_error(cli("sweep", "dqnn", "--env", "CartPole-v1", "--grid", "lr=1e-3"), "dqnn")
    assert_clean_error(cli("sweep", "dqn", "--env", "CartPol-v1", "--grid", "lr=1e-3", "--sweep-dir", tmp_path / "s"),
                       "CartPol-v1")
    assert not (tmp_path / "s").exists()


def test_random_search_draws_distinct_configurations_that_run_with_every_seed() -> None:
    plan = plan_sweep("dqn", "CartPole-v1", ["lr=1e-3,3e-4", "gamma=0.9,0.95,0.99"], seeds=3,
                      search="random", samples=4)
    assert len(plan.configurations) == 4 and plan.trials == 12
    assert len({tuple(c.items()) for c in plan.configurations}) == 4
    assert all(c["lr"] in ("1e-3", "3e-4") and c["gamma"] in ("0.9", "0.95", "0.99") for c in plan.configurations)
    again = plan_sweep("dqn", "CartPole-v1", ["lr=1e-3,3e-4", "gamma=0.9,0.95,0.99"], seeds=3, search="random", samples=4)
    assert again.configurations == plan.configurations  # the draw is seeded


def test_tuple_values_are_separated_by_semicolons() -> None:
    plan = plan_sweep("dqn", "CartPole-v1", ["hidden_sizes=64,64;128"])
    assert [c["hidden_sizes"] for c in plan.configurations] == ["64,64", "128"]


def test_summary_counts_failed_trials_apart() -> None:
    plan = SweepPlan("dqn", "CartPole-v1", ["lr"], [{"lr": "1e-3"}, {"lr": "3e-4"}], [0, 1])
    rows = [TrialRow(0, 0, 10.0, 0.0, 300, "a"), TrialRow(0, 1, 20.0, 0.0, 300, "b"),
            TrialRow(1, 0, 50.0, 0.0, 300, "c"), TrialRow(1, 1, None, None, None, "d", error="boom")]
    best, other = summarise(plan, rows)
    assert (best.configuration, best.mean, best.std, best.n, best.failed) == (1, 50.0, 0.0, 1, 1)
    assert (other.configuration, other.mean, other.n, other.failed) == (0, 15.0, 2, 0)
    assert other.std == pytest.approx(7.0710678)  # sample std over seeds


def test_a_failing_trial_is_reported_in_the_tables_not_raised(ray_session, tmp_path: Path) -> None:
    """A trial that fails (here: a setting that plan_sweep would have refused) gets an error
    row and counts as failed in the summary; the sweep itself finishes."""
    from toolkit.distributed.sweep import run_sweep

    plan = plan_sweep("dqn", "CartPole-v1", ["lr=1e-3"])
    plan.training["set_items"] = ["gamma=not-a-number"]
    result = run_sweep(plan, tmp_path / "sweep")
    (row,) = _rows(tmp_path / "sweep" / "results.csv")
    assert row["final_return"] == "" and "'gamma' expects float" in row["error"]
    (summary,) = result.summary
    assert (summary.n, summary.failed, summary.mean) == (0, 1, None)
