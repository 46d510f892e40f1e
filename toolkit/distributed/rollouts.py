"""Training loops whose experience comes from Ray env-runner actors.

The learner stays where the driver is (on its CPU, or its GPU with ``--device cuda``); ``N``
:class:`~toolkit.distributed.env_runner.EnvRunner` actors step ``M`` environments each with
the latest policy weights. Agents need no Ray code: these loops are the local ones with
collection swapped out, so logging, evaluation, checkpoints and Ctrl-C behave the same.

* On-policy (:class:`DistributedOnPolicyLoop`): synchronous. Each update broadcasts the
  weights, every runner returns a ``T x M`` rollout, and the rollouts are joined along the env
  axis into one :class:`~toolkit.agent.Rollout` of ``N * M`` envs; the agent's ``num_envs``
  is therefore ``workers * envs_per_worker`` (`toolkit train` sets it).
* Off-policy (:class:`DistributedOffPolicyLoop`): asynchronous. One request per runner is in
  flight; whichever returns first has its transitions added to the learner's replay buffer,
  the learner makes the updates those steps are owed (``updates_per_step`` per ``train_every``
  env steps, as locally), and the runner gets its next request with fresh weights. Random
  actions before ``learning_starts`` are taken on the runners.
* Weights: what is published (once per change, in Ray's object store, read by every runner) is
  the agent's policy alone, :meth:`~toolkit.agent.Agent.policy_state_dict`: SAC's actor, not
  its critics, target critics or optimiser. Its pickled size is logged when a run (or
  a resumed one) first publishes (``{"kind": "distributed", "publish_bytes": ...}``).

Faults: runners are created with unlimited restarts. A request to a runner that died raises
:class:`ray.exceptions.RayActorError`; the loop logs ``{"kind": "worker", "event":
"restarted"}``, says so on the terminal, sends the restarted runner the latest policy and asks
again (a runner that acted without one, having restarted between two requests, is asked again too).
A checkpoint holds the agent, the replay buffer and the counters, not the runners' episodes
in progress: a resumed distributed run starts fresh episodes (exact resume is a local-run
property).
"""

from __future__ import annotations

import pickle
import sys
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from toolkit.agent import Agent, Rollout
from toolkit.buffers import FrameReplayBuffer
from toolkit.distributed.cluster import init_ray
from toolkit.distributed.env_runner import EnvRunner, Sample
from toolkit.errors import ToolkitError
from toolkit.loops.base import TrainingLoop
from toolkit.loops.collect import EnvBatch, rollout_from_columns, space_types
from toolkit.loops.off_policy import OffPolicyLoop, owed_updates
from toolkit.loops.on_policy import OnPolicyLoop
from toolkit.loops.replayable_env import ReplayableEnv
from toolkit.progress import TrainingProgress

#: Env steps per env in one off-policy request: small enough that runners act with recent
#: weights, large enough that a request's overhead (about a millisecond) does not dominate.
OFF_POLICY_REQUEST_STEPS = 32


def on_policy_num_envs(workers: int, envs_per_worker: int) -> int:
    """The agent's ``num_envs`` in a distributed on-policy run: one rollout holds every
    runner's envs."""
    return workers * envs_per_worker


def distributed_config(config: Any, default: Any, workers: int, envs_per_worker: int) -> Any:
    """An on-policy ``config`` with ``num_envs = workers * envs_per_worker`` (so checks such as
    PPO's minibatch split and the lr schedule see the real rollout size). A ``num_envs`` the
    user set to something else is refused rather than silently replaced."""
    from dataclasses import replace

    from toolkit.config import validate

    expected = on_policy_num_envs(workers, envs_per_worker)
    if config.num_envs not in (expected, default.num_envs):
        raise ToolkitError(
            f"With --workers {workers} --envs-per-worker {envs_per_worker} each rollout holds {expected} envs, "
            f"but num_envs={config.num_envs} was asked for; drop num_envs or choose --envs-per-worker instead."
        )
    config = replace(config, num_envs=expected)
    validate(config)
    return config


