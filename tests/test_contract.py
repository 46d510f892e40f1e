"""The plugin contract, checked for every agent registered through `toolkit.agents`.

Every later plugin, first-party or not, gets these checks for free: it acts in the env's
space, its update returns finite scalar metrics, and its state survives a checkpoint.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from toolkit.agent import Batch
from toolkit.config import describe
from toolkit.data import OfflineDataset
from toolkit.envs import make_env
from toolkit.offline import DatasetStatistics, SequenceBatch, SequenceSampler
from toolkit.registry import AGENTS, registry

#: A cheap environment for each kind of action space.
ENV_FOR_SPACE = {"box": "Pendulum-v1", "discrete": "CartPole-v1"}

AGENT_NAMES = [e.name for e in registry.entries(AGENTS)]


def _toolkit_trained(name: str) -> str:
    """Agents the toolkit's loops train (act and update on their own); an agent another library
    trains has nothing to act with until it starts, and gets :func:`test_external_agent_contract`."""
    spec = registry.agent(name)
    if spec.kind == "external":
        pytest.skip("trained by its library: see test_external_agent_contract")
    return name


def _random_dataset(env, steps: int = 300, episode: int = 50) -> OfflineDataset:
    """Uniformly random transitions in ``env``'s spaces, cut into episodes by a time limit."""
    env.observation_space.seed(1)
    env.action_space.seed(1)
    rng = np.random.default_rng(1)
    return OfflineDataset(
        observations=np.stack([env.observation_space.sample() for _ in range(steps)]).astype(np.float32),
        actions=np.stack([env.action_space.sample() for _ in range(steps)]).astype(np.float32),
        rewards=rng.normal(size=steps).astype(np.float32),
        terminals=np.zeros(steps, bool),
        timeouts=np.arange(steps) % episode == episode - 1,
    )


def _setup(name: str):
    spec = registry.agent(name)
    env_id = next(ENV_FOR_SPACE[s] for s in spec.action_spaces if s in ENV_FOR_SPACE)
    env = make_env(env_id)
    config = spec.config()
    torch.manual_seed(0)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    if spec.kind == "offline":  # the offline loop hands over the dataset's statistics first
        agent.set_dataset_statistics(DatasetStatistics.of(_random_dataset(env)))
    return spec, env, config, agent


def _sequence_batch(env, agent) -> SequenceBatch:
    return SequenceSampler(_random_dataset(env), agent.context_length, "cpu", seed=0).sample(8)


def _fresh_act(agent, obs: torch.Tensor) -> torch.Tensor:
    """A deterministic action at the start of an episode (sequence models keep context)."""
    agent.start_episode()
    return agent.act(obs, deterministic=True)


def _batch(env, n: int, history: int) -> Batch:
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(n)]), dtype=torch.float32)
    nxt = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(n)]), dtype=torch.float32)
    actions = torch.as_tensor(np.stack([env.action_space.sample() for _ in range(n)]))
    if actions.is_floating_point():
        actions = actions.float()
    hist = obs.unsqueeze(1).repeat(1, history, *[1] * (obs.dim() - 1)) if history > 1 else None
    rewards = torch.as_tensor(rng.normal(size=(n, 1)), dtype=torch.float32)
    return Batch(obs, actions, rewards, nxt, torch.zeros(n, 1), hist)


