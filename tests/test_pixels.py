"""Pixel observations (``--pixels``) and the replay buffer that stores each frame once."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import assert_clean_error
from toolkit.buffers import FrameReplayBuffer, ReplayBuffer, default_frame_capacity
from toolkit.envs import EnvOptions, make_env
from toolkit.errors import ToolkitError
from toolkit.pixels import PixelLayout, observed_frame_stack
from toolkit.runs import read_metrics


class _Noise(gym.Env):
    """Renders a fresh 16x16 picture of noise (from its own generator) at every state and ends
    an episode at random, so stacks of its frames show where each frame came from."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def _draw(self) -> np.ndarray:
        self.picture = self.np_random.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        return np.zeros(1, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._draw(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self._draw(), 0.0, bool(self.np_random.random() < 0.12), False, {}

    def render(self) -> np.ndarray:
        return self.picture


class _NoPictures(_Noise):
    metadata = {"render_modes": ["human"], "render_fps": 30}


# A time limit of 9 steps adds truncations to the random terminations (episodes of 1 to 9 steps).
gym.register("PixelsTest/Noise-v0", entry_point=_Noise, max_episode_steps=9)
gym.register("PixelsTest/NoPictures-v0", entry_point=_NoPictures)

ATARI_READY = importlib.util.find_spec("ale_py") is not None and importlib.util.find_spec("cv2") is not None


# --- the pixel env ----------------------------------------------------------------------------


def test_pendulum_observes_stacks_of_its_rendering() -> None:
    env = make_env("Pendulum-v1", options=EnvOptions(pixels=32))
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.shape == (9, 32, 32) and space.dtype == np.uint8
    assert env.get_wrapper_attr("pixel_layout") == PixelLayout(frame_stack=3, channels=3, size=32)
    assert observed_frame_stack(env) == 3
    first, _ = env.reset(seed=0)
    assert first in space and first.std() > 0  # a picture, not a blank
    assert np.array_equal(first[0:3], first[3:6]) and np.array_equal(first[3:6], first[6:9])  # reset fills the stack
    second, *_ = env.step(np.array([2.0], np.float32))
    assert np.array_equal(second[:6], first[3:]) and not np.array_equal(second[6:], first[6:])  # oldest dropped
    # render() is the full-size frame the newest one was shrunk from, for videos.
    from toolkit.rendering import resize_frame

    full = env.render()
    assert full.shape == (500, 500, 3)
    assert np.array_equal(resize_frame(full, 32).transpose(2, 0, 1), second[6:])
    env.close()

    grey = make_env("Pendulum-v1", options=EnvOptions(pixels=32, grey=True))
    assert grey.observation_space.shape == (3, 32, 32) and grey.observation_space.dtype == np.uint8
    obs, _ = grey.reset(seed=0)
    assert obs.shape == (3, 32, 32) and (obs == obs[:1]).all()
    grey.close()
    assert observed_frame_stack(make_env("Pendulum-v1")) is None


@pytest.mark.filterwarnings("ignore::UserWarning")  # the checker's advice about wrappers and action bounds
def test_pixel_env_passes_gymnasiums_env_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(make_env("Pendulum-v1", options=EnvOptions(pixels=32, frame_stack=2)))
    check_env(make_env("PixelsTest/Noise-v0", options=EnvOptions(pixels=8, grey=True)))


@pytest.mark.skipif(not ATARI_READY, reason="needs the atari extra (ale-py) and OpenCV")
def test_atari_keeps_its_own_frames(cli, tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match=r"Atari games already observe pixels.*'ALE/Pong-v5'"):
        make_env("ALE/Pong-v5", options=EnvOptions(pixels=64))
    result = cli("train", "dqn", "--env", "ALE/Pong-v5", "--pixels", "64", "--run-dir", tmp_path / "r", "--no-progress")
    assert_clean_error(result, "Atari games already observe pixels")
    assert not (tmp_path / "r").exists()
    assert observed_frame_stack(make_env("ALE/Pong-v5")) == 4  # its (4, 84, 84) stacks use the frame buffer


def test_an_env_that_cannot_render_images_is_refused(cli, tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match=r"'PixelsTest/NoPictures-v0' cannot render .*render modes: human\)"):
        make_env("PixelsTest/NoPictures-v0", options=EnvOptions(pixels=16))
    result = cli("train", "dqn", "--env", "PixelsTest/NoPictures-v0", "--pixels", "16", "--run-dir", tmp_path / "r",
                 "--no-progress")
    assert_clean_error(result, "PixelsTest/NoPictures-v0", "render modes: human")


# --- the frame-once replay buffer -----------------------------------------------------------


def _transitions(count: int, seed: int = 0) -> list[tuple[np.ndarray, int, np.ndarray, bool, int]]:
    """``count`` transitions ``(obs, action, next_obs, terminated, episode_step)`` of the noise env
    seen through the pixel wrapper (3 stacked 8x8 RGB frames), episodes ending by termination
    and by truncation."""
    env = make_env("PixelsTest/Noise-v0", options=EnvOptions(pixels=8))
    obs, _ = env.reset(seed=seed)
    out, step, ended = [], 0, {"terminated": 0, "truncated": 0}
    for i in range(count):
        next_obs, _, terminated, truncated, _ = env.step(i % 2)
        out.append((obs, i % 2, next_obs, terminated, step))
        if terminated or truncated:
            ended["terminated" if terminated else "truncated"] += 1
            obs, _ = env.reset()
            step = 0
        else:
            obs, step = next_obs, step + 1
    assert min(ended.values()) >= 3  # both kinds of episode end are exercised
    return out


def _fill(buffers: list[Any], transitions: list[tuple], start: int = 0) -> None:
    """Add transitions; each one's reward is its index in ``transitions``, to recognise it."""
    for i, (obs, action, next_obs, terminated, step) in enumerate(transitions[start:], start):
        for buffer in buffers:
            buffer.add(obs, action, float(i), next_obs, terminated, step)


def _assert_same(a: Any, b: Any) -> None:
    for name, x, y in zip(a._fields, a, b):
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name


def test_frame_buffer_samples_what_the_naive_buffer_samples() -> None:
    """Same stacks, actions, rewards, terminals, histories and n-step windows, before and after
    the ring wrapped, across terminations and truncations, with episodes shorter than a stack."""
    transitions = _transitions(170)
    naive = ReplayBuffer(40, (9, 8, 8), (), obs_dtype=torch.uint8, action_dtype=torch.int64, seed=7)
    frames = FrameReplayBuffer(40, (9, 8, 8), (), frame_stack=3, action_dtype=torch.int64, seed=7,
                               frame_capacity=2 * 40 + 4)  # room for any episode lengths
    done = 0
    for upto in (5, 39, 40, 41, 97, 170):  # partly filled, full, just wrapped, wrapped several times
        _fill([naive, frames], transitions[:upto], start=done)
        done = upto
        assert len(frames) == len(naive) == min(upto, 40)
        for history, n_step in ((1, 1), (4, 3), (2, 5)):
            _assert_same(naive.sample(64, history=history, n_step=n_step),
                         frames.sample(64, history=history, n_step=n_step))
    # The stacks are what the env produced: check them against the transitions themselves.
    batch = frames.sample(256, n_step=3)
    for row, i in enumerate(batch.rewards[:, 0].long().tolist()):
        assert np.array_equal(batch.obs[row].numpy(), transitions[i][0])
        assert np.array_equal(batch.next_obs[row].numpy(), transitions[i][2])


def test_frames_running_out_first_drop_the_oldest_transitions() -> None:
    """Episodes of about 6 steps need more frames than the default ring's; the buffer then
    holds fewer transitions, and a stack or history never reads a frame written after it."""
    transitions = _transitions(300, seed=1)
    buffer = FrameReplayBuffer(40, (9, 8, 8), (), frame_stack=3, action_dtype=torch.int64, seed=3)
    assert buffer.frame_capacity == default_frame_capacity(40, 3) == 46
    _fill([buffer], transitions)
    held = len(buffer)
    assert 30 <= held < 40
    oldest = len(transitions) - held
    batch = buffer.sample(512, history=4, n_step=3)
    ids = batch.rewards[:, 0].long().tolist()
    assert min(ids) == oldest  # every held transition can be drawn, and no older one
    for row, i in enumerate(ids):
        assert np.array_equal(batch.obs[row].numpy(), transitions[i][0])
        assert np.array_equal(batch.next_obs[row].numpy(), transitions[i][2])
        step = transitions[i][4]
        for j in range(4):  # step back as far as the episode's start and the oldest transition held
            back = min(3 - j, step, i - oldest)
            assert np.array_equal(batch.obs_history[row, j].numpy(), transitions[i - back][0])
        length = int(batch.window_length[row])
        assert np.array_equal(batch.window_next_obs[row].numpy(), transitions[i + length - 1][2])


def test_interleaved_episodes_still_give_exact_stacks() -> None:
    """Two envs' steps alternating (not how the loops add them) cost more frames, not exactness."""
    a, b = _transitions(60, seed=2), _transitions(60, seed=3)
    mixed = [t for pair in zip(a, b) for t in pair]
    buffer = FrameReplayBuffer(200, (9, 8, 8), (), frame_stack=3, action_dtype=torch.int64, seed=0)
    _fill([buffer], mixed)
    assert buffer.frames_written > len(mixed) + 40  # each transition restarted a run of frames
    batch = buffer.sample(256)
    for row, i in enumerate(batch.rewards[:, 0].long().tolist()):
        assert np.array_equal(batch.obs[row].numpy(), mixed[i][0])
        assert np.array_equal(batch.next_obs[row].numpy(), mixed[i][2])


def test_stacks_the_buffer_cannot_rebuild_are_refused() -> None:
    buffer = FrameReplayBuffer(10, (6, 2, 2), (), frame_stack=3, action_dtype=torch.int64)
    frame = np.full((2, 2, 2), 7, np.uint8)
    zero_padded = np.concatenate([np.zeros_like(frame), np.zeros_like(frame), frame])
    with pytest.raises(ValueError, match="repeat its first frame"):
        buffer.add(zero_padded, 0, 0.0, np.concatenate([zero_padded[2:], frame]), False, 0)
    start = np.concatenate([frame] * 3)
    with pytest.raises(ValueError, match="oldest frame dropped"):
        buffer.add(start, 0, 0.0, np.concatenate([frame + 1] * 3), False, 0)
    assert len(buffer) == 0 and buffer.frames_written == 0  # refused transitions leave no trace
    with pytest.raises(ValueError, match="do not stack"):
        FrameReplayBuffer(10, (7, 2, 2), (), frame_stack=3)


@pytest.mark.parametrize("frame_capacity", [None, 2 * 40 + 4])
def test_frame_buffer_state_round_trip_continues_identically(frame_capacity: int | None) -> None:
    transitions = _transitions(200, seed=4)
    a = FrameReplayBuffer(40, (9, 8, 8), (), frame_stack=3, action_dtype=torch.int64, seed=5,
                          frame_capacity=frame_capacity)
    # Stopped mid-episode: the next transition continues one the buffer holds.
    cut = next(i for i in range(120, 200) if transitions[i][4] > 0)
    _fill([a], transitions[:cut])
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)  # as a checkpoint does: tensors and plain values only
    saved.seek(0)
    b = FrameReplayBuffer(40, (9, 8, 8), (), frame_stack=3, action_dtype=torch.int64, seed=99,
                          frame_capacity=frame_capacity)
    b.load_state_dict(torch.load(saved, weights_only=True))
    assert len(b) == len(a)
    for _ in range(3):
        _assert_same(a.sample(32, history=3, n_step=3), b.sample(32, history=3, n_step=3))
    _fill([a, b], transitions, start=cut)
    assert (a.frames_written, a.pos, len(a)) == (b.frames_written, b.pos, len(b))
    assert torch.equal(a.frames, b.frames)
    _assert_same(a.sample(64, history=2, n_step=4), b.sample(64, history=2, n_step=4))


def test_bytes_per_transition_for_100k_three_rgb_84x84_frames() -> None:
    """The sizes the off-policy loop logs (kind "replay"), for Atari-sized RGB stacks of three.
    On the meta device nothing is allocated."""
    shape, capacity = (9, 84, 84), 100_000
    naive = ReplayBuffer(capacity, shape, (), device="meta", obs_dtype=torch.uint8, action_dtype=torch.int64)
    frames = FrameReplayBuffer(capacity, shape, (), frame_stack=3, device="meta", action_dtype=torch.int64)
    bookkeeping = 8 + 4 + 4 + 8  # action, reward, terminal flag, episode step
    assert naive.bytes_per_transition() == 2 * 9 * 84 * 84 + bookkeeping == 127_032  # obs and next_obs
    frame_bytes = 3 * 84 * 84 * default_frame_capacity(capacity, 3) / capacity
    assert frames.bytes_per_transition() == pytest.approx(frame_bytes + bookkeeping + 8 + 8)  # + frame number, host copy
    assert frames.bytes_per_transition() < 22_600
    assert naive.bytes_per_transition() * capacity / 2**30 == pytest.approx(11.83, abs=0.01)
    assert frames.bytes_per_transition() * capacity / 2**30 < 2.1  # well inside 24 GiB


# --- an off-policy run on pixels --------------------------------------------------------------


def _curve(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("steps_per_second", None)
    return records


@pytest.fixture
def one_thread() -> Any:
    """Torch on one thread: shrinking frames and small updates gain nothing from a second one,
    and on a busy machine the threads wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sac_trains_on_pendulum_pixels_and_resumes_exactly(cli, tmp_path: Path, one_thread: Any) -> None:
    # The loop, buffer and checkpoint are under test, not the convolutional encoders (slow on a
    # CPU): flattened pixels through small layers, and a buffer that does not reserve 3 GB.
    common = ["--env", "Pendulum-v1", "--pixels", "32", "--set", "learning_starts=100", "--set", "batch_size=32",
              "--set", "encoder=mlp", "--set", "hidden_sizes=32,32", "--set", "buffer_size=5000",
              "--no-progress", "--log-every", "100", "--eval-every", "300", "--eval-episodes", "1", "--seed", "1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    result = cli("train", "sac", "--steps", "300", "--run-dir", whole, *common)
    assert result.exit_code == 0, result.output
    replay = read_metrics(whole, "replay")
    assert len(replay) == 1 and replay[0]["buffer"] == "FrameReplayBuffer" and replay[0]["frame_stack"] == 3
    assert replay[0]["replay_bytes_per_transition"] < 2 * 9 * 32 * 32  # under one stored stack
    assert read_metrics(whole, "train")[-1]["updates"] == 201
    # Interrupted mid-episode (Pendulum's episodes last 200 steps) and resumed: the same records.
    assert cli("train", "sac", "--steps", "250", "--run-dir", parts, *common).exit_code == 0
    assert cli("resume", parts, "--steps", "300", "--no-progress").exit_code == 0
    assert _curve(whole) == _curve(parts)


def test_distributed_off_policy_runs_store_each_frame_once(tmp_path: Path, ray_session: Any, one_thread: Any) -> None:
    """Runners' steps arrive interleaved; on pixels each env's episode goes in whole, so the
    buffer holds one frame a transition plus one an episode, and no stack twice."""
    from toolkit.distributed.rollouts import DistributedOffPolicyLoop
    from toolkit.registry import registry
    from toolkit.runs import RunSettings
    from toolkit.training import build_config

    options = EnvOptions(pixels=16)
    spec = registry.agent("dqn")
    config = build_config(spec, set_items=["buffer_size=1000", "learning_starts=100", "batch_size=16",
                                           "encoder=mlp", "hidden_sizes=16"])
    env = make_env("CartPole-v1", options=options)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    settings = RunSettings(agent="dqn", env="CartPole-v1", workers=2, envs_per_worker=2, log_every=0,
                           checkpoint_every=0, eval_every=0, pixels=16)
    loop = DistributedOffPolicyLoop(agent, config, settings, lambda: make_env("CartPole-v1", options=options),
                                    tmp_path, torch.device("cpu"), progress=False)
    assert isinstance(loop.buffer, FrameReplayBuffer) and loop.whole_episodes
    loop.run(300)
    buffer = loop.buffer
    starts = int((buffer.episode_step[: len(buffer)] == 0).sum())
    assert 0 < len(buffer) <= 300 and buffer.frames_written == len(buffer) + starts
    assert read_metrics(tmp_path, "replay")[0]["buffer"] == "FrameReplayBuffer"
    assert loop.updates > 0


@pytest.mark.parametrize(
    ("agent", "settings", "steps", "stop"),
    [
        # DQN: replay of frame stacks through the Nature-style default for small frames (IMPALA).
        ("dqn", ["--set", "learning_starts=100", "--set", "batch_size=16", "--set", "buffer_size=2000",
                 "--set", "train_every=4"], 300, 250),
        # PPO: rollouts of frame stacks (no replay), a checkpoint after each 64-step rollout.
        ("ppo", ["--set", "num_envs=1", "--set", "rollout_steps=64", "--set", "minibatch_size=32", "--set", "epochs=1"],
         256, 128),
    ],
)
def test_dqn_and_ppo_train_on_cartpole_pixels_and_resume_exactly(
    cli, tmp_path: Path, one_thread: Any, agent: str, settings: list[str], steps: int, stop: int
) -> None:
    common = ["--env", "CartPole-v1", "--pixels", "16", *settings, "--no-progress", "--log-every", "64",
              "--seed", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    result = cli("train", agent, "--steps", str(steps), "--run-dir", whole, *common)
    assert result.exit_code == 0, result.output
    assert cli("train", agent, "--steps", str(stop), "--run-dir", parts, *common).exit_code == 0
    assert cli("resume", parts, "--steps", str(steps), "--no-progress").exit_code == 0
    assert _curve(whole) == _curve(parts)
