"""A trained world model as an environment: its dream, and the real env seen through its eyes.

Ha & Schmidhuber (2018, "World Models", sections 4.4-4.5) train a controller entirely inside
the dream of their world model: the MDN-RNN M samples each next latent ``z_{t+1}`` at a
temperature ``tau`` (higher: a more uncertain dream that is harder to exploit), predicts the
reward and whether the episode ends, and the controller acts on ``[z_t, h_t]``, V's latent and
M's hidden state. The controller is then transferred to the real env, where V encodes each
real frame and M's hidden state follows the real latents and actions.

* ``toolkit/Dream-v0`` (:class:`DreamEnv`), ``--env-kwargs run=WM_DIR,temperature=1.15``:
  reset starts from a real first frame of the run's frames file (a seeded choice of an
  episode), encoded by V (its posterior mean); each step advances M with the action and samples
  the next latent at ``temperature``; the reward is M's prediction, ``terminated`` is M's
  termination probability above 0.5, and ``truncated`` comes after ``max_steps`` steps (default
  the file's longest episode, or 1,000 when none ended). All randomness is drawn from the env's
  own ``np_random``, so a seed (and the actions) fix the dream. ``render_mode="rgb_array"``
  decodes the current latent to a frame.
* ``toolkit/WorldModelReal-v0`` (:class:`WorldModelRealEnv`), ``--env-kwargs run=WM_DIR``: the
  env the frames were recorded from, rendered and shrunk exactly as the recorder did, observed
  through the same ``[z, h]``: an agent trained in the dream is evaluated for real with
  ``toolkit eval AGENT_RUN --env toolkit/WorldModelReal-v0 --env-kwargs run=WM_DIR``.
* :class:`DreamBatch`: many dreams stepped at once on the world model's device, for training
  controllers fast without Gymnasium's per-env overhead (its API is in its docstring).

Both envs take the real env's action space and observe a float32 ``Box`` of ``D + H`` values.
A world-model run is loaded once per process (the envs of a batch share it, read-only).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from toolkit.errors import ToolkitError
from toolkit.loops.world_model import SEEING_FAILS, FramesInfo, WorldModel, read_frames_info
from toolkit.rendering import render_frame, resize_frame

#: Episode length of a dream when the frames file has no finished episode to take it from.
DEFAULT_MAX_STEPS = 1_000
#: Rendered dream frames are enlarged (by whole pixels) to at least this side, to be watchable.
RENDER_SIDE = 64


@dataclass
class LoadedWorldModel:
    """A trained world model and what the envs need of its frames file."""

    model: WorldModel
    device: torch.device
    info: FramesInfo
    #: V's posterior mean of the first frame of every episode in the file, ``[E, D]``.
    first_latents: torch.Tensor
    #: The real env's action space.
    action_space: gym.Space

    @property
    def observation_space(self) -> gym.spaces.Box:
        """``[z, h]``: V's latent then M's features, unbounded float32."""
        size = self.model.latent_dim + self.model.hidden_dim
        return gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    @property
    def max_steps(self) -> int:
        return self.info.longest_episode or DEFAULT_MAX_STEPS

    @torch.no_grad()
    def encode_frame(self, frame: np.ndarray) -> torch.Tensor:
        """One ``[H, W, C]`` uint8 frame (of the file's size) to V's posterior mean ``[1, D]``."""
        x = torch.as_tensor(np.ascontiguousarray(frame.transpose(2, 0, 1)), device=self.device)
        return self.model.posterior(x[None].float().div_(255.0))[0]

    def encode_action(self, action: Any) -> torch.Tensor:
        """An env action to M's input ``[1, A]``."""
        return self.model.encode_actions(torch.as_tensor(np.asarray(action), device=self.device)[None])

    @torch.no_grad()
    def picture(self, z: torch.Tensor) -> np.ndarray:
        """V's decoding of one latent as an RGB ``[H', W', 3]`` uint8 frame, enlarged to watch."""
        x = self.model.decode(z[:1])[0].float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        frame = x.transpose(1, 2, 0)
        if frame.shape[2] == 1:
            frame = np.repeat(frame, 3, axis=2)
        scale = max(1, -(-RENDER_SIDE // max(frame.shape[:2])))
        return np.ascontiguousarray(frame.repeat(scale, axis=0).repeat(scale, axis=1))

    def observation(self, z: torch.Tensor, state: Any) -> np.ndarray:
        """``[z, h]`` of the first (only) dream as a float32 vector."""
        obs = torch.cat([z[0], self.model.features(state)[0]]).float()
        return obs.cpu().numpy()


def load_world_model(run: Any, env_id: str) -> LoadedWorldModel:
    """The trained world model of run directory ``run``, refusing anything else in one sentence."""
    from toolkit.registry import registry
    from toolkit.runs import CHECKPOINT, load_settings

    if run is None or str(run).strip() == "":
        raise ToolkitError(f"{env_id} needs a trained world model: pass --env-kwargs run=WM_DIR "
                           "(a `toolkit train world-model` run).")
    path = Path(str(run)).expanduser().resolve()
    settings = load_settings(path)  # a missing directory or config.yaml is one sentence already
    if not settings.model:
        raise ToolkitError(f"{run} is a run of agent '{settings.agent}', not a world model; "
                           "pass run=DIR of a `toolkit train world-model` run.")
    spec = registry.model(settings.model)
    if spec.kind != "world-model":
        raise ToolkitError(f"{run} is a run of model '{settings.model}' ({spec.kind}), not a world model; "
                           "pass run=DIR of a `toolkit train world-model` run.")
    checkpoint = path / CHECKPOINT
    if not checkpoint.is_file():
        raise ToolkitError(f"{run} has no checkpoint yet ({CHECKPOINT}); train it first.")
    return _load(str(path), checkpoint.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: str, checkpoint_time: int) -> LoadedWorldModel:
    """Load a world-model run (cached per checkpoint: a rewritten checkpoint is loaded anew)."""
    from toolkit.session import open_trained_run

    # Building a run seeds torch's generator; an env made in the middle of training (an
    # evaluation env) must leave the trainer's stream alone.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        session, _ = open_trained_run(Path(path))
    model = session.learner
    if not isinstance(model, WorldModel):
        raise ToolkitError(f"{path} holds a '{session.settings.model}' model, which is not a world model.")
    model.train_mode(False)
    assert session.settings.dataset is not None
    info = read_frames_info(session.settings.dataset)
    starts = info.episode_starts
    with torch.no_grad():
        first = torch.as_tensor(info.read_frames(starts), device=session.device).float().div_(255.0)
        first_latents = model.posterior(first)[0]
    real = info.make_real_env()
    try:
        action_space = real.action_space
    finally:
        real.close()
    return LoadedWorldModel(model, session.device, info, first_latents, action_space)


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ToolkitError(f"temperature must be a positive number (e.g. temperature=1.15), got {temperature!r}.")
    return float(temperature)


def _check_max_steps(max_steps: Any, default: int) -> int:
    if max_steps is None:
        return default
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ToolkitError(f"max_steps must be a positive whole number of steps, got {max_steps!r}.")
    return max_steps


class DreamEnv(gym.Env):
    """M's dream as a Gymnasium env (see the module docstring); observation ``[z, h]``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, run: str | None = None, temperature: float = 1.0, max_steps: int | None = None,
                 render_mode: str | None = None) -> None:
        self.temperature = _check_temperature(temperature)
        self.world = load_world_model(run, "toolkit/Dream-v0")
        self.max_steps = _check_max_steps(max_steps, self.world.max_steps)
        self.render_mode = render_mode
        self.observation_space = self.world.observation_space
        # A copy: seeding one env's action space must not seed another's.
        self.action_space = copy.deepcopy(self.world.action_space)
        self._z: torch.Tensor | None = None
        self._state: Any = None
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        world = self.world
        episode = int(self.np_random.integers(len(world.first_latents)))
        self._z = world.first_latents[episode : episode + 1]
        self._state = world.model.initial_state(1)
        self._t = 0
        return world.observation(self._z, self._state), {"episode": episode}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._z is None:
            raise gym.error.ResetNeeded("Call reset() before step().")
        world = self.world
        d = world.model.latent_dim
        # The noise comes from np_random, so the env's seed and the actions fix the dream (and a
        # checkpointed episode can be replayed exactly).
        uniform = torch.as_tensor(self.np_random.random((1, d)), dtype=torch.float32, device=world.device)
        normal = torch.as_tensor(self.np_random.standard_normal((1, d)), dtype=torch.float32, device=world.device)
        out = world.model.dream_step(self._z, world.encode_action(action), self._state, self.temperature, uniform, normal)
        self._z, self._state = out.z, out.state
        self._t += 1
        probability = float(out.termination_probability[0])
        terminated = probability > 0.5
        truncated = self._t >= self.max_steps and not terminated
        info = {"termination_probability": probability}
        return world.observation(self._z, self._state), float(out.reward[0]), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._z is None:
            return None
        return self.world.picture(self._z)


class WorldModelRealEnv(gym.Env):
    """The real env of a world model, observed as ``[z, h]`` (see the module docstring); its
    rewards, terminations and truncations are the real env's own."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, run: str | None = None, render_mode: str | None = None) -> None:
        self.world = load_world_model(run, "toolkit/WorldModelReal-v0")
        self.real = self.world.info.make_real_env(render=True)  # MuJoCo's fast settings included
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.real.metadata.get("render_fps", 30)}
        self.observation_space = self.world.observation_space
        self.action_space = self.real.action_space
        self._z: torch.Tensor | None = None
        self._state: Any = None

    def _see(self) -> torch.Tensor:
        """The real env's current frame through the recorder's pipeline, then V."""
        info = self.world.info
        frame = render_frame(self.real, info.env_id, SEEING_FAILS)
        frame = resize_frame(frame, info.size, grey=info.frame_shape[0] == 1)
        return self.world.encode_frame(frame)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        # The real env's seed is drawn from ours, so our generator alone fixes the episode.
        _, info = self.real.reset(seed=int(self.np_random.integers(2**31 - 1)), options=options)
        self._z = self._see()
        self._state = self.world.model.initial_state(1)
        return self.world.observation(self._z, self._state), dict(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._z is None:
            raise gym.error.ResetNeeded("Call reset() before step().")
        # M reads (z_t, a_t) as it does in the dream: h_{t+1} then sits beside the real z_{t+1}.
        self._state = self.world.model.advance(self._z, self.world.encode_action(action), self._state)
        _, reward, terminated, truncated, info = self.real.step(action)
        self._z = self._see()
        return self.world.observation(self._z, self._state), float(reward), bool(terminated), bool(truncated), dict(info)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.real.render()

    def close(self) -> None:
        self.real.close()


class DreamBatch:
    """``num_dreams`` dreams of one world model stepped together on its device.

    For training controllers fast: no Gymnasium wrappers, no host round trip per dream, one
    call of M per step for all of them. Not a Gymnasium ``VectorEnv``; its API:

    * ``DreamBatch(run, num_dreams, temperature=1.0, max_steps=None, seed=0)``: ``run`` is a
      world-model run directory; the other arguments mean what they mean for ``toolkit/Dream-v0``.
    * ``observation_space`` and ``action_space``: one dream's spaces (those of ``DreamEnv``);
      ``device``: where every tensor below lives.
    * ``reset(seed=None) -> obs``: restart every dream; ``obs`` is ``[N, D + H]`` float32.
    * ``step(actions) -> (obs, reward, terminated, truncated, final_obs)``: ``actions`` holds
      one env action per dream (``[N]`` integers for discrete actions, ``[N, *shape]`` floats for
      boxes; a tensor or an array); ``reward`` ``[N]`` float32, ``terminated`` and
      ``truncated`` ``[N]`` bool. A dream that ended restarts at once from a new first frame:
      its row of ``obs`` is the new dream's first observation and its row of ``final_obs`` the
      last observation of the one that ended (elsewhere ``final_obs`` equals ``obs``).

    All randomness (first frames, mixture components, Gaussian noise) comes from one device
    generator seeded by ``seed`` (or ``reset(seed)``), so a batch is reproducible on a device.
    """

    def __init__(self, run: str, num_dreams: int, temperature: float = 1.0, max_steps: int | None = None,
                 seed: int = 0) -> None:
        if isinstance(num_dreams, bool) or not isinstance(num_dreams, int) or num_dreams < 1:
            raise ToolkitError(f"DreamBatch needs a positive number of dreams, got {num_dreams!r}.")
        self.world = load_world_model(run, "DreamBatch")
        self.temperature = _check_temperature(temperature)
        self.max_steps = _check_max_steps(max_steps, self.world.max_steps)
        self.num_dreams, self.device = num_dreams, self.world.device
        self.observation_space = self.world.observation_space
        self.action_space = copy.deepcopy(self.world.action_space)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.reset()

    def _first_latents(self, n: int) -> torch.Tensor:
        first = self.world.first_latents
        return first[torch.randint(len(first), (n,), device=self.device, generator=self.generator)]

    def _observation(self) -> torch.Tensor:
        return torch.cat([self.z, self.world.model.features(self.state)], dim=-1).float()

    @torch.no_grad()
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Restart every dream (reseeding first when ``seed`` is given); returns ``obs``."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.z = self._first_latents(self.num_dreams)
        self.state = self.world.model.initial_state(self.num_dreams)
        self.t = torch.zeros(self.num_dreams, dtype=torch.int64, device=self.device)
        return self._observation()

    @torch.no_grad()
    def step(self, actions: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model, n, d = self.world.model, self.num_dreams, self.world.model.latent_dim
        encoded = model.encode_actions(torch.as_tensor(actions, device=self.device))
        uniform = torch.rand((n, d), device=self.device, generator=self.generator)
        normal = torch.randn((n, d), device=self.device, generator=self.generator)
        out = model.dream_step(self.z, encoded, self.state, self.temperature, uniform, normal)
        self.z, self.state = out.z, out.state
        self.t += 1
        terminated = out.termination_probability > 0.5
        truncated = (self.t >= self.max_steps) & ~terminated
        final_obs = self._observation()
        done = terminated | truncated
        # Restart the finished dreams in place, without a host sync: every row draws a new first
        # latent (the same number of draws whatever ended, so the stream stays reproducible).
        fresh = self._first_latents(n)
        self.z = torch.where(done[:, None], fresh, self.z)
        self.state = model.restart(self.state, done)
        self.t = torch.where(done, torch.zeros_like(self.t), self.t)
        return self._observation(), out.reward.float(), terminated, truncated, final_obs
