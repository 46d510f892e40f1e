"""The world model (Ha & Schmidhuber 2018) end to end: V and M trained from a frames file, M
beating the copy-last-latent baseline, the dream and the real env as Gymnasium envs, a PPO
agent trained in the dream and evaluated for real, exact resume, and every bad input as one
sentence.

The frames come from a tiny env defined here (a soft blob moved by the action on 16x16
frames, terminating when it leaves the square): recording 1,500 steps takes about a second,
where Pendulum's renderer needs about 20 ms a frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import assert_clean_error

BLOB_ID = "toolkit-test/Blob-v0"
#: A world model small enough to train in seconds: V 400 steps, then M 400 steps.
SMALL = ["--set", "latent_dim=4", "--set", "hidden=32", "--set", "mixtures=3", "--set", "seq_len=16",
         "--set", "batch_size=16", "--set", "vae_steps=400", "--set", "vae_batch_size=32"]


class BlobEnv(gym.Env):
    """A soft white blob on black 16x16 frames, moved by 0.2 times the action (a velocity in
    [-1, 1]^2); reward 1 - its distance from the centre; it terminates on leaving the square."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    SIDE = 16

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.render_mode = render_mode
        self.position = np.zeros(2, np.float32)
        grid = np.arange(self.SIDE, dtype=np.float32)
        self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-0.6, 0.6, 2).astype(np.float32)
        return self.position.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.position = (self.position + 0.2 * np.clip(np.asarray(action, np.float32), -1, 1)).astype(np.float32)
        terminated = bool(np.abs(self.position).max() > 1.0)
        return self.position.copy(), 1.0 - float(np.linalg.norm(self.position)), terminated, False, {}

    def render(self) -> np.ndarray:
        cx, cy = (self.position + 1.0) / 2.0 * (self.SIDE - 1)
        blob = np.exp(-((self._xx - cx) ** 2 + (self._yy - cy) ** 2) / (2 * 1.5**2))
        return np.repeat((255 * blob).astype(np.uint8)[..., None], 3, axis=2)


#: Small networks: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 steps of random actions in the blob env (about 60 episodes)."""
    from toolkit.data.frames import record_frames

    if BLOB_ID not in gym.registry:
        gym.register(BLOB_ID, entry_point=BlobEnv, max_episode_steps=40)
    path = tmp_path_factory.mktemp("frames") / "blob.hdf5"
    record_frames(BLOB_ID, 1_500, 16, path, progress=False)
    return path


def _invoke(*args: Any) -> Any:
    from typer.testing import CliRunner

    from toolkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world_model(frames: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "wm"
    result = _invoke("train", "world-model", "--dataset", frames, "--steps", 800, "--run-dir", run, "--no-progress", *SMALL)
    assert result.exit_code == 0, result.output
    return run


def _dream(run: Path, name: str = "toolkit/Dream-v0", render_mode: str | None = None, **kwargs: Any) -> Any:
    from toolkit.envs import EnvOptions, make_env

    return make_env(name, render_mode=render_mode, options=EnvOptions(kwargs={"run": str(run), **kwargs}))


def test_mdn_rnn_beats_the_copy_baseline_and_eval_draws_the_dream(world_model: Path, cli: Any) -> None:
    result = cli("eval", world_model, "--is-samples", 5)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "copy-last-latent NLL per latent dim" in text and "M: termination accuracy" in text
    metrics = json.loads((world_model / "eval" / "step-800.json").read_text())["metrics"]
    # V's latents carry the frame (a collapsed V would make both forecasts of pure noise, which
    # M wins for free), and M forecasts them better than "nothing moves".
    assert metrics["kl"] > 2.0, metrics
    assert metrics["mdn_nll"] < metrics["copy_nll"] - 0.1, metrics
    assert 0.0 <= metrics["termination_accuracy"] <= 1.0 and np.isfinite(metrics["reward_mse"])
    assert "elbo" in metrics and "recon_error" in metrics  # V is judged on the test episodes' frames
    assert (world_model / "figures" / "step-800" / "dream.png").is_file()
    # The periodic evaluations logged M beside its baseline once phase 2 began.
    records = [json.loads(line) for line in (world_model / "metrics.jsonl").read_text().splitlines()]
    assert any("mdn_nll" in r and "copy_nll" in r for r in records if r["kind"] == "eval")
    assert any("recon" in r for r in records if r["kind"] == "train" and r["step"] <= 400)


def test_dream_env_passes_check_env_and_is_reproducible(world_model: Path) -> None:
    from gymnasium.utils.env_checker import check_env

    env = _dream(world_model, temperature=1.15, max_steps=25)
    check_env(env.unwrapped)
    assert env.observation_space.shape == (4 + 32,) and env.observation_space.dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def episode(seed: int) -> tuple[np.ndarray, list[float]]:
        actions = np.random.default_rng(0).uniform(-1, 1, (30, 2)).astype(np.float32)
        obs, _ = env.reset(seed=seed)
        seen, rewards = [obs], []
        for action in actions:
            obs, reward, terminated, truncated, _ = env.step(action)
            seen.append(obs)
            rewards.append(reward)
            if terminated or truncated:
                assert terminated or len(rewards) == 25  # max_steps truncates
                break
        return np.stack(seen), rewards

    a, b, c = episode(3), episode(3), episode(4)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0][: len(c[0])], c[0][: len(a[0])])
    env.close()

    rendering = _dream(world_model, render_mode="rgb_array")
    rendering.reset(seed=0)
    frame = rendering.render()
    assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)  # 16x16 decoded, enlarged to watch
    rendering.close()

    real = _dream(world_model, "toolkit/WorldModelReal-v0")
    check_env(real.unwrapped)
    assert real.observation_space == env.observation_space and real.action_space == env.action_space
    real.close()


