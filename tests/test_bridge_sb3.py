"""The stable-baselines3 bridges (``sb3-sac``, ``sb3-td3``, ``sb3-ppo``, ``sb3-a2c``, ``sb3-dqn``)
end to end: training through the toolkit's run, evaluation of the native checkpoints, resume,
the schedules over the whole run, learning CartPole, and clean errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

pytest.importorskip("stable_baselines3")

from conftest import assert_clean_error  # noqa: E402
from toolkit.external import NATIVE_FOLDER, EnvContext  # noqa: E402
from toolkit.loops.external import ExternalLoop  # noqa: E402
from toolkit.registry import library_version  # noqa: E402
from toolkit.runs import CHECKPOINT, load_checkpoint, read_metrics  # noqa: E402
from toolkit.training import evaluate_run, resume_training, start_training  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")

#: Each bridge on an env of its action space, with networks and budgets small enough for CI.
BRIDGES = {
    "sb3-sac": ("Pendulum-v1", ["net_arch=32,32", "learning_starts=50", "batch_size=32", "buffer_size=2000"]),
    "sb3-td3": ("Pendulum-v1", ["net_arch=32,32", "learning_starts=50", "batch_size=32", "buffer_size=2000",
                                "action_noise_std=0.1"]),
    "sb3-ppo": ("CartPole-v1", ["net_arch=32", "n_steps=64", "batch_size=32", "n_epochs=2", "n_envs=2"]),
    "sb3-a2c": ("Pendulum-v1", ["net_arch=32", "n_steps=8", "learning_rate_schedule=linear"]),
    "sb3-dqn": ("CartPole-v1", ["net_arch=32", "learning_starts=50", "buffer_size=2000", "target_update_interval=100"]),
}
OFF_POLICY = ("sb3-sac", "sb3-td3", "sb3-dqn")
#: Statistics each algorithm logs in stable-baselines3 (its train() methods).
STATISTICS = {
    "sb3-sac": ("actor_loss", "critic_loss", "ent_coef"),
    "sb3-td3": ("actor_loss", "critic_loss"),
    "sb3-ppo": ("loss", "value_loss", "entropy_loss", "clip_fraction"),
    "sb3-a2c": ("policy_loss", "value_loss", "entropy_loss"),
    "sb3-dqn": ("loss", "exploration_rate"),
}


@pytest.mark.parametrize("agent", list(BRIDGES))
def test_a_bridge_trains_evaluates_and_resumes_from_its_native_checkpoint(agent: str, tmp_path: Path) -> None:
    from stable_baselines3.common.save_util import load_from_zip_file

    env, settings = BRIDGES[agent]
    run = tmp_path / "run"
    start_training(agent, env, steps=300, device="cpu", set_items=settings, run_dir=run, eval_every=150,
                   checkpoint_every=150, log_every=150, eval_episodes=1, progress=False)
    first = load_checkpoint(run / CHECKPOINT)
    first_step = int(first["counters"]["step"])
    assert first_step >= 300 and first["agent"]["library"] == "stable-baselines3"
    assert first["agent"]["native"] == f"step-{first_step}"
    assert len(read_metrics(run, "eval")) == 2 and read_metrics(run, "episode")
    trained = read_metrics(run, "train")
    # The library's statistics, without their "train/" or "rollout/" prefix.
    assert {"n_updates", "learning_rate", *STATISTICS[agent]} <= set(trained[-1])
    if agent == "sb3-a2c":  # its linear learning rate decays over the run's 300 steps, not over each chunk
        assert trained[0]["learning_rate"] == pytest.approx(7e-4 * (1 - trained[0]["step"] / 300), rel=1e-5)

    latest, _, _ = evaluate_run(run, episodes=1)
    best, _, _ = evaluate_run(run, episodes=1, checkpoint="best")
    assert len(latest.returns) == len(best.returns) == 1

    resume_training(run, steps=first_step + 150, progress=False)
    state = load_checkpoint(run / CHECKPOINT)
    step = int(state["counters"]["step"])
    assert step >= first_step + 150
    native = run / NATIVE_FOLDER / state["agent"]["native"]
    data, _, _ = load_from_zip_file(native / "model.zip", device="cpu")
    assert data["num_timesteps"] == step  # the library counted on from the checkpoint, not from 0
    assert "run_total_steps" not in data  # model.zip stays plain stable-baselines3
    updates = [row["n_updates"] for row in read_metrics(run, "train") if "n_updates" in row]
    assert updates == sorted(updates) and updates[-1] > trained[-1]["n_updates"]
    if agent in OFF_POLICY:  # the replay buffer came back too: it holds every step of the run
        from stable_baselines3.common.save_util import load_from_pkl

        assert load_from_pkl(native / "replay_buffer.pkl").pos == step
    assert sorted(p.name for p in (run / NATIVE_FOLDER).iterdir()) == sorted(
        {state["agent"]["native"], load_checkpoint(run / "checkpoints" / "best.pt")["agent"]["native"]})


def test_schedules_span_the_run_not_each_chunk() -> None:
    """DQN's epsilon decays over exploration_fraction of the run's --steps however small the
    chunks the loop asks for (stable-baselines3 alone would end it inside the first chunk)."""
    import gymnasium as gym

    from toolkit.envs import make_env
    from toolkit_bridges.sb3 import DQN, SB3Agent
    from toolkit_bridges.sb3_spec import SB3DQNConfig

    env = gym.make("CartPole-v1")
    config = SB3DQNConfig(exploration_fraction=0.5, learning_starts=50, buffer_size=1000, net_arch=(16,))
    agent = SB3Agent(DQN, config, env.observation_space, env.action_space, "cpu")
    agent.start(EnvContext("CartPole-v1", partial(make_env, "CartPole-v1"), seed=0, device=torch.device("cpu"),
                           total_steps=1_000))
    try:
        rates = [agent.learn(100).metrics["exploration_rate"] for _ in range(5)]
    finally:
        agent.close()
    # Linear from 1 at step 0 to 0.05 at step 500: 0.81 after 100 steps, 0.05 after 500.
    assert rates == pytest.approx([0.81, 0.62, 0.43, 0.24, 0.05], abs=1e-6)


def test_sb3_ppo_learns_cartpole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rl-zoo's tuned CartPole PPO through the bridge reaches an evaluation of 475; the run
    stops at the first evaluation that does (see PPO_CARTPOLE_STEPS for the measured budget)."""
    evaluate = ExternalLoop.evaluate

    def stop_once_solved(loop: ExternalLoop):
        result = evaluate(loop)
        if result.mean >= 475:
            loop._stop_requested = True  # what a STOP file does: checkpoint and return
        return result

    monkeypatch.setattr(ExternalLoop, "evaluate", stop_once_solved)
    run = tmp_path / "run"
    start_training("sb3-ppo", "CartPole-v1", steps=PPO_CARTPOLE_STEPS, seed=0, device="cpu", set_items=PPO_CARTPOLE,
                   run_dir=run, eval_every=2_048, eval_episodes=5, checkpoint_every=0, progress=False)
    evals = [row["return_mean"] for row in read_metrics(run, "eval")]
    assert max(evals) >= 475, evals


