"""Offline learners (bc, decision-lstm, decision-transformer) and the framework's offline loop:
window sampling, the models' causality and evaluation-time state, the command line, exact
resume, and a learning check per learner on a scripted PointMass dataset."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import assert_clean_error
from toolkit.data import OfflineDataset, save_dataset
from toolkit.envs import make_env
from toolkit.evaluation import EvalResult, evaluate
from toolkit.offline import DatasetStatistics, SequenceSampler
from toolkit.training import evaluate_run, start_training
from toolkit_offline.decision_lstm import DecisionLSTM
from toolkit_offline.bc import BehaviourCloning
from toolkit_offline.decision_transformer import DecisionTransformer
from toolkit_offline.spec import BCConfig, DecisionLSTMConfig, DecisionTransformerConfig

torch.set_num_threads(1)

ENV = "toolkit/PointMass-v0"


def scripted_dataset(episodes: int, noise: float, seed: int = 0) -> OfflineDataset:
    """PointMass episodes of a controller that heads for the origin, with Gaussian action noise."""
    env = make_env(ENV)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed * 10_000 + episode)
        done = False
        while not done:
            action = np.clip(-10.0 * obs + noise * rng.standard_normal(2), -1.0, 1.0).astype(np.float32)
            nxt, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(rows, (obs, action, reward, terminated, truncated, nxt)):
                rows[key].append(value)
            obs, done = nxt, terminated or truncated
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    return OfflineDataset(
        observations=arrays["observations"].astype(np.float32), actions=arrays["actions"],
        rewards=arrays["rewards"].astype(np.float32), terminals=arrays["terminals"].astype(bool),
        timeouts=arrays["timeouts"].astype(bool), next_observations=arrays["next_observations"].astype(np.float32),
    )


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pointmass-scripted.hdf5"
    save_dataset(scripted_dataset(episodes=120, noise=0.3), path)
    return path


def random_policy_return(episodes: int = 10) -> float:
    env = make_env(ENV)
    env.action_space.seed(0)
    total = 0.0
    for episode in range(episodes):
        env.reset(seed=2_000_000 + episode)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += reward
            done = terminated or truncated
    return total / episodes


# --- sampling ---------------------------------------------------------------------------------


def test_windows_stay_inside_episodes_and_carry_returns_to_go() -> None:
    # Two episodes: 3 steps ending in a terminal, 4 steps cut by a time limit.
    rewards = np.array([1, 2, 3, 10, 20, 30, 40], np.float32)
    data = OfflineDataset(
        observations=np.arange(7, dtype=np.float32)[:, None], actions=np.zeros((7, 1), np.float32),
        rewards=rewards, terminals=np.array([0, 0, 1, 0, 0, 0, 0], bool), timeouts=np.array([0, 0, 0, 0, 0, 0, 1], bool),
    )
    sampler = SequenceSampler(data, context=3, device="cpu", seed=0)
    batch = sampler.sample(256)
    expected_rtg = {0: 6.0, 1: 5.0, 2: 3.0, 3: 100.0, 4: 90.0, 5: 70.0, 6: 40.0}
    expected_t = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2, 6: 3}
    episode_end = {0: 3, 1: 3, 2: 3, 3: 7, 4: 7, 5: 7, 6: 7}
    for row in range(256):
        start = int(batch.observations[row, 0, 0])
        real = min(3, episode_end[start] - start)
        assert batch.mask[row].tolist() == [1.0] * real + [0.0] * (3 - real)  # right padding only
        for k in range(real):
            assert int(batch.observations[row, k, 0]) == start + k
            assert float(batch.returns_to_go[row, k]) == expected_rtg[start + k]
            assert int(batch.timesteps[row, k]) == expected_t[start + k]
        assert torch.all(batch.returns_to_go[row, real:] == 0)


# --- the models ------------------------------------------------------------------------------


def _tiny(kind: str):
    env = make_env(ENV)
    if kind == "dt":
        agent = DecisionTransformer(DecisionTransformerConfig(context_length=4, embed_dim=16, n_layers=2, dropout=0.0),
                                    env.observation_space, env.action_space)
    else:
        agent = DecisionLSTM(DecisionLSTMConfig(context_length=4, embed_dim=16, dropout=0.0),
                             env.observation_space, env.action_space)
    agent.set_dataset_statistics(DatasetStatistics.of(scripted_dataset(3, 0.1)))
    return agent


def test_decision_transformer_cannot_see_the_action_it_predicts() -> None:
    torch.manual_seed(0)
    agent = _tiny("dt")
    agent.model.eval()
    r, s, a = torch.randn(2, 4, 1), torch.randn(2, 4, 2), torch.randn(2, 4, 2)
    t = torch.arange(4).repeat(2, 1)
    before = agent.model(r, s, a, t)
    changed = a.clone()
    changed[:, 2] += 5.0  # a_2 may affect predictions of a_3 onwards, never of a_0 .. a_2
    after = agent.model(r, s, changed, t)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3], after[:, 3])


@pytest.mark.parametrize("kind", ["lstm", "dt"])
def test_acting_step_by_step_matches_reading_the_whole_episode(kind: str) -> None:
    """Evaluation keeps its own context (the LSTM's carried state, the transformer's last K
    steps); its actions equal the network's on the same sequence read in one pass."""
    torch.manual_seed(1)
    agent = _tiny(kind)
    agent.model.eval()
    steps, rewards = 4, [-0.5, -0.25, -0.125, -0.1]
    obs = torch.randn(steps, 2)
    agent.start_episode()
    acted = []
    for k in range(steps):
        acted.append(agent.act(obs[k : k + 1], deterministic=True))
        agent.record_reward(rewards[k])
    acted = torch.cat(acted)

    target = float(agent.normalizer.target_return)
    rtg = torch.tensor([target - sum(rewards[:k]) for k in range(steps)])
    returns = agent.normalizer.returns(rtg).unsqueeze(0)
    states = agent.normalizer.observations(obs).unsqueeze(0)
    timesteps = torch.arange(steps).unsqueeze(0)
    unit = agent.bounds.to_unit(acted).unsqueeze(0)
    with torch.no_grad():
        if kind == "lstm":
            previous = torch.cat([torch.zeros(1, 1, 2), unit[:, :-1]], dim=1)
            whole, _ = agent.model(returns, states, previous, timesteps)
        else:
            whole = agent.model(returns, states, unit, timesteps)
    torch.testing.assert_close(agent.env_actions(whole[0]), acted, atol=1e-5, rtol=1e-5)


