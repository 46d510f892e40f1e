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


# --- sweeps of several agents ------------------------------------------------------------------


def test_several_agents_share_the_grid_and_may_have_none() -> None:
    plan = plan_sweep("ppo, a2c", "CartPole-v1", ["gamma=0.9,0.99"], seeds=2)
    assert plan.agents == ["ppo", "a2c"] and plan.several and plan.trials == 8
    assert plan.trial_name(1, 0, agent=1) == "a2c-c01-gamma=0.99-s0"
    comparison = plan_sweep("ppo,a2c", "CartPole-v1", None)  # no grid: the agents' defaults, compared
    assert comparison.configurations == [{}] and comparison.trials == 2
    assert comparison.trial_name(0, 0, agent=0) == "ppo-c00-s0"
    single = plan_sweep("ppo", "CartPole-v1", ["gamma=0.9"])
    assert not single.several and single.trial_name(0, 1) == "c00-gamma=0.9-s1"  # one agent: as before


CARTPOLE = ["--env", "CartPole-v1"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["ppo,dqn", *CARTPOLE, "--grid", "clip_range=0.1,0.2"],
         ["Agent 'dqn': --grid: 'clip_range' is not a setting of DQNConfig"]),
        (["ppo,dqn", *CARTPOLE, "--set", "clip_range=0.1"],
         ["Agent 'dqn': --set: 'clip_range' is not a setting of DQNConfig"]),
        (["dqn,ppo", *CARTPOLE, "--grid", "lr=1e-3", "--set", "clip_range=0.1"],
         ["Agent 'dqn': Configuration lr=1e-3: --set: 'clip_range'"]),
        (["sac,dqn", "--env", "Pendulum-v1"], ["Agent 'dqn' needs discrete actions"]),  # named once, not twice
        (["ppo,ppo", *CARTPOLE], ["names 'ppo' twice"]),
        (["ppo,,a2c", *CARTPOLE], ["has an empty name"]),
        (["ppo,nope", *CARTPOLE], ["Unknown agent or model 'nope'"]),
        (["ppo", *CARTPOLE], ["A sweep needs at least one --grid"]),  # one agent still needs a grid
    ],
)
def test_every_listed_agent_is_checked_before_anything_starts(cli, tmp_path: Path, args, fragments) -> None:
    result = cli("sweep", *args, "--sweep-dir", tmp_path / "sweep")
    assert_clean_error(result, *fragments)
    assert "Agent 'dqn': Agent 'dqn'" not in " ".join(result.output.split())
    assert not (tmp_path / "sweep").exists()


def test_tables_of_several_agents_have_an_agent_column(tmp_path: Path) -> None:
    from rich.console import Console

    from toolkit.distributed.sweep import SweepResult, summary_table, write_results

    plan = SweepPlan("ppo,a2c", "CartPole-v1", ["gamma"], [{"gamma": "0.9"}, {"gamma": "0.99"}], [0, 1])
    rows = [TrialRow(c, s, 10.0 * (a + 1) + c + s, 0.0, 300, f"{a}{c}{s}", agent=a)
            for a in range(2) for c in range(2) for s in range(2)]
    summary = summarise(plan, rows)
    assert [(plan.agents[r.agent], r.configuration, r.mean) for r in summary] == [
        ("a2c", 1, 21.5), ("a2c", 0, 20.5), ("ppo", 1, 11.5), ("ppo", 0, 10.5)]  # best first, across agents
    write_results(tmp_path, plan, rows, summary)
    assert _rows(tmp_path / "results.csv")[-1] == {
        "agent": "a2c", "configuration": "1", "gamma": "0.99", "seed": "1", "final_return": "22.0",
        "final_return_std": "0.0", "steps": "300", "run_dir": "111", "error": ""}
    assert list(_rows(tmp_path / "summary.csv")[0]) == ["agent", "configuration", "gamma", "mean", "std", "n", "failed"]
    console = Console(width=120, record=True)
    console.print(summary_table(SweepResult(tmp_path, plan, rows, summary)))
    text = console.export_text()
    assert "ppo, a2c on CartPole-v1" in text and "agent" in text and "a2c" in text and "21.50 ± 0.71" in text


def test_a_sweep_mixing_a_native_and_a_bridged_agent_writes_one_table(cli, ray_session, one_thread,
                                                                       tmp_path: Path) -> None:
    """ppo and stable-baselines3's PPO (through its bridge) compared in one sweep, with no grid:
    every trial an ordinary run dir of its agent, one results.csv / summary.csv / table with an
    agent column, one figure."""
    pytest.importorskip("stable_baselines3")
    sweep_dir = tmp_path / "sweep"
    # 300 steps: each library still collects one whole rollout (2,048 steps) of its default size.
    result = cli("sweep", "ppo,sb3-ppo", "--env", "CartPole-v1", "--set", "gamma=0.95", "--steps", "300",
                 "--eval-episodes", "2", "--device", "cpu", "--sweep-dir", sweep_dir)
    assert result.exit_code == 0, result.output
    trials = _rows(sweep_dir / "results.csv")
    assert [(r["agent"], r["configuration"], r["seed"]) for r in trials] == [("ppo", "0", "0"), ("sb3-ppo", "0", "0")]
    for row in trials:
        run = Path(row["run_dir"])
        assert row["error"] == "" and run.name == f"{row['agent']}-c00-s0"
        settings = yaml.safe_load((run / "config.yaml").read_text())
        assert settings["agent"] == row["agent"] and settings["agent_config"]["gamma"] == 0.95  # --set reaches both
        (evaluation,) = (run / "eval").glob("step-*.json")
        assert float(row["final_return"]) == pytest.approx(json.loads(evaluation.read_text())["return_mean"])
    summary = _rows(sweep_dir / "summary.csv")
    assert sorted((r["agent"], r["n"], r["failed"]) for r in summary) == [("ppo", "1", "0"), ("sb3-ppo", "1", "0")]
    text = " ".join(result.output.split())
    assert "2 agents x 1 configuration(s) x 1 seed(s) = 2 trials" in text
    table = text.split("ppo, sb3-ppo on CartPole-v1", 1)[1]
    assert "agent" in table and "sb3-ppo" in table and "±" in table
    assert (sweep_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
