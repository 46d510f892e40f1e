"""Distributed rollouts on the session's local Ray: same data as local collection, learning,
and recovery from a runner that dies mid-run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from toolkit.agent import Rollout
from toolkit.envs import make_env
from toolkit.loops.on_policy import OnPolicyLoop
from toolkit.registry import registry
from toolkit.runs import MetricsLogger, RunSettings, read_metrics
from toolkit.training import build_config, evaluate_run, resume_training, start_training

torch.set_num_threads(1)
pytest.importorskip("ray")


def _on_policy_loop(cls: type, env_id: str, tmp_path: Path, workers: int = 0) -> Any:
    spec = registry.agent("ppo")
    config = build_config(spec, set_items=["num_envs=4", "rollout_steps=16", "minibatch_size=16", "hidden_sizes=16"])
    env = make_env(env_id)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    settings = RunSettings(agent="ppo", env=env_id, seed=3, workers=workers, envs_per_worker=2)
    tmp_path.mkdir()
    loop = cls(agent, config, settings, lambda: make_env(env_id), tmp_path, torch.device("cpu"), progress=False)
    loop.logger = MetricsLogger(tmp_path, tensorboard=False)
    return loop


def _assert_same_state(got: Any, expected: Any) -> None:
    """Two (nested) state dicts hold the same keys and equal tensors."""
    if isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            _assert_same_state(got[key], expected[key])
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected.cpu(), rtol=0, atol=0)
    else:
        assert got == expected


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_two_workers_give_the_rollout_of_local_collection(env_id: str, tmp_path: Path, ray_session: Any) -> None:
    from toolkit.distributed.rollouts import DistributedOnPolicyLoop

    local = _on_policy_loop(OnPolicyLoop, env_id, tmp_path / "local")
    remote = _on_policy_loop(DistributedOnPolicyLoop, env_id, tmp_path / "remote", workers=2)
    try:
        expected, got = local.collect(), remote.collect()
        # The runners were sent the actor-critic alone (no optimiser) and act with the learner's.
        sent = ray_session.get(remote.pool._weights)
        assert set(sent) == {"policy"}
        for runner in remote.runners:
            _assert_same_state(ray_session.get(runner.policy_state.remote()), remote.agent.policy_state_dict())
    finally:
        remote.pool.close()
        local.logger.close()
        remote.logger.close()
    assert isinstance(got, Rollout)
    for name in Rollout._fields:
        a, b = getattr(expected, name), getattr(got, name)
        assert (b.shape, b.dtype, b.device) == (a.shape, a.dtype, a.device), name
    # Env j of worker w is seeded like env w * M + j of a local run: the same first observations.
    torch.testing.assert_close(got.obs[0], expected.obs[0])
    assert got.mask.sum() == expected.mask.sum() == 4 * 16
    assert remote.step == local.step == 64
    # next_obs is each step's successor, where an episode did not end the next step's obs.
    carried = (got.terminated[:-1] + got.truncated[:-1]) == 0
    torch.testing.assert_close(got.next_obs[:-1][carried], got.obs[1:][carried])


def test_off_policy_transitions_match_the_local_buffer(tmp_path: Path, ray_session: Any) -> None:
    from toolkit.distributed.rollouts import DistributedOffPolicyLoop
    from toolkit.loops.off_policy import OffPolicyLoop

    spec = registry.agent("dqn")
    config = build_config(spec, set_items=["buffer_size=1000", "learning_starts=100", "batch_size=16"])
    env = make_env("CartPole-v1")
    loops = []
    for cls, workers in ((OffPolicyLoop, 0), (DistributedOffPolicyLoop, 2)):
        agent = spec.build(config, env.observation_space, env.action_space, "cpu")
        settings = RunSettings(agent="dqn", env="CartPole-v1", workers=workers, envs_per_worker=2,
                               log_every=0, checkpoint_every=0)
        run_dir = tmp_path / cls.__name__
        run_dir.mkdir()
        loops.append(cls(agent, config, settings, lambda: make_env("CartPole-v1"), run_dir, torch.device("cpu"),
                         progress=False))
    local, remote = loops
    local.run(300)
    remote.run(300)
    assert local.step == remote.step == 300 and len(local.buffer) == len(remote.buffer) == 300
    for name in ("obs", "actions", "rewards", "next_obs", "dones", "episode_step"):
        a, b = getattr(local.buffer, name), getattr(remote.buffer, name)
        assert (a.shape, a.dtype) == (b.shape, b.dtype), name
    # Both actions taken, episodes counted from 0 and ended by termination.
    assert set(remote.buffer.actions[:300].tolist()) == {0, 1}
    assert remote.buffer.episode_step[:300].min() == 0 and remote.buffer.dones[:300].sum() > 0
    assert read_metrics(remote.run_dir, "episode")
    # Random actions until learning starts, then the policy's: the learner's DQN counts the
    # steps its runner copies acted (its epsilon schedule), as the local one does.
    assert int(local.agent.acting_steps) == 200
    assert 0 < int(remote.agent.acting_steps) <= 200
    assert remote.updates == local.updates > 0  # updates_per_step per train_every steps, as locally


def _wait_for_replacement(ray: Any, runner: Any, pid: int) -> None:
    """Wait until Ray has replaced the killed runner (process ``pid``) with a new one."""
    for _ in range(600):
        try:
            if ray.get(runner.where.remote(), timeout=30)["pid"] != pid:
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        time.sleep(0.1)


def _off_policy_loop(agent_name: str, env_id: str, run_dir: Path, set_items: list[str], workers: int) -> Any:
    from toolkit.distributed.rollouts import DistributedOffPolicyLoop

    spec = registry.agent(agent_name)
    config = build_config(spec, set_items=set_items)
    env = make_env(env_id)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    env.close()
    settings = RunSettings(agent=agent_name, env=env_id, seed=5, workers=workers, envs_per_worker=2,
                           log_every=0, checkpoint_every=0)
    run_dir.mkdir()
    return DistributedOffPolicyLoop(agent, config, settings, lambda: make_env(env_id), run_dir, torch.device("cpu"),
                                    progress=False)


def test_runners_are_sent_the_policy_alone_also_after_a_restart(tmp_path: Path, ray_session: Any) -> None:
    """SAC's runners get its actor, not its critics, target critics or optimiser: a smaller
    publish, logged once; a runner Ray restarted gets the policy again before its sample counts."""
    from toolkit.distributed.rollouts import cpu_state, serialized_bytes

    ray = ray_session
    loop = _off_policy_loop("sac", "Pendulum-v1", tmp_path / "run", ["hidden_sizes=16"], 1)
    loop.logger = MetricsLogger(loop.run_dir, tensorboard=False)
    agent, pool = loop.agent, loop.pool
    with torch.no_grad():  # the learner's actor moves away from any freshly built copy's
        for p in agent.actor.parameters():
            p.add_(0.25)
    try:
        pool.publish(agent)
        pool.publish(agent)  # logged once
        sent = ray.get(pool._weights)
        assert set(sent) == {"actor"} == set(agent.policy_keys)
        full = serialized_bytes(cpu_state(agent.state_dict()))
        assert {"critic", "target_critic", "optimizer", "log_alpha"} <= set(agent.state_dict())
        [record] = read_metrics(loop.run_dir, "distributed")
        assert record["publish_bytes"] == serialized_bytes(sent) < full / 2, (record, full)
        assert record["policy_keys"] == ["actor"] and record["workers"] == 1

        def sample_and_compare() -> None:
            ref = pool.request(0, "sample_steps", 4, False)
            assert pool.get(0, ref, "sample_steps", 4, False)[2]["version"] == pool._version
            _assert_same_state(ray.get(pool.runners[0].policy_state.remote()), agent.policy_state_dict())

        sample_and_compare()
        before = ray.get(pool.runners[0].where.remote())["pid"]
        ray.kill(pool.runners[0], no_restart=False)
        _wait_for_replacement(ray, pool.runners[0], before)  # a fresh copy with its own random actor
        sample_and_compare()  # asked without weights, it acted with none: dropped, asked again with them
        assert pool.restarts == 1
    finally:
        pool.close()
        loop.logger.close()


def test_dqn_counts_the_runners_actions_without_acting_on_the_learner(tmp_path: Path, ray_session: Any) -> None:
    """The learner's epsilon counter advances by the policy-chosen steps it stored, and its
    agent never acts. One runner, so requests come one after another: each asks for random
    actions while the learner is below learning_starts, for the policy's from then on."""
    from toolkit.distributed.rollouts import OFF_POLICY_REQUEST_STEPS

    loop = _off_policy_loop("dqn", "CartPole-v1", tmp_path / "run",
                            ["buffer_size=1000", "learning_starts=100", "batch_size=16", "hidden_sizes=16"], 1)
    calls: list[Any] = []
    loop.agent.act = lambda *args, **kwargs: calls.append(args)  # type: ignore[method-assign]
    loop.run(300)
    per_request = OFF_POLICY_REQUEST_STEPS * 2  # 2 envs
    random_steps = -(-100 // per_request) * per_request  # whole random requests until step >= 100
    assert loop.step == 300 and loop.updates > 0 and random_steps < 300
    assert int(loop.agent.acting_steps) == 300 - random_steps  # 172 with requests of 32 steps
    assert calls == []


def _kill_runner_after(monkeypatch: pytest.MonkeyPatch, publishes: int, ray: Any) -> list[int]:
    """Kill runner 0 (Ray may restart it) when the learner publishes weights the n-th time."""
    from toolkit.distributed.rollouts import RunnerPool

    original = RunnerPool.publish
    count = [0]

    def publish(self: RunnerPool, agent: Any) -> None:
        original(self, agent)
        count[0] += 1
        if count[0] == publishes:
            before = ray.get(self.runners[0].where.remote())["pid"]
            ray.kill(self.runners[0], no_restart=False)
            # Wait for Ray's replacement, so a short run cannot finish before the loop meets it.
            _wait_for_replacement(ray, self.runners[0], before)

    monkeypatch.setattr(RunnerPool, "publish", publish)
    return count


@pytest.mark.parametrize("agent, env, steps, settings", [
    ("ppo", "CartPole-v1", 1024, ["rollout_steps=64", "minibatch_size=64", "epochs=1"]),
    ("sac", "Pendulum-v1", 600, ["learning_starts=200", "batch_size=32", "train_every=8"]),
])
def test_a_killed_runner_is_replaced_and_the_run_finishes(
    agent: str, env: str, steps: int, settings: list[str], tmp_path: Path, ray_session: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _kill_runner_after(monkeypatch, 3, ray_session)
    run, result = start_training(agent, env, steps=steps, device="cpu", run_dir=tmp_path / "run", progress=False,
                                 workers=2, set_items=settings, log_every=200, checkpoint_every=0)
    assert result.step >= steps and not result.interrupted
    events = read_metrics(run, "worker")
    started = [e["worker"] for e in events if e["event"] == "started"]
    assert [e["worker"] for e in events if e["event"] == "restarted"] == [0], events
    assert sorted(started) == [0, 0, 1]  # two runners, then runner 0's replacement
    assert read_metrics(run, "train")


def test_ctrl_c_keeps_the_checkpoint_and_the_run_resumes(tmp_path: Path, ray_session: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.distributed.rollouts import RunnerPool

    original = RunnerPool.publish

    def publish(self: RunnerPool, agent: Any) -> None:
        original(self, agent)
        if self.loop.step >= 256:
            self.loop._request_stop(2, None)  # what Ctrl-C does

    monkeypatch.setattr(RunnerPool, "publish", publish)
    settings = ["rollout_steps=64", "minibatch_size=64", "epochs=1"]
    run, result = start_training("ppo", "CartPole-v1", steps=1024, device="cpu", run_dir=tmp_path / "run",
                                 progress=False, workers=2, set_items=settings, checkpoint_every=0)
    assert result.interrupted and 256 <= result.step < 1024
    monkeypatch.setattr(RunnerPool, "publish", original)
    _, resumed = resume_training(run, progress=False)
    assert resumed.step >= 1024 and not resumed.interrupted


def test_num_envs_is_workers_times_envs_per_worker(tmp_path: Path, cli: Any) -> None:
    from conftest import assert_clean_error

    result = cli("train", "ppo", "--env", "CartPole-v1", "--workers", "2", "--envs-per-worker", "3",
                 "--set", "num_envs=4", "--run-dir", tmp_path / "run", "--no-progress")
    assert_clean_error(result, "each rollout holds 6 envs", "num_envs=4")
    assert not (tmp_path / "run").exists()


# --- learning with --workers 2: the local tests' settings and thresholds ---------------------------

def test_ppo_learns_cartpole_with_two_workers(tmp_path: Path, ray_session: Any) -> None:
    """tests/test_learning_pg.py's ppo-cartpole (8 envs x 32 steps) as 2 workers x 4 envs."""
    run, result = start_training(
        "ppo", "CartPole-v1", steps=60_000, seed=0, device="cpu", run_dir=tmp_path / "ppo", progress=False,
        checkpoint_every=0, workers=2, envs_per_worker=4, set_items=[
            "rollout_steps=32", "minibatch_size=256", "epochs=20", "gae_lambda=0.8", "gamma=0.98",
            "lr=1e-3", "lr_schedule=linear", "lr_decay_steps=60000",
        ],
    )
    assert result.step >= 60_000
    evaluation, _, _ = evaluate_run(run, episodes=10)
    print(f"ppo CartPole-v1 with 2 workers after {result.step} steps: {evaluation.mean:.1f} ± {evaluation.std:.1f}")
    assert evaluation.mean >= 475


def test_sac_learns_pendulum_with_two_workers(tmp_path: Path, ray_session: Any) -> None:
    """tests/test_learning.py's sac check (8,000 steps, learning from 1,000) with 2 workers."""
    run, result = start_training(
        "sac", "Pendulum-v1", steps=8_000, seed=0, device="cpu", run_dir=tmp_path / "sac", progress=False,
        checkpoint_every=0, workers=2, set_items=["learning_starts=1000"],
    )
    assert result.step == 8_000 and result.last_return is not None
    evaluation, _, _ = evaluate_run(run, episodes=10)
    print(f"sac Pendulum-v1 with 2 workers after 8000 steps: {evaluation.mean:.1f} ± {evaluation.std:.1f}")
    assert evaluation.mean > -400
    assert np.isfinite(evaluation.mean)
