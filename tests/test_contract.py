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
from toolkit.envs import make_env
from toolkit.registry import AGENTS, registry

#: A cheap environment for each kind of action space.
ENV_FOR_SPACE = {"box": "Pendulum-v1", "discrete": "CartPole-v1"}

AGENT_NAMES = [e.name for e in registry.entries(AGENTS)]


def _setup(name: str):
    spec = registry.agent(name)
    if spec.kind == "offline":
        pytest.skip("offline agents are covered by their dataset tests")
    env_id = next(ENV_FOR_SPACE[s] for s in spec.action_spaces if s in ENV_FOR_SPACE)
    env = make_env(env_id)
    config = spec.config()
    torch.manual_seed(0)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    return spec, env, config, agent


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
def test_spec_is_complete(name: str) -> None:
    spec = registry.agent(name)
    assert spec.name == name
    assert spec.kind in {"off-policy", "on-policy", "offline"}
    assert spec.action_spaces and spec.description
    fields = describe(spec.config)
    assert fields and all(f.help for f in fields), "every config field needs a help text"


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_acts_in_the_action_space(name: str) -> None:
    _, env, _, agent = _setup(name)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(7)]), dtype=torch.float32)
    for deterministic in (False, True):
        actions = agent.act(obs, deterministic=deterministic).cpu().numpy()
        assert actions.shape[0] == 7
        for a in actions:
            assert env.action_space.contains(a.astype(env.action_space.dtype)), a
    # deterministic acting is repeatable
    assert torch.equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_update_returns_finite_scalars(name: str) -> None:
    spec, env, config, agent = _setup(name)
    if spec.kind != "off-policy":
        pytest.skip("on-policy agents are driven by their rollout tests")
    batch = _batch(env, 32, agent.history_length)
    for _ in range(3):
        metrics = agent.update(batch)
    assert metrics
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert torch.isfinite(value), key


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_state_round_trips_through_a_safe_checkpoint(name: str) -> None:
    spec, env, config, agent = _setup(name)
    if spec.kind == "off-policy":
        agent.update(_batch(env, 32, agent.history_length))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # no arbitrary unpickling

    torch.manual_seed(123)
    fresh = spec.build(config, env.observation_space, env.action_space, "cpu")
    # Enough seeded observations that two differently initialised policies cannot agree by chance.
    env.observation_space.seed(0)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(64)]), dtype=torch.float32)
    assert not torch.equal(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    if spec.kind == "off-policy":  # optimiser state came along too: the next update matches
        batch = _batch(env, 32, agent.history_length)
        torch.manual_seed(7)
        a = agent.update(batch)
        torch.manual_seed(7)
        b = fresh.update(batch)
        for key in a:
            assert torch.allclose(a[key], b[key]), key
