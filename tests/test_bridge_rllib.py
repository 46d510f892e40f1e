"""The RLlib bridge (rllib-ppo, -appo, -sac, -dqn) end to end, on one small shared Ray.

RLlib is heavy for a two-core machine: every run uses tiny batches and networks, and the
whole file shares the session's Ray (the ``ray_session`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray.rllib")

from conftest import assert_clean_error  # noqa: E402
from toolkit.external import NATIVE_FOLDER  # noqa: E402
from toolkit.loops.external import ExternalLoop  # noqa: E402
from toolkit.runs import BEST_CHECKPOINT, CHECKPOINT, load_checkpoint, read_metrics  # noqa: E402
from toolkit.session import open_trained_run  # noqa: E402
from toolkit.training import evaluate_run, resume_training, start_training  # noqa: E402
from toolkit_bridges.rllib import STATE_FILE, episode_items, spread_episodes  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("ray_session", "one_thread_module"),
    # Every algorithm build registers RLlib's own env wrapper with gymnasium again.
    pytest.mark.filterwarnings("ignore:.*Overriding environment rllib-single-agent-env"),
]

#: Tiny settings per agent: (env, --set items, steps of the first run, steps after resume).
#: DQN samples at least 1,000 steps per RLlib iteration (its min_sample_timesteps_per_iteration);
#: the replay agents update every few steps (training_intensity) to keep the test short.
SMOKE = {
    "rllib-ppo": ("CartPole-v1", ["train_batch_size_per_learner=200", "minibatch_size=64", "num_epochs=2",
                                  "hidden_sizes=32,32"], 400, 800),
    "rllib-appo": ("CartPole-v1", ["train_batch_size_per_learner=100", "hidden_sizes=32,32"], 300, 600),
    "rllib-sac": ("Pendulum-v1", ["num_steps_sampled_before_learning_starts=100", "train_batch_size_per_learner=32",
                                  "training_intensity=8", "replay_buffer_capacity=2000", "hidden_sizes=32,32"], 300, 500),
    "rllib-dqn": ("CartPole-v1", ["num_steps_sampled_before_learning_starts=100", "train_batch_size_per_learner=32",
                                  "training_intensity=4", "replay_buffer_capacity=2000", "hidden_sizes=32,32"],
                  1000, 2000),
}


def _native_state(run: Path) -> dict:
    name = load_checkpoint(run / CHECKPOINT)["agent"]["native"]
    return json.loads((run / NATIVE_FOLDER / name / STATE_FILE).read_text())


@pytest.mark.parametrize("agent", sorted(SMOKE))
def test_trains_evaluates_and_resumes_through_its_native_checkpoint(agent: str, tmp_path: Path) -> None:
    env, settings, steps, more = SMOKE[agent]
    run = tmp_path / "run"
    start_training(agent, env, steps=steps, device="cpu", run_dir=run, set_items=settings, eval_every=steps,
                   checkpoint_every=steps, log_every=steps // 2, progress=False, eval_episodes=2)
    first = load_checkpoint(run / CHECKPOINT)["counters"]["step"]
    assert first >= steps
    assert _native_state(run)["env_steps_sampled_lifetime"] == first  # RLlib's own count, reported truly
    assert load_checkpoint(run / CHECKPOINT)["agent"]["library"] == "ray"
    episodes = read_metrics(run, "episode")
    assert episodes and all(1 <= row["step"] <= first for row in episodes)
    assert all(row["length"] >= 1 for row in episodes)
    assert read_metrics(run, "train") and read_metrics(run, "eval")

    latest, _, _ = evaluate_run(run, episodes=1)
    best, _, _ = evaluate_run(run, episodes=1, checkpoint="best")
    assert len(latest.returns) == len(best.returns) == 1

    _, result = resume_training(run, steps=more, progress=False)
    assert result.step >= more
    # RLlib restored its lifetime counter: it counts on from the first run's steps, not from 0.
    assert _native_state(run)["env_steps_sampled_lifetime"] == result.step
    assert max(row["step"] for row in read_metrics(run, "episode")) > first


def test_learner_variables_rllib_does_not_checkpoint_are_restored(tmp_path: Path) -> None:
    """SAC's temperature (and PPO's KL coefficient) are Learner variables outside RLlib's
    checkpoint; the bridge keeps them so a resumed run does not restart them."""
    from functools import partial

    from toolkit.config import apply_overrides
    from toolkit.envs import make_env
    from toolkit.external import EnvContext
    from toolkit_bridges.rllib import make_sac
    from toolkit_bridges.rllib_spec import RLlibSACConfig

    settings = dict(item.split("=") for item in SMOKE["rllib-sac"][1])
    config = apply_overrides(RLlibSACConfig(), settings)
    env = make_env("Pendulum-v1")
    context = EnvContext(env_id="Pendulum-v1", make_env=partial(make_env, "Pendulum-v1"), seed=0,
                         device=torch.device("cpu"), total_steps=300)
    agent = make_sac(config, env.observation_space, env.action_space, "cpu")
    agent.start(context)
    agent.learn(300)
    trained = agent.learner_variables()["curr_log_alpha"]
    assert trained != 0.0  # initial_alpha=1.0 is log 0; the temperature moved
    agent.save_native(tmp_path)
    agent.close()
    again = make_sac(config, env.observation_space, env.action_space, "cpu")
    again.load_native(tmp_path)
    again.start(context)
    assert again.learner_variables()["curr_log_alpha"] == pytest.approx(trained)
    again.close()


def test_acting_keeps_to_the_action_space(tmp_path: Path) -> None:
    """After load_native alone (as `toolkit eval` does), Box actions are unsquashed into the
    env's bounds and discrete ones are integers."""
    for agent in ("rllib-sac", "rllib-ppo"):
        env, settings, _, _ = SMOKE[agent]
        run = tmp_path / agent
        start_training(agent, env, steps=100 if agent == "rllib-sac" else 200, device="cpu", run_dir=run,
                       set_items=settings, checkpoint_every=0, log_every=100, progress=False, eval_episodes=1)
        session, _ = open_trained_run(run)
        obs = torch.randn(64, 3 if env == "Pendulum-v1" else 4)
        for deterministic in (True, False):
            actions = session.agent.act(obs, deterministic=deterministic)
            if env == "Pendulum-v1":
                assert actions.dtype == torch.float32 and actions.shape == (64, 1)
                assert actions.abs().max() <= 2.0
            else:
                assert actions.dtype == torch.long and set(actions.tolist()) <= {0, 1}


