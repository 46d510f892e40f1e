"""An env runner: a Ray actor that steps a few environments with the latest policy weights.

It builds its own copy of the agent from the registry on the worker (so entry points are
resolved where the code runs), always on the CPU, and gathers experience with the same
:class:`~toolkit.loops.collect.EnvBatch` the local loops use. The learner sends its policy
(:meth:`~toolkit.agent.Agent.policy_state_dict`, the :attr:`~toolkit.agent.Agent.policy_keys`
of its state) along with a request whenever it changed since this runner last saw it; the
copy loads that alone. Its other parts (critics, target networks, optimisers) are built from
the config like the rest but never loaded nor used: a runner never learns. Plain Python:
:mod:`toolkit.distributed.rollouts` wraps it with ``ray.remote``.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import numpy as np

#: What a request returns: time-major numpy columns (see :data:`toolkit.loops.collect.COLUMNS`)
#: of ``T`` steps from the runner's ``M`` envs; each finished episode as ``(return, length,
#: steps)``, ``steps`` counting the runner's env steps of this request; and the runner's
#: ``incarnation`` (new after every restart), the ``version`` of the weights it acted with
#: (-1: none yet) and the Ray ``node`` it runs on.
Sample = tuple[dict[str, np.ndarray], list[tuple[float, int, int]], dict[str, Any]]


class EnvRunner:
    """``num_envs`` environments of ``env_id`` and a CPU copy of the agent ``agent_name``.

    Env ``j`` of worker ``w`` is seeded ``seed + w * num_envs + j``: the envs of N runners are
    seeded exactly like the N * M envs of a local on-policy run.
    """

    def __init__(self, agent_name: str, agent_config: dict[str, Any], env_id: str, num_envs: int, seed: int,
                 worker_index: int, env_options: Any = None) -> None:
        import torch

        from toolkit.config import from_dict
        from toolkit.envs import make_env
        from toolkit.loops.collect import EnvBatch
        from toolkit.registry import registry

        torch.set_num_threads(1)  # a runner is one core's worth of work
        self.worker_index = worker_index
        first_seed = seed + worker_index * num_envs
        torch.manual_seed(first_seed)
        self.rng = np.random.default_rng(first_seed)  # random actions before learning starts
        self.batch = EnvBatch.make(lambda: make_env(env_id, options=env_options), num_envs, first_seed)
        spec = registry.agent(agent_name)
        config = from_dict(spec.config, agent_config)
        self.agent = spec.build(config, self.batch.observation_space, self.batch.action_space, "cpu")
        self._act = self.batch.policy(self.agent, "cpu")
        self.incarnation = uuid.uuid4().hex  # a restarted runner is a new incarnation
        self.version = -1
        self.node = self.where()["node_id"]

    def where(self) -> dict[str, Any]:
        """Host, process and Ray node of this runner (for logs and tests)."""
        import ray

        return {"host": socket.gethostname(), "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def policy_state(self) -> dict[str, Any]:
        """The policy this runner acts with (for tests: what it was sent)."""
        return self.agent.policy_state_dict()

    def _sample(self, act: Any, steps: int, version: int, weights: dict[str, Any] | None,
                complete_episodes: bool = False) -> Sample:
        if weights is not None:
            self.agent.load_policy_state_dict(weights)
            self.version = version
        episodes: list[tuple[float, int, int]] = []
        columns = self.batch.run(act, steps, lambda ret, length, taken: episodes.append((ret, length, taken)),
                                 complete_episodes)
        return columns, episodes, {"incarnation": self.incarnation, "version": self.version, "node": self.node}

    def sample_rollout(self, steps: int, complete_episodes: bool, version: int = -1,
                       weights: dict[str, Any] | None = None) -> Sample:
        """An on-policy rollout of ``steps`` steps per env (longer with ``complete_episodes``),
        after loading the policy ``weights`` (numbered ``version``) when they are sent."""
        return self._sample(self._act, steps, version, weights, complete_episodes)

    def sample_steps(self, steps: int, random_actions: bool, version: int = -1,
                     weights: dict[str, Any] | None = None) -> Sample:
        """``steps`` off-policy steps per env: uniformly random actions before learning starts,
        the policy's afterwards."""
        return self._sample(self._random_actions if random_actions else self._act, steps, version, weights)

    def _random_actions(self, obs: np.ndarray) -> np.ndarray:
        space, n = self.batch.action_space, len(obs)
        if self.batch.discrete:
            return self.rng.integers(space.n, size=n)
        return self.rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)