def _whole_transformer_pass(model, r, s, a, t):
    """The decision transformer as first written: every block over every token, then the
    outputs at the s_t tokens (the network now skips the rest in its top block)."""
    b, k = t.shape
    er, es, ea = model.embed(r, s, a, t)
    tokens = torch.stack([er, es, ea], dim=2).reshape(b, 3 * k, -1)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(3 * k)
    h = model.transformer(model.dropout(model.norm(tokens)), mask=causal, is_causal=True)
    return torch.tanh(model.head(model.final_norm(h.reshape(b, k, 3, -1)[:, :, 1])))


def test_decision_transformer_top_block_at_state_tokens_equals_the_whole_pass() -> None:
    torch.manual_seed(2)
    model = _tiny("dt").model
    model.train()  # dropout is 0 in _tiny: train mode takes the same path as training
    r, s, a = torch.randn(3, 4, 1), torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.randint(0, 50, (3, 4))
    fast = model(r, s, a, t)
    fast_grads = torch.autograd.grad(fast.pow(2).sum(), list(model.parameters()), allow_unused=True)
    whole = _whole_transformer_pass(model, r, s, a, t)
    whole_grads = torch.autograd.grad(whole.pow(2).sum(), list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(fast, whole)
    for g_fast, g_whole in zip(fast_grads, whole_grads):
        if g_whole is not None:
            torch.testing.assert_close(g_fast, g_whole, atol=1e-5, rtol=1e-4)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(r, s, a, t, last_only=True), model(r, s, a, t)[:, -1:])


# --- evaluation -------------------------------------------------------------------------------