def test_training_time_acting_matches_the_checkpoint(tmp_path: Path) -> None:
    """The evaluation during training (the learner's weights) and one from the checkpoint
    (`toolkit eval`) act alike: the same episodes give the same returns."""
    env, settings, _, _ = SMOKE["rllib-ppo"]
    run = tmp_path / "run"
    start_training("rllib-ppo", env, steps=400, device="cpu", run_dir=run, set_items=settings, eval_every=400,
                   progress=False, eval_episodes=3)
    during = read_metrics(run, "eval")[-1]
    again, _, _ = evaluate_run(run, episodes=3, seed=1_000_000)  # the loop's evaluation seed (seed 0)
    assert again.mean == pytest.approx(during["return_mean"])


def test_ppo_learns_cartpole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuned CartPole preset reaches an evaluation return of 475 within the budget, and
    the run stops at the first evaluation that does (its STOP file)."""
    original = ExternalLoop.evaluate

    def evaluate_and_stop_when_solved(self: ExternalLoop):
        result = original(self)
        if result.mean >= 475:
            (self.run_dir / "STOP").touch()
        return result

    monkeypatch.setattr(ExternalLoop, "evaluate", evaluate_and_stop_when_solved)
    run = tmp_path / "run"
    start_training("rllib-ppo", "CartPole-v1", steps=40_000, seed=0, device="cpu", run_dir=run, preset=True,
                   eval_every=2_000, checkpoint_every=0, log_every=2_000, progress=False, eval_episodes=5)
    best = max(row["return_mean"] for row in read_metrics(run, "eval"))
    assert best >= 475, read_metrics(run, "eval")
    best_run, _, _ = evaluate_run(run, episodes=5, checkpoint="best")
    assert load_checkpoint(run / BEST_CHECKPOINT)["agent"]["native"].startswith("best-step-")
    assert best_run.mean >= 400


def test_one_remote_env_runner_trains(tmp_path: Path) -> None:
    """--workers 1: RLlib samples on one env-runner actor (the env made there by the toolkit)."""
    env, settings, _, _ = SMOKE["rllib-ppo"]
    run = tmp_path / "run"
    start_training("rllib-ppo", env, steps=400, device="cpu", run_dir=run, set_items=settings, workers=1,
                   checkpoint_every=400, log_every=200, progress=False, eval_episodes=1)
    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] >= 400
    assert read_metrics(run, "episode") and read_metrics(run, "train")


def test_bad_input_is_one_sentence(cli, tmp_path: Path) -> None:
    assert_clean_error(cli("train", "rllib-dqn", "--env", "Pendulum-v1", "--run-dir", tmp_path / "a"),
                       "rllib-dqn", "discrete actions")
    assert_clean_error(cli("train", "rllib-ppo", "--env", "CartPole-v1", "--set", "lr=fast", "--run-dir", tmp_path / "b"),
                       "'lr' expects float", "'fast'")
    assert_clean_error(cli("train", "rllib-ppo", "--env", "CartPole-v1", "--set", "learning_rate=0.1",
                           "--run-dir", tmp_path / "c"), "learning_rate", "not a setting")
    assert_clean_error(cli("train", "rllib-ppo", "--env", "CartPole-v1", "--set", "minibatch_size=9000",
                           "--run-dir", tmp_path / "d"), "minibatch_size", "train_batch_size_per_learner")


def test_missing_rllib_says_how_to_install(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ray without its rllib extra: building an agent is one sentence naming the extra."""
    monkeypatch.setitem(__import__("sys").modules, "ray.rllib", None)  # `import ray.rllib` now fails
    assert_clean_error(cli("train", "rllib-ppo", "--env", "CartPole-v1", "--run-dir", tmp_path / "r"),
                       "RLlib cannot be imported", "pip install 'toolkit-rl[rllib]'")


def test_episodes_are_spread_over_the_iteration_that_finished_them() -> None:
    assert spread_episodes([(1.0, 5), (2.0, 7)], before=100, sampled=200) == [(1.0, 5, 200), (2.0, 7, 300)]
    assert spread_episodes([(1.0, 5)], before=0, sampled=0) == [(1.0, 5, 1)]
    assert spread_episodes([], before=0, sampled=50) == []


def test_episode_series_of_one_or_none_are_read() -> None:
    assert episode_items([(1.0, 5), (2.0, 7)]) == [(1.0, 5), (2.0, 7)]
    assert episode_items((3.0, 9)) == [(3.0, 9)]  # RLlib unwraps a series of one
    assert episode_items(float("nan")) == episode_items(None) == []
