"""An update reads nothing back to the host: no ``.item()``, ``.cpu()``, ``bool(tensor)``.

On a GPU every such read stalls the host until the device has caught up, which is what keeps
an update from being captured in a CUDA graph (``docs/speed.md``). On the CPU nothing stalls,
so the test counts the reads instead: a dispatch mode sees every tensor-to-Python-number
conversion (``aten::_local_scalar_dense``, which ``.item()``, ``bool()``, ``float()`` and a
0-dim tensor passed where torch wants a number all go through), and a function mode sees the
explicit host copies (``.cpu()``, ``.numpy()``, ``.tolist()``). Where CUDA exists the same
updates run under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from toolkit.agent import Agent, Batch
from toolkit.buffers import ReplayBuffer
from toolkit.envs import make_env
from toolkit.loops.collect import EnvBatch, rollout_from_columns
from toolkit.registry import registry
from toolkit.session import build_config

HOST_COPIES = {"cpu", "numpy", "tolist", "item", "__bool__", "__float__", "__int__", "__index__"}


class HostReads(TorchDispatchMode, TorchFunctionMode):
    """Counts reads from tensors into host values while active."""

    def __init__(self) -> None:
        TorchDispatchMode.__init__(self)
        TorchFunctionMode.__init__(self)
        self.reads: Counter[str] = Counter()


class _ScalarReads(TorchDispatchMode):
    def __init__(self, reads: Counter[str]) -> None:
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads["_local_scalar_dense"] += 1
        return func(*args, **(kwargs or {}))


class _HostCopies(TorchFunctionMode):
    def __init__(self, reads: Counter[str]) -> None:
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_COPIES:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


def host_reads(fn: Any, *args: Any) -> Counter[str]:
    """The host reads ``fn(*args)`` makes, by kind."""
    reads: Counter[str] = Counter()
    with _HostCopies(reads), _ScalarReads(reads):
        fn(*args)
    return reads


def build(name: str, env_id: str, *sets: str) -> tuple[Agent, Any]:
    spec = registry.agent(name)
    env = make_env(env_id)
    torch.manual_seed(0)
    return spec.build(build_config(spec, set_items=list(sets)), env.observation_space, env.action_space, "cpu"), env


def replay_batch(agent: Agent, env: Any, size: int = 32) -> Batch:
    discrete = not hasattr(env.action_space, "low")
    buffer = ReplayBuffer(200, env.observation_space.shape, () if discrete else env.action_space.shape,
                          action_dtype=torch.int64 if discrete else torch.float32, seed=0)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    for step in range(100):
        action = env.action_space.sample()
        nxt, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, nxt, terminated, step)
        obs = env.reset()[0] if terminated or truncated else nxt
    return buffer.sample(size, history=agent.history_length, n_step=agent.n_step)


OFF_POLICY = [
    ("sac", "Pendulum-v1", ("hidden_sizes=32,32",)),
    ("sac-icm", "Pendulum-v1", ("hidden_sizes=32,32",)),
    ("dqn", "CartPole-v1", ("hidden_sizes=32", "target_update_interval=3", "lr_final=0.0001", "n_step=3")),
    ("dqn", "CartPole-v1", ("hidden_sizes=32", "max_grad_norm=10", "dueling=true")),
]


@pytest.mark.parametrize(("name", "env_id", "sets"), OFF_POLICY, ids=lambda v: v if isinstance(v, str) else "")
def test_off_policy_updates_read_nothing_back(name: str, env_id: str, sets: tuple[str, ...]) -> None:
    agent, env = build(name, env_id, *sets)
    batch = replay_batch(agent, env)
    agent.update(batch)  # optimiser state is created on the first step
    assert host_reads(agent.update, batch) == Counter()
    assert host_reads(agent.update, batch) == Counter()


@pytest.mark.parametrize(("name", "sets"), [("ppo", ("minibatch_size=8",)), ("ppo-icm", ("minibatch_size=8",)),
                                           ("a2c", ()), ("a2c", ("optimizer=adam",)), ("reinforce", ())])
def test_on_policy_updates_read_nothing_back(name: str, sets: tuple[str, ...]) -> None:
    agent, _ = build(name, "CartPole-v1", "num_envs=2", "rollout_steps=16", *sets)
    envs = EnvBatch.make(lambda: make_env("CartPole-v1"), 2, seed=0)
    columns = envs.run(envs.policy(agent, "cpu"), 16, lambda *_: None)
    rollout = rollout_from_columns(columns, torch.device("cpu"), envs.obs_dtype, envs.discrete)
    agent.update(rollout)
    assert host_reads(agent.update, rollout) == Counter()


def test_the_counter_sees_reads() -> None:
    """The instrument itself: each kind of read it is meant to catch is caught."""
    x = torch.ones(3)
    reads = host_reads(lambda: (x.sum().item(), bool(x.any()), x.cpu(), x.tolist(),
                                torch._foreach_lerp_([x.clone()], [x], torch.tensor(0.5))))
    assert reads["item"] == 1 and reads["__bool__"] == 1 and reads["cpu"] == 1 and reads["tolist"] == 1
    assert reads["_local_scalar_dense"] >= 3  # item, bool and the 0-dim lerp weight bound to a number


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "env_id", "sets"), OFF_POLICY, ids=lambda v: v if isinstance(v, str) else "")
def test_off_policy_updates_never_synchronise_the_gpu(name: str, env_id: str, sets: tuple[str, ...]) -> None:
    spec = registry.agent(name)
    env = make_env(env_id)
    agent = spec.build(build_config(spec, set_items=list(sets)), env.observation_space, env.action_space, "cuda")
    cpu_batch = replay_batch(agent, env)
    batch = Batch(*[None if t is None else t.cuda() for t in cpu_batch])
    agent.update(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            agent.update(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(0.0)