def test_dream_batch_steps_many_dreams_reproducibly(world_model: Path) -> None:
    from toolkit_envs.dream import DreamBatch

    def run(seed: int) -> list[torch.Tensor]:
        batch = DreamBatch(str(world_model), 6, temperature=1.15, max_steps=5, seed=seed)
        out = [batch.reset()]
        actions = torch.as_tensor(np.random.default_rng(1).uniform(-1, 1, (12, 6, 2)), dtype=torch.float32)
        for step_actions in actions:
            obs, reward, terminated, truncated, final = batch.step(step_actions)
            assert obs.shape == final.shape == (6, 36) and reward.shape == terminated.shape == (6,)
            out += [obs, reward, terminated | truncated]
        return out

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], other[0])
    ended = torch.stack(first[3::3]).sum()
    assert ended >= 12  # max_steps=5: every dream ended at least twice in 12 steps, and restarted


def test_sampling_at_temperature_follows_the_mixture() -> None:
    from toolkit_world.model import Mixture, sample_mixture

    # One dimension, two components: 0.25 * N(-2, 0.5^2) + 0.75 * N(3, 1).
    mixture = Mixture(torch.log(torch.tensor([[[0.25, 0.75]]])), torch.tensor([[[-2.0, 3.0]]]),
                      torch.log(torch.tensor([[[0.5, 1.0]]])))  # [n=1, D=1, K=2]
    g = torch.Generator().manual_seed(0)
    n = 20_000
    z = sample_mixture(Mixture(*(f.expand(n, 1, 2) for f in mixture)), 1.0,
                       torch.rand((n, 1), generator=g), torch.randn((n, 1), generator=g))[:, 0]
    assert abs(float(z.mean()) - (0.25 * -2 + 0.75 * 3)) < 0.05
    assert abs(float((z < 0.5).float().mean()) - 0.25) < 0.02
    # tau -> 0: the most likely component's mean, without noise.
    cold = sample_mixture(mixture, 1e-6, torch.tensor([[0.1]]), torch.tensor([[1.0]]))
    assert torch.allclose(cold, torch.tensor([[3.0]]), atol=1e-2)


def test_ppo_trains_in_the_dream_and_is_evaluated_in_the_real_env(world_model: Path, cli: Any, tmp_path: Path) -> None:
    agent = tmp_path / "ppo"
    result = cli("train", "ppo", "--env", "toolkit/Dream-v0", "--env-kwargs", f"run={world_model},temperature=1.15",
                 "--steps", 256, "--set", "rollout_steps=64", "--set", "num_envs=2", "--run-dir", agent, "--no-progress")
    assert result.exit_code == 0, result.output
    result = cli("eval", agent, "--episodes", 2, "--env", "toolkit/WorldModelReal-v0", "--env-kwargs", f"run={world_model}")
    assert result.exit_code == 0, result.output
    report = json.loads((agent / "eval" / "step-256-toolkit_WorldModelReal-v0.json").read_text())
    assert report["env"] == "toolkit/WorldModelReal-v0" and report["episodes"] == 2
    # In its own env, the dream: a video shows V's decoding of the dreamt latents.
    result = cli("eval", agent, "--episodes", 1, "--video")
    assert result.exit_code == 0, result.output
    assert (agent / "videos" / "eval-step256.mp4").stat().st_size > 0


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix: state}