def cpu_state(value: Any) -> Any:
    """``value`` (a state dict, nested) with every tensor on the CPU, for the runners (the
    object store copies it when it is put, so the learner's next update cannot change it)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: cpu_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_state(v) for v in value)
    return value


def serialized_bytes(value: Any) -> int:
    """Bytes of ``value`` pickled: about what Ray's object store holds for it."""
    return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


class RunnerPool:
    """``settings.workers`` env-runner actors, the weights they last saw, and their restarts."""

    def __init__(self, loop: TrainingLoop, config: Any) -> None:
        from toolkit.config import to_dict

        s = loop.settings
        self.ray = ray = init_ray(s.address)
        self.loop = loop
        self.restarts = 0
        cpus = ray.cluster_resources().get("CPU", 1.0)
        # One core per runner when the cluster has them; otherwise share what there is, so
        # more runners than cores still start instead of waiting forever.
        per_runner = min(1.0, cpus / s.workers)
        remote = ray.remote(EnvRunner).options(
            num_cpus=per_runner, max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD"
        )
        self.runners = [
            remote.remote(s.agent, to_dict(config), s.env, s.envs_per_worker, s.seed, i, s.env_options)
            for i in range(s.workers)
        ]
        self._weights: Any = None
        self._version = 0
        self._seen = [-1] * s.workers
        self._incarnations: list[str | None] = [None] * s.workers

    def publish(self, agent: Agent) -> None:
        """Put the agent's current policy (:meth:`~toolkit.agent.Agent.policy_state_dict`: what
        acting needs, not its critics, targets or optimisers) in the object store, once for
        every runner. The first publish logs its size (``kind: distributed``)."""
        state = cpu_state(agent.policy_state_dict())
        if self._version == 0:
            self._log_publish(agent, state)
        self._weights = self.ray.put(state)
        self._version += 1

    def _log_publish(self, agent: Agent, state: dict[str, Any]) -> None:
        """``{"kind": "distributed", "publish_bytes": ...}``: the serialized size of one publish
        (pickled: about what Ray stores), the runners, and the keys sent (null: the whole state)."""
        loop = self.loop
        if loop.logger is None:
            return
        settings = loop.settings
        keys = None if agent.policy_keys is None else list(agent.policy_keys)
        loop.logger.log(loop.step, "distributed", {
            "workers": settings.workers, "envs_per_worker": settings.envs_per_worker,
            "policy_keys": keys, "publish_bytes": serialized_bytes(state),
        })

    def request(self, worker: int, method: str, *args: Any) -> Any:
        """Call ``method`` on a runner, with the weights if it has not seen the latest."""
        weights = None
        if self._seen[worker] != self._version:
            weights, self._seen[worker] = self._weights, self._version
        return getattr(self.runners[worker], method).remote(*args, self._version, weights)

    def get(self, worker: int, ref: Any, method: str, *args: Any) -> Sample:
        """``ray.get(ref)``; when the runner died, note the restart and ask the new one again."""
        while True:
            try:
                sample = self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                self.restarted(worker)
            else:
                if self.accept(worker, sample):
                    return sample
            ref = self.request(worker, method, *args)

    def accept(self, worker: int, sample: Sample) -> bool:
        """Whether ``sample`` is usable. A runner can die and be restarted between two requests
        without any request failing: its new incarnation shows it; and if it acted without
        ever getting weights, the sample is dropped and it is asked again, with weights."""
        info = sample[2]
        known = self._incarnations[worker]
        if known is not None and known != info["incarnation"]:
            self.restarted(worker)
        if self._incarnations[worker] is None:
            self._log(worker, "started", node=info["node"])
        self._incarnations[worker] = info["incarnation"]
        if info["version"] < 0:
            self._seen[worker] = -1
            return False
        return True

    def restarted(self, worker: int) -> None:
        """Record that ``worker`` died (Ray restarts it) and make it get the weights again."""
        self.restarts += 1
        self._seen[worker] = -1
        self._incarnations[worker] = None
        self._log(worker, "restarted")
        loop = self.loop
        print(f"env runner {worker} died at step {loop.step}; Ray restarted it and training continues",
              file=sys.stderr, flush=True)

    def _log(self, worker: int, event: str, **values: Any) -> None:
        """``{"kind": "worker", "event": ..., "worker": ...}`` in the run's metrics."""
        loop = self.loop
        if loop.logger is not None:
            loop.logger.log(loop.step, "worker", {"event": event, "worker": worker, **values})

    def close(self) -> None:
        """Stop the runners (they hold no state worth keeping)."""
        for runner in self.runners:
            self.ray.kill(runner, no_restart=True)