class UnevenEpisodesEnv(gym.Env):
    """A point pushed by its actions whose episodes last 6 to 18 steps, by reset seed, so that
    episodes evaluated side by side end at different steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.steps, self.horizon = 0, 6 + 3 * (int(seed or 0) % 5)
        return self.position.copy(), {}

    def step(self, action):
        self.position = (self.position + 0.1 * np.asarray(action, np.float32)).astype(np.float32)
        self.steps += 1
        reward = -float(np.linalg.norm(self.position))
        return self.position.copy(), reward, self.steps >= self.horizon, False, {}


UNEVEN = "toolkit-test/UnevenEpisodes-v0"
if UNEVEN not in gym.registry:
    gym.register(UNEVEN, entry_point=UnevenEpisodesEnv)


def _untrained(kind: str):
    if kind == "bc":
        env = make_env(ENV)
        agent = BehaviourCloning(BCConfig(hidden_sizes=(16,)), env.observation_space, env.action_space)
        agent.set_dataset_statistics(DatasetStatistics.of(scripted_dataset(3, 0.1)))
        return agent
    return _tiny(kind)


def _one_at_a_time(agent, episodes: int, seed: int) -> EvalResult:
    agent.evaluates_episodes_together = False  # the instance's flag: the original loop, episode by episode
    try:
        return evaluate(agent, UNEVEN, episodes, seed=seed)
    finally:
        del agent.evaluates_episodes_together


@pytest.mark.parametrize("kind", ["bc", "lstm", "dt"])
def test_episodes_evaluated_together_match_episodes_evaluated_one_at_a_time(kind: str) -> None:
    """Side by side, each episode keeps its own return-to-go and context; episodes that end
    early drop out; the returns and lengths are those of the one-at-a-time loop."""
    torch.manual_seed(3)
    agent = _untrained(kind)
    together = evaluate(agent, UNEVEN, 5, seed=10)
    alone = _one_at_a_time(agent, 5, seed=10)
    assert together.lengths == alone.lengths and len(set(alone.lengths)) > 1
    np.testing.assert_allclose(together.returns, alone.returns, rtol=1e-5)
    again = evaluate(agent, UNEVEN, 5, seed=10)
    assert again.returns == together.returns  # deterministic with the seed


def test_return_countdown_is_kept_per_episode() -> None:
    agent = _tiny("dt")
    agent.start_episode(3)
    agent.record_reward(np.array([1.0, 2.0, 0.0]))
    agent.record_reward(0.5)  # one number counts for every episode
    target = float(agent.normalizer.target_return)
    np.testing.assert_allclose(agent.countdown.remaining, [target - 1.5, target - 2.5, target - 0.5])


# --- the command line -------------------------------------------------------------------------


def test_offline_agent_without_a_dataset_says_how_to_make_one(cli, tmp_path: Path) -> None:
    result = cli("train", "decision-lstm", "--env", ENV, "--run-dir", tmp_path / "r")
    assert_clean_error(result, "learns offline from a dataset", "--dataset", "toolkit dataset collect")
    assert not (tmp_path / "r").exists()


def test_online_agent_refuses_a_dataset(cli, tmp_path: Path, dataset_file: Path) -> None:
    result = cli("train", "sac", "--env", ENV, "--dataset", dataset_file, "--run-dir", tmp_path / "r")
    assert_clean_error(result, "drop --dataset")


def test_dataset_for_another_env_is_refused_before_any_run_dir_exists(cli, tmp_path: Path, dataset_file: Path) -> None:
    result = cli("train", "bc", "--env", "Pendulum-v1", "--dataset", dataset_file, "--run-dir", tmp_path / "r")
    assert_clean_error(result, str(dataset_file.name), "observations", "Pendulum-v1")
    assert not (tmp_path / "r").exists()


def test_offline_learners_refuse_discrete_actions(cli, tmp_path: Path, dataset_file: Path) -> None:
    result = cli("train", "bc", "--env", "CartPole-v1", "--dataset", dataset_file, "--run-dir", tmp_path / "r")
    assert_clean_error(result, "Agent 'bc'", "Agents that fit:")


def _records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("steps_per_second", None)
    return records


def test_resumed_offline_run_learns_and_evaluates_exactly_as_an_uninterrupted_one(
    cli, tmp_path: Path, dataset_file: Path
) -> None:
    common = ["--env", ENV, "--dataset", dataset_file, "--no-progress", "--log-every", "20", "--eval-every", "40",
              "--eval-episodes", "2", "--set", "context_length=5", "--set", "embed_dim=16", "--set", "batch_size=8"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", "decision-lstm", "--steps", "80", "--run-dir", whole, *common).exit_code == 0
    assert cli("train", "decision-lstm", "--steps", "50", "--run-dir", parts, *common).exit_code == 0
    resumed = cli("resume", parts, "--steps", "80", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    a, b = _records(whole), _records(parts)
    assert [r["kind"] for r in a].count("eval") == 2 and any("loss" in r for r in a)
    assert a == b
    evaluated = cli("eval", whole, "--episodes", "2")
    assert evaluated.exit_code == 0, evaluated.output


# --- learning ---------------------------------------------------------------------------------

#: Small but real settings per learner; each trains in a few seconds on one core.
LEARNING = {
    "bc": (600, ["hidden_sizes=64,64", "lr=1e-3"]),
    "decision-lstm": (600, ["context_length=10", "embed_dim=64", "batch_size=32", "warmup_steps=50"]),
    "decision-transformer": (600, ["context_length=10", "embed_dim=64", "n_layers=2", "batch_size=32",
                                   "lr=1e-3", "warmup_steps=50"]),
}


@pytest.mark.parametrize("agent", list(LEARNING))
def test_offline_learner_imitates_the_scripted_controller(agent: str, tmp_path: Path, dataset_file: Path) -> None:
    """The data's controller returns about -4 per episode, uniformly random actions about -40:
    each learner must close most of that gap."""
    steps, settings = LEARNING[agent]
    run, _ = start_training(agent, ENV, steps=steps, run_dir=tmp_path / agent, seed=0, device="cpu",
                            progress=False, checkpoint_every=0, eval_every=steps, eval_episodes=10,
                            set_items=settings, dataset=dataset_file)
    final = [r for r in _records(run) if r["kind"] == "eval"][-1]
    random_return = random_policy_return()
    assert random_return < -25
    assert final["return_mean"] > -10, (agent, final, random_return)
    result, _, _ = evaluate_run(run, episodes=5)
    assert result.mean > -10