def test_first_party_agents_are_registered() -> None:
    assert {"sac", "sac-icm"} <= set(AGENT_NAMES)


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_factory_imports(name: str) -> None:
    """Every registered agent loads, matches its entry-point name and api_version, and its
    factory imports: what `toolkit list --check` reports, caught here before any user sees it."""
    for entry in (e for e in registry.entries(AGENTS) if e.name == name):
        assert entry.check() is None, f"{name} ({entry.distribution}): {entry.reason}"


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_spec_is_complete(name: str) -> None:
    spec = registry.agent(name)
    assert spec.name == name
    assert spec.kind in {"off-policy", "on-policy", "offline", "external"}
    assert spec.action_spaces and spec.description
    fields = describe(spec.config)
    assert fields and all(f.help for f in fields), "every config field needs a help text"


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_acts_in_the_action_space(name: str) -> None:
    _toolkit_trained(name)
    _, env, _, agent = _setup(name)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(7)]), dtype=torch.float32)
    for deterministic in (False, True):
        agent.start_episode()
        actions = agent.act(obs, deterministic=deterministic).cpu().numpy()
        assert actions.shape[0] == 7
        for a in actions:
            assert env.action_space.contains(a.astype(env.action_space.dtype)), a
    # deterministic acting is repeatable from an episode's start
    assert torch.equal(_fresh_act(agent, obs), _fresh_act(agent, obs))


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_update_returns_finite_scalars(name: str) -> None:
    _toolkit_trained(name)
    spec, env, config, agent = _setup(name)
    if spec.kind == "on-policy":
        pytest.skip("on-policy agents are driven by their rollout tests")
    batch = _sequence_batch(env, agent) if spec.kind == "offline" else _batch(env, 32, agent.history_length)
    for _ in range(3):
        metrics = agent.update(batch)
    assert metrics
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert torch.isfinite(value), key


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_state_round_trips_through_a_safe_checkpoint(name: str) -> None:
    _toolkit_trained(name)
    spec, env, config, agent = _setup(name)
    learns_from_batches = spec.kind in ("off-policy", "offline")

    def batch():
        return _sequence_batch(env, agent) if spec.kind == "offline" else _batch(env, 32, agent.history_length)

    if learns_from_batches:
        agent.update(batch())
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # no arbitrary unpickling

    torch.manual_seed(123)
    fresh = spec.build(config, env.observation_space, env.action_space, "cpu")
    # Enough seeded observations that two differently initialised policies cannot agree by chance.
    env.observation_space.seed(0)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(64)]), dtype=torch.float32)
    assert not torch.equal(_fresh_act(fresh, obs), _fresh_act(agent, obs))
    fresh.load_state_dict(state)  # offline agents: the dataset statistics come with the state
    assert torch.equal(_fresh_act(fresh, obs), _fresh_act(agent, obs))
    if learns_from_batches:  # optimiser state came along too: the next update matches
        same = batch()
        torch.manual_seed(7)
        a = agent.update(same)
        torch.manual_seed(7)
        b = fresh.update(same)
        for key in a:
            assert torch.allclose(a[key], b[key]), key


EXTERNAL_NAMES = [e.name for e in registry.entries(AGENTS) if e.load() is not None and e.status == "ok"
                  and e.obj.kind == "external" and not e.name.startswith("rllib-")]  # RLlib's own tests start Ray once


@pytest.mark.parametrize("name", EXTERNAL_NAMES)
def test_external_agent_contract(name: str, tmp_path) -> None:
    """An agent another library trains: it starts on the env, learns a few steps and reports
    them honestly, acts in the action space, and its native checkpoint restores the same policy
    into a fresh agent that never started (as `toolkit eval` loads it)."""
    from functools import partial

    from toolkit.external import EnvContext

    spec, env, config, agent = _setup(name)
    env_id = next(ENV_FOR_SPACE[s] for s in spec.action_spaces if s in ENV_FOR_SPACE)
    agent.start(EnvContext(env_id=env_id, make_env=partial(make_env, env_id), seed=0, device=torch.device("cpu"),
                           total_steps=200))
    try:
        report = agent.learn(100)
        assert report.steps >= 100 and all(1 <= offset <= report.steps for _, _, offset in report.episodes)
        obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(7)]), dtype=torch.float32)
        actions = agent.act(obs, deterministic=True)
        for a in actions.cpu().numpy():
            assert env.action_space.contains(a.astype(env.action_space.dtype)), a
        agent.save_native(tmp_path)
    finally:
        agent.close()
    fresh = spec.build(config, env.observation_space, env.action_space, "cpu")
    fresh.load_native(tmp_path)
    assert torch.equal(fresh.act(obs, deterministic=True), actions)