class _RunnerLoop(TrainingLoop):
    """What both distributed loops add to a local one: the runner pool, closed at the end.
    Constructed with exactly the local loop's arguments."""

    config: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = RunnerPool(self, self.config)

    @property
    def runners(self) -> list[Any]:
        """The env-runner actor handles (tests kill them to check recovery)."""
        return self.pool.runners

    def run(self, total_steps: int) -> Any:
        try:
            return super().run(total_steps)
        finally:
            self.pool.close()


class DistributedOnPolicyLoop(_RunnerLoop, OnPolicyLoop):
    """:class:`~toolkit.loops.on_policy.OnPolicyLoop` with rollouts from ``workers`` runners.

    It keeps no envs of its own, so its checkpoint's env list is empty: a resumed run starts
    fresh episodes on the runners."""

    def _make_envs(self, make_env: Callable[[], Any]) -> list[ReplayableEnv]:
        settings = self.settings
        expected = on_policy_num_envs(settings.workers, settings.envs_per_worker)
        if self.config.num_envs != expected:
            raise ToolkitError(
                f"A rollout from {settings.workers} workers x {settings.envs_per_worker} envs holds {expected} envs, "
                f"but the agent's num_envs is {self.config.num_envs}; set num_envs={expected} or change --envs-per-worker."
            )
        env = make_env()
        self.discrete, self.obs_dtype = space_types(env.observation_space, env.action_space)
        env.close()
        return []

    def collect(self) -> Rollout:
        """One rollout from every runner with the current weights, joined along the env axis."""
        cfg, pool = self.config, self.pool
        pool.publish(self.agent)
        args = (cfg.rollout_steps, cfg.complete_episodes)
        refs = [pool.request(i, "sample_rollout", *args) for i in range(len(pool.runners))]
        samples = [pool.get(i, ref, "sample_rollout", *args) for i, ref in enumerate(refs)]
        start, workers = self.step, len(samples)
        for columns, episodes, _ in samples:
            for episode_return, length, taken in episodes:  # runners step side by side
                self.log_episode(episode_return, length, start + taken * workers)
            self.step += int(columns["mask"].sum())
        joined = join_along_envs([sample[0] for sample in samples])
        return rollout_from_columns(joined, self.device, self.obs_dtype, self.discrete)