#: rl-zoo's hyperparameters for CartPole-v1 PPO (hyperparams/ppo.yml); the zoo decays
#: clip_range linearly too, kept constant here.
PPO_CARTPOLE = ["n_envs=8", "n_steps=32", "batch_size=256", "gae_lambda=0.8", "gamma=0.98", "n_epochs=20",
                "ent_coef=0.0", "learning_rate=1e-3", "learning_rate_schedule=linear", "clip_range=0.2"]
PPO_CARTPOLE_STEPS = 50_000


@pytest.mark.parametrize(("args", "fragments"), [
    (["sb3-sac", "--env", "Pendulum-v1", "--set", "lr=0.1"],
     ["'lr' is not a setting of SB3SACConfig", "Valid keys:", "learning_rate,", "net_arch"]),
    (["sb3-ppo", "--env", "CartPole-v1", "--set", "batch_size=big"], ["'batch_size' expects int, got 'big'"]),
    (["sb3-sac", "--env", "Pendulum-v1", "--set", "ent_coef=often"], ["ent_coef=often is not a number >= 0, 'auto'"]),
    (["sb3-dqn", "--env", "Pendulum-v1"], ["'sb3-dqn' needs discrete actions", "Pendulum-v1 has Box", "sb3-sac"]),
    (["sb3-sac", "--env", "CartPole-v1"], ["'sb3-sac' needs box actions", "CartPole-v1 has Discrete(2)", "sb3-dqn"]),
    (["sb3-ppo", "--env", "CartPole-v1", "--set", "use_sde=true"], ["use_sde=true needs Box (continuous) actions"]),
])
def test_bad_input_is_one_sentence_and_leaves_nothing(cli, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    run = tmp_path / "run"
    assert_clean_error(cli("train", *args, "--steps", "100", "--run-dir", run), *fragments)
    assert not run.exists()


def test_toolkit_list_shows_the_bridges_with_their_library() -> None:
    from typer.testing import CliRunner

    from toolkit.cli import app

    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    for name in BRIDGES:
        assert f"stable-baselines3 {library_version('stable-baselines3')}" in rows[name], rows[name]
        assert rows[name].split("│")[-2].strip() == "ok" and "external" in rows[name]


def test_resuming_a_bridge_run_without_its_library_is_one_sentence(cli, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.registry import registry

    run = tmp_path / "run"
    start_training("sb3-a2c", "CartPole-v1", steps=50, device="cpu", run_dir=run, progress=False)
    real = library_version
    monkeypatch.setattr("toolkit.registry.library_version",
                        lambda name: None if name == "stable-baselines3" else real(name))
    registry.refresh()  # statuses are found once per process
    try:
        for args in (("resume", run, "--steps", "100"), ("eval", run, "--episodes", "1")):
            assert_clean_error(cli(*args), "sb3-a2c", "unavailable", "stable-baselines3",
                               "pip install 'toolkit-rl[sb3]'")
    finally:
        monkeypatch.undo()
        registry.refresh()
