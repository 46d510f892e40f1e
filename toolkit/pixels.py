"""Pixel observations: any env that renders ``rgb_array`` frames observes its own rendering.

``toolkit train ... --pixels 64 --frame-stack 3 --grey`` reaches :func:`make_pixel_env` through
:func:`toolkit.envs.make_env`. Each step the env is rendered offscreen, the frame is shrunk to
``pixels x pixels`` by averaging the source pixels each output pixel covers, optionally made
grey, and the last ``frame_stack`` frames are stacked, oldest first, along the channel axis:
a uint8 ``(frame_stack * C, pixels, pixels)`` observation (C = 3, or 1 with ``--grey``), the
channels-first layout of the Atari stacks (``toolkit.envs._make_atari``). At reset the stack is
filled with the first frame, as Gymnasium's ``FrameStackObservation`` does for Atari.

:func:`observed_frame_stack` tells the replay buffer how many frames an env's observations stack
(these envs' and Atari's), so it can store each frame once (:mod:`toolkit.buffers`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from toolkit.errors import ToolkitError
from toolkit.rendering import make_render_env, render_frame, resize_frame

__all__ = ["PixelLayout", "PixelObservation", "make_pixel_env", "observed_frame_stack"]

#: How an error ends when the env cannot give pictures.
_CANNOT_OBSERVE = "it cannot be observed as pixels"


@dataclass(frozen=True)
class PixelLayout:
    """How a pixel observation is laid out: ``frame_stack`` square frames of ``channels`` x
    ``size`` x ``size`` uint8 values, oldest first, concatenated along the channel axis."""

    frame_stack: int
    channels: int
    size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """The observation's shape, ``(frame_stack * channels, size, size)``."""
        return (self.frame_stack * self.channels, self.size, self.size)


class PixelObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces an ``rgb_array`` env's observations by stacks of its shrunk renderings.

    The wrapped env's own observations are dropped. ``render()`` returns the last frame the
    env rendered, at the size it rendered it (before shrinking), so videos show exactly what
    the observations were made from without rendering twice. The layout is found from outside
    with ``env.get_wrapper_attr("pixel_layout")``. Its constructor arguments are recorded, so
    ``env.spec`` rebuilds it (as Gymnasium's env checker does).
    """

    def __init__(self, env: gym.Env, env_id: str, size: int, frame_stack: int = 3, grey: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, env_id=env_id, size=size, frame_stack=frame_stack, grey=grey)
        gym.Wrapper.__init__(self, env)
        if size < 1 or frame_stack < 1:
            raise ValueError(f"pixel observations need a positive size and frame stack, got {size} and {frame_stack}")
        self.env_id, self.grey = env_id, grey
        self.pixel_layout = PixelLayout(frame_stack, 1 if grey else 3, size)
        self.observation_space = gym.spaces.Box(0, 255, self.pixel_layout.shape, np.uint8)
        # Observations are offscreen renderings, so rgb_array is the one mode this env has.
        self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
        self._stack = np.zeros(self.pixel_layout.shape, np.uint8)
        self._last_render: np.ndarray | None = None

    def _frame(self) -> np.ndarray:
        """The current state's frame, shrunk, channels-first."""
        self._last_render = render_frame(self.env, self.env_id, _CANNOT_OBSERVE)
        return resize_frame(self._last_render, self.pixel_layout.size, self.grey).transpose(2, 0, 1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        # Nothing came before the first frame: it fills the stack (what FrameStackObservation
        # does, and what the replay buffer rebuilds for an episode's first steps).
        self._stack[:] = np.tile(self._frame(), (self.pixel_layout.frame_stack, 1, 1))
        return self._stack.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.env.step(action)
        frame = self._frame()
        channels = self.pixel_layout.channels
        self._stack[:-channels] = self._stack[channels:]  # drop the oldest frame, keep the order
        self._stack[-channels:] = frame
        # A copy: callers (the replay buffer, rollouts) keep observations the next step must not change.
        return self._stack.copy(), reward, terminated, truncated, info

    def render(self) -> Any:
        if self._last_render is None:  # nothing observed yet
            return self.env.render()
        return np.array(self._last_render)


def _is_atari(env_id: str) -> bool:
    """Whether ``env_id`` is an ALE game (pixels or RAM)."""
    entry = gym.spec(env_id).entry_point
    return env_id.startswith("ALE/") or (isinstance(entry, str) and entry.startswith("ale_py"))


def make_pixel_env(env_id: str, options: Any, render_mode: str | None, **kwargs: Any) -> gym.Env:
    """``env_id`` observing stacks of its own renderings, as ``options`` (a
    :class:`toolkit.envs.EnvOptions` with ``pixels`` set) say; ``kwargs`` go to its constructor.

    Called by :func:`toolkit.envs.make_env`, which has registered the id already. The env
    renders ``rgb_array`` whatever ``render_mode`` asks (None or ``"rgb_array"``), since its
    observations are renderings; MuJoCo envs render small and fast
    (:func:`toolkit.rendering.make_render_env`). Atari games, which already observe
    preprocessed frames, and envs that cannot render images are refused in one sentence.
    """
    if _is_atari(env_id):
        raise ToolkitError(
            f"Atari games already observe pixels (stacks of preprocessed 84x84 grey frames), so '{env_id}' takes no --pixels."
        )
    if render_mode not in (None, "rgb_array"):
        raise ToolkitError(
            f"Pixel observations are rendered offscreen, so '{env_id}' cannot also render in '{render_mode}' mode."
        )

    def make(env_id: str, **make_kwargs: Any) -> gym.Env:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "v4 is out of date": the user chose it
            return gym.make(env_id, **make_kwargs)

    env = make_render_env(env_id, options.pixels, make, _CANNOT_OBSERVE, **kwargs)
    return PixelObservation(env, env_id, options.pixels, options.frame_stack, options.grey)


def observed_frame_stack(env: Any) -> int | None:
    """How many image frames ``env``'s observations stack along their first axis, oldest first
    and repeating an episode's first frame at its start; None when they are not frame stacks.

    That is a :class:`PixelObservation`'s ``frame_stack``, or a ``FrameStackObservation`` over
    uint8 images (the Atari preprocessing's 4 grey 84x84 frames); other wrappers around them
    are looked through.
    """
    try:
        return int(env.get_wrapper_attr("pixel_layout").frame_stack)
    except AttributeError:
        pass
    from gymnasium.wrappers import FrameStackObservation

    inner = env
    while isinstance(inner, gym.Wrapper):
        if isinstance(inner, FrameStackObservation):
            frame_space = inner.env.observation_space
            is_image = isinstance(frame_space, gym.spaces.Box) and frame_space.dtype == np.uint8 and len(frame_space.shape) >= 2
            # Padded with zeros, an episode's first stacks are not the repeated first frame the
            # frame-once buffer rebuilds.
            if is_image and inner.padding_type == "reset":
                return int(inner.stack_size)
            return None
        inner = inner.env
    return None
