"""The loop of agents trained by another library (kind "external"), with a fake library.

The fake "library" steps CartPole with random actions and "learns" a hand-written balancing
controller once it has seen 1,500 steps, so evaluations jump from ~9 to ~500 and the best
checkpoint can be told apart; its native checkpoint is a JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error
from toolkit.config import option
from toolkit.external import NATIVE_FOLDER, EnvContext, ExternalAgent, LearnReport
from toolkit.registry import AgentSpec, registry
from toolkit.runs import BEST_CHECKPOINT, CHECKPOINT, load_checkpoint, read_metrics
from toolkit.training import evaluate_run, resume_training, start_training

LEARNED_AFTER = 1_500


@dataclass(frozen=True)
class FakeConfig:
    """Settings of the fake library."""

    chunk_limit: int = option(10_000, "Most steps one learn() call takes.", ge=1)


class FakeLibraryAgent(ExternalAgent):
    """Random actions while learning; a balancing controller once it has seen enough steps."""

    library = "fake-library"

    def __init__(self, config: FakeConfig, observation_space, action_space, device) -> None:
        super().__init__()
        self.config = config
        self.seen = 0
        self.env = None
        self.calls: list[int] = []

    def start(self, context: EnvContext) -> None:
        self.env = context.make_env()
        self.rng = np.random.default_rng(context.seed)
        self.obs, _ = self.env.reset(seed=context.seed)
        self.episode_return, self.episode_length = 0.0, 0

    def learn(self, steps: int) -> LearnReport:
        self.calls.append(steps)
        report = LearnReport(steps=steps)
        for offset in range(1, steps + 1):
            self.obs, reward, terminated, truncated, _ = self.env.step(int(self.rng.integers(2)))
            self.episode_return += float(reward)
            self.episode_length += 1
            if terminated or truncated:
                report.episodes.append((self.episode_return, self.episode_length, offset))
                self.obs, _ = self.env.reset()
                self.episode_return, self.episode_length = 0.0, 0
        self.seen += steps
        report.metrics = {"seen": float(self.seen)}
        return report

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if self.seen < LEARNED_AFTER:
            return torch.zeros(len(obs), dtype=torch.long)
        return (obs[:, 2] + 0.5 * obs[:, 3] > 0).long()  # push towards where the pole falls

    def save_native(self, directory: Path, resumable: bool = True) -> None:
        (directory / "state.json").write_text(json.dumps({"seen": self.seen, "resumable": resumable}))

    def load_native(self, directory: Path) -> None:
        self.seen = json.loads((directory / "state.json").read_text())["seen"]

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


FAKE = AgentSpec(name="fake-external", config=FakeConfig, factory=FakeLibraryAgent, kind="external",
                 action_spaces=("discrete",), api_version=1)


@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> AgentSpec:
    real_agent, real_learner = registry.agent, registry.learner
    monkeypatch.setattr(registry, "agent", lambda name: FAKE if name == FAKE.name else real_agent(name))
    monkeypatch.setattr(registry, "learner", lambda name: FAKE if name == FAKE.name else real_learner(name))
    return FAKE


def train(run: Path, steps: int) -> None:
    start_training(FAKE.name, "CartPole-v1", steps=steps, device="cpu", run_dir=run, eval_every=1_000,
                   checkpoint_every=1_000, log_every=500, progress=False, eval_episodes=2)


def test_chunks_end_where_the_run_logs_evaluates_and_checkpoints(fake_agent, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, 3_000)
    episodes = read_metrics(run, "episode")
    assert episodes and all(a["step"] < b["step"] for a, b in zip(episodes, episodes[1:]))
    assert all(1 <= row["step"] <= 3_000 for row in episodes)
    evals = read_metrics(run, "eval")
    assert [row["step"] for row in evals] == [1_000, 2_000, 3_000]
    assert evals[0]["return_mean"] < 50 and evals[1]["return_mean"] > 400  # learned after 1,500 steps
    assert [row["seen"] for row in read_metrics(run, "train")] == [500, 1_000, 1_500, 2_000, 2_500, 3_000]
    # The toolkit's checkpoints name the library's; nothing else is kept.
    assert load_checkpoint(run / CHECKPOINT)["agent"]["native"] == "step-3000"
    assert load_checkpoint(run / BEST_CHECKPOINT)["agent"]["native"] == "best-step-2000"
    assert sorted(p.name for p in (run / NATIVE_FOLDER).iterdir()) == ["best-step-2000", "step-3000"]
    assert load_checkpoint(run / CHECKPOINT)["agent"]["library"] == "fake-library"
    # Only the latest checkpoint is written for resuming; the best one is only evaluated.
    assert json.loads((run / NATIVE_FOLDER / "step-3000" / "state.json").read_text())["resumable"] is True
    assert json.loads((run / NATIVE_FOLDER / "best-step-2000" / "state.json").read_text())["resumable"] is False
    assert (run / "curves.png").is_file()


def test_resume_continues_from_the_native_checkpoint_and_eval_reads_it(fake_agent, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, 1_000)
    (run / NATIVE_FOLDER / "step-999.tmp").mkdir()  # as a crash mid-write leaves it
    _, result = resume_training(run, steps=2_000, progress=False)
    assert result.step == 2_000
    train_rows = read_metrics(run, "train")
    assert [row["seen"] for row in train_rows] == [500, 1_000, 1_500, 2_000]  # the library continued at 1,000
    assert not (run / NATIVE_FOLDER / "step-999.tmp").exists()
    latest, _, _ = evaluate_run(run, episodes=2)
    best, _, _ = evaluate_run(run, episodes=2, checkpoint="best")
    assert latest.mean > 400 and best.mean > 400


def test_external_agents_refuse_compile(fake_agent, tmp_path: Path) -> None:
    from toolkit.errors import ToolkitError

    with pytest.raises(ToolkitError, match="trained by its library"):
        start_training(FAKE.name, "CartPole-v1", steps=100, device="cpu", run_dir=tmp_path / "r", compile="compile",
                       progress=False)
    assert not (tmp_path / "r").exists()


def test_an_agent_whose_library_is_missing_is_unavailable_and_says_how_to_install(monkeypatch, cli) -> None:
    from toolkit.registry import AGENTS, PluginEntry, missing_requirement

    spec = AgentSpec(name="needs-lib", config=FakeConfig, factory=FakeLibraryAgent, kind="external",
                     action_spaces=("discrete",), api_version=1, requires=("no-such-library-xyz",), extra="bridges")
    assert missing_requirement(spec, "toolkit-rl") == (
        "needs no-such-library-xyz, which is not installed; pip install 'toolkit-rl[bridges]'")
    entry = PluginEntry("needs-lib", AGENTS, "x:SPEC", "toolkit-rl", "0.1.0")
    monkeypatch.setattr("toolkit.registry.load_object", lambda value: spec)
    entry.load()
    assert entry.status == "unavailable" and "pip install 'toolkit-rl[bridges]'" in entry.reason
    monkeypatch.setattr(registry, "entries", lambda group: [entry] if group == AGENTS else [])
    assert_clean_error(cli("train", "needs-lib", "--env", "CartPole-v1"), "unavailable", "no-such-library-xyz",
                       "pip install 'toolkit-rl[bridges]'")


def test_export_and_prune_refuse_an_agent_trained_by_its_library(fake_agent, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    train(run, 1_000)
    for args in (("export", run, "--format", "torchscript"), ("prune", run, "--sparsity", "0.5")):
        assert_clean_error(cli(*args), "trained by fake-library", "toolkit's own agents")
