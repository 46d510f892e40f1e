"""scripts/compare.py: agents x seeds trained with one protocol, one table whose numbers are the
runs' metrics.jsonl's, the overlaid evaluation curves, and unavailable or failing agents
reported as rows."""

from __future__ import annotations

import csv
import importlib.util
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from toolkit.errors import ToolkitError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare.py"


@pytest.fixture(scope="module")
def compare() -> Iterator[ModuleType]:
    """The script as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["agent"]: row for row in csv.DictReader(f)}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_agents_two_seeds_one_table_from_the_runs_metrics(compare, one_thread, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    code = compare.main(["--env", "CartPole-v1", "--agents", "ppo,a2c", "--steps", "4096", "--seeds", "2",
                         "--eval-every", "2048", "--eval-episodes", "2", "--device", "cpu", "--out", str(out),
                         "--set", "a2c:lr=0.001"])
    assert code == 0
    table = _csv(out / "comparison.csv")
    assert list(table) == ["ppo", "a2c"]
    markdown = (out / "comparison.md").read_text()
    assert "4,096 env steps, 2 seeds, evaluation every 2,048 steps on 2 episodes" in markdown
    assert capsys.readouterr().out.count("| ppo | 2/2 |") == 1  # the printed table is the Markdown one
    for agent, row in table.items():
        runs = [out / agent / f"s{seed}" for seed in (0, 1)]
        evals = [[r["return_mean"] for r in _metrics(run) if r["kind"] == "eval"] for run in runs]
        assert all(len(e) == 2 for e in evals)  # the same protocol for every run: two evaluations
        finals, bests = [e[-1] for e in evals], [max(e) for e in evals]
        rates = [_overall_rate([r for r in _metrics(run) if r["kind"] == "train"]) for run in runs]
        assert (row["seeds_ok"], row["seeds"], row["note"]) == ("2", "2", "")
        assert float(row["final_return_mean"]) == pytest.approx(statistics.mean(finals))
        assert float(row["final_return_std"]) == pytest.approx(statistics.stdev(finals))
        assert float(row["best_return_mean"]) == pytest.approx(statistics.mean(bests))
        assert float(row["best_return_std"]) == pytest.approx(statistics.stdev(bests))
        assert float(row["steps_per_second"]) == pytest.approx(statistics.mean(rates))
        assert float(row["wall_time_s"]) > 0
        shown = f"| {agent} | 2/2 | {statistics.mean(finals):.1f} ± {statistics.stdev(finals):.1f} | "
        assert shown in markdown
    assert "lr: 0.001" in (out / "a2c" / "s0" / "config.yaml").read_text()  # AGENT:key=value reaches its agent
    figure = (out / "comparison.png").read_bytes()
    assert figure[:8] == b"\x89PNG\r\n\x1a\n" and len(figure) > 20_000  # two curves with bands, not a blank canvas


def test_an_unavailable_and_a_failing_agent_are_rows_not_crashes(compare, monkeypatch, tmp_path: Path) -> None:
    from toolkit import training
    from toolkit.registry import AGENTS, registry

    real_names, real_agent = registry.names, registry.agent

    def agent(name: str):
        if name == "needs-lib":
            raise ToolkitError("The agent 'needs-lib' from toolkit-rl is unavailable: needs some-lib, which is not installed")
        return real_agent(name)

    def exploding(agent: str, *args, run_dir: Path, **kwargs):
        raise RuntimeError("the library said\nCUDA error: boom")

    monkeypatch.setattr(registry, "names", lambda group: real_names(group) + (["needs-lib"] if group == AGENTS else []))
    monkeypatch.setattr(registry, "agent", agent)
    monkeypatch.setattr(training, "start_training", exploding)
    out = tmp_path / "cmp"
    code = compare.main(["--env", "CartPole-v1", "--agents", "needs-lib,ppo", "--steps", "100", "--seeds", "2",
                         "--out", str(out)])
    assert code == 1
    table = _csv(out / "comparison.csv")
    assert table["needs-lib"]["seeds"] == "0" and "needs some-lib" in table["needs-lib"]["note"]
    assert table["ppo"]["note"] == "2 of 2 runs failed (seed 0: RuntimeError: CUDA error: boom)"
    assert table["ppo"]["final_return_mean"] == ""
    assert "| ppo | 0/2 | - | - | - | - | 2 of 2 runs failed" in (out / "comparison.md").read_text()
    assert not (out / "comparison.png").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--agents", "ppo,ppoo"], "Unknown agent 'ppoo'"),
        (["--agents", "ppo", "--set", "ppo:lrr=1"], "--set for ppo: --set: 'lrr' is not a setting"),
        (["--agents", "ppo", "--set", "a2c:lr=1"], "names agent 'a2c', which is not in --agents"),
        (["--agents", "ppo", "--set", "lr=1"], "--set expects AGENT:key=value"),
        (["--agents", "ppo", "--eval-every", "300"], "--eval-every must be a positive divisor of --steps 1000"),
        (["--agents", "ppo", "--env", "CartPol-v1"], "CartPol-v1"),
    ],
)
def test_mistakes_are_one_sentence_before_anything_trains(compare, tmp_path: Path, capsys, args, fragment) -> None:
    env = [] if "--env" in args else ["--env", "CartPole-v1"]
    assert compare.main([*env, "--steps", "1000", "--out", str(tmp_path / "cmp"), *args]) == 2
    assert fragment in " ".join(capsys.readouterr().err.split())
    assert not any((tmp_path / "cmp").glob("*/s0"))


def _overall_rate(rows: list[dict]) -> float:
    """Env steps/s over a run's logged windows: the harmonic mean of their rates, each weighted by
    its steps (a window of n steps at r steps/s took n / r seconds)."""
    steps = [b["step"] - a for a, b in zip([0] + [r["step"] for r in rows], rows)]
    return statistics.harmonic_mean([r["steps_per_second"] for r in rows], weights=steps)


def test_steps_per_second_is_steps_over_time_not_the_mean_of_window_rates(compare: ModuleType) -> None:
    # 1,000 random steps at 5,000/s (0.2 s), then 1,000 learning steps at 50/s (20 s).
    rows = [{"step": 1_000, "steps_per_second": 5_000.0}, {"step": 2_000, "steps_per_second": 50.0}]
    assert compare.training_rate(rows) == pytest.approx(2_000 / 20.2)