def test_resumed_world_model_run_continues_exactly(frames: Path, cli: Any, tmp_path: Path) -> None:
    """Stopped after the switch from V to M (step 30 of 60, V for 20): the resumed run encodes
    the frames again and draws the same windows and posterior samples as the unbroken one."""
    from toolkit.runs import load_checkpoint

    tiny = ["--set", "latent_dim=4", "--set", "hidden=16", "--set", "mixtures=2", "--set", "seq_len=8",
            "--set", "batch_size=8", "--set", "vae_steps=20", "--set", "vae_batch_size=16",
            "--eval-every", "25", "--log-every", "7", "--no-progress"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli("train", "world-model", "--dataset", frames, "--steps", 60, "--run-dir", whole, *tiny).exit_code == 0
    assert cli("train", "world-model", "--dataset", frames, "--steps", 30, "--run-dir", split, *tiny).exit_code == 0
    result = cli("resume", split, "--steps", 60, "--no-progress")
    assert result.exit_code == 0, result.output
    a = _flat(load_checkpoint(whole / "checkpoints" / "latest.pt"))
    b = _flat(load_checkpoint(split / "checkpoints" / "latest.pt"))
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith(("model.", "sampler.", "rng.", "counters.")):
            same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
            assert same, key
    trained = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    losses = lambda records: [(r["step"], r["loss"]) for r in records if r["kind"] == "train" and r["step"] > 30]  # noqa: E731
    assert losses(trained) == losses(resumed)


def test_bad_input_is_one_sentence(frames: Path, world_model: Path, cli: Any, tmp_path: Path) -> None:
    from toolkit.data.frames import record_frames

    dream = ["train", "ppo", "--env", "toolkit/Dream-v0", "--steps", 64, "--no-progress"]
    assert_clean_error(cli(*dream, "--env-kwargs", f"run{world_model}"), "--env-kwargs expects key=value pairs")
    assert_clean_error(cli(*dream, "--env-kwargs", "temperature=1.15"), "needs a trained world model", "run=WM_DIR")
    assert_clean_error(cli(*dream, "--env-kwargs", f"run={world_model},temp=2"), "takes no argument 'temp'")
    assert_clean_error(cli(*dream, "--env-kwargs", f"run={world_model},temperature=0"), "temperature must be a positive number")
    assert_clean_error(cli(*dream, "--env-kwargs", f"run={tmp_path / 'nowhere'}"), "does not exist")

    # A vae run on frames of another size: not a world model, and not a V for these frames.
    small_frames = tmp_path / "blob8.hdf5"
    record_frames(BLOB_ID, 60, 8, small_frames, progress=False)
    vae = tmp_path / "vae8"
    assert cli("train", "vae", "--dataset", small_frames, "--steps", 3, "--run-dir", vae, "--no-progress").exit_code == 0
    assert_clean_error(cli(*dream, "--env-kwargs", f"run={vae}"), "is a run of model 'vae'", "not a world model")
    refused = tmp_path / "refused"
    assert_clean_error(
        cli("train", "world-model", "--dataset", frames, "--steps", 5, "--run-dir", refused, "--set", f"vae_run={vae}"),
        "was trained on images of shape (3, 8, 8)", "(3, 16, 16)",
    )
    assert_clean_error(
        cli("train", "world-model", "--dataset", frames, "--steps", 5, "--run-dir", refused, "--set", f"vae_run={world_model}"),
        "is a 'world-model' run", "needs a trained 'vae' or 'beta-vae' run",
    )
    # Frames too short for one window, and image data that is not a frames file.
    assert_clean_error(
        cli("train", "world-model", "--dataset", small_frames, "--steps", 5, "--run-dir", refused, "--set", "seq_len=64"),
        "holds 60 steps, fewer than seq_len + 1 = 65",
    )
    assert_clean_error(cli("train", "world-model", "--dataset", "digits", "--steps", 5, "--run-dir", refused),
                       "learns from a frames file with actions")
    assert not refused.exists()  # every refusal came before anything was written