def join_along_envs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate time-major columns along the env axis, padding shorter rollouts (possible
    with ``complete_episodes``) with masked-out zeros."""
    length = max(p["mask"].shape[0] for p in parts)

    def padded(array: np.ndarray) -> np.ndarray:
        pad = [(0, length - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
        return np.pad(array, pad)

    return {k: np.concatenate([padded(p[k]) for p in parts], axis=1) for k in parts[0]}


class DistributedOffPolicyLoop(_RunnerLoop, OffPolicyLoop):
    """:class:`~toolkit.loops.off_policy.OffPolicyLoop` fed asynchronously by ``workers`` runners.

    Agents that read observation histories or n-step windows need each episode stored in one
    piece, so their transitions wait on the learner until their episode ends (or the runner
    is replaced); so do those of envs that observe frame stacks, whose buffer
    (:class:`~toolkit.buffers.FrameReplayBuffer`) stores each frame once only when an episode's
    steps arrive one after another. Everyone else's go into the buffer as they arrive.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for env in self.envs.envs:
            env.env.close()  # only its spaces were needed: the runners step the envs
        self.whole_episodes = (
            self.agent.history_length > 1 or self.agent.n_step > 1 or isinstance(self.buffer, FrameReplayBuffer)
        )
        self._pending: dict[tuple[int, int], list[tuple[Any, ...]]] = defaultdict(list)

    def _make_envs(self, make_env: Callable[[], Any]) -> EnvBatch:
        if self.config.num_envs != 1:
            raise ToolkitError(
                f"With --workers the env runners step the envs; drop num_envs={self.config.num_envs} and pass "
                "--envs-per-worker instead."
            )
        return super()._make_envs(make_env)

    def extra_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "numpy_rng": self.rng.bit_generator.state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["numpy_rng"]

    def _request(self, worker: int, in_flight: dict[Any, tuple[int, bool]]) -> None:
        random_actions = self.step < self.config.learning_starts
        ref = self.pool.request(worker, "sample_steps", OFF_POLICY_REQUEST_STEPS, random_actions)
        in_flight[ref] = (worker, random_actions)

    def _flush(self, stream: tuple[int, int]) -> None:
        for transition in self._pending.pop(stream, []):
            self.buffer.add(*transition)

    def _store(self, worker: int, sample: Sample, total_steps: int, policy_acted: bool) -> None:
        """Add a runner's transitions (time-major, as a local run would have taken them) up to
        ``total_steps``, and log its finished episodes.

        When the runner's copy of the agent chose the actions, the learner's agent is told how
        many it stored (:meth:`~toolkit.agent.Agent.record_acting`): agents whose schedules
        count their own actions (DQN's epsilon) advance as in a local run without acting on
        observations it would throw away, and the next policy they publish carries the count
        to the runners (``acting_steps`` is one of DQN's policy keys).
        """
        columns, episodes, _ = sample
        start = self.step
        obs, actions, rewards, next_obs = columns["obs"], columns["actions"], columns["rewards"], columns["next_obs"]
        terminated, truncated, episode_step = columns["terminated"], columns["truncated"], columns["episode_step"]
        steps, envs = rewards.shape
        for t in range(steps):
            for j in range(envs):
                if self.step >= total_steps:
                    break
                transition = (obs[t, j], actions[t, j], float(rewards[t, j]), next_obs[t, j],
                              bool(terminated[t, j]), int(episode_step[t, j]))
                self.step += 1
                if not self.whole_episodes:
                    self.buffer.add(*transition)
                    continue
                self._pending[(worker, j)].append(transition)
                if terminated[t, j] or truncated[t, j]:
                    self._flush((worker, j))
        if policy_acted and self.step > start:
            self.agent.record_acting(self.step - start)
        for episode_return, length, taken in episodes:
            if start + taken <= self.step:
                self.log_episode(episode_return, length, start + taken)

    def _learn(self) -> None:
        cfg = self.config
        owed = owed_updates(self.config, self.step)
        if self.updates >= owed or len(self.buffer) == 0:
            return
        while self.updates < owed:
            batch = self.buffer.sample(cfg.batch_size, history=self.agent.history_length, n_step=self.agent.n_step)
            self.accumulate(self.agent.update(batch))
            self.updates += 1
        self.pool.publish(self.agent)

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        ray, pool = self.pool.ray, self.pool
        self.log_replay_memory()
        pool.publish(self.agent)
        in_flight: dict[Any, tuple[int, bool]] = {}
        restarts = pool.restarts
        for i in range(len(pool.runners)):
            self._request(i, in_flight)
        while self.step < total_steps and not self.stop_requested:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            worker, random_actions = in_flight.pop(ready[0])
            try:
                sample = ray.get(ready[0])
                usable = pool.accept(worker, sample) or random_actions
            except ray.exceptions.RayActorError:
                pool.restarted(worker)
                usable = False
            if pool.restarts != restarts:  # its episodes in progress ended with it
                restarts = pool.restarts
                for j in range(self.settings.envs_per_worker):
                    self._flush((worker, j))
            if not usable:
                self._request(worker, in_flight)
                continue
            before = self.step
            self._store(worker, sample, total_steps, policy_acted=not random_actions)
            self._learn()
            self._request(worker, in_flight)
            self.after_steps(before)
            bar.update(self.step, self.last_return)

    def run(self, total_steps: int) -> Any:
        try:
            return super().run(total_steps)
        finally:
            self.pool.close()
