"""Offscreen rendering shared by frame recording, evaluation videos and pixel observations.

One place for what every caller of ``env.render()`` needs: building an env that renders
``rgb_array`` frames (or a one-sentence error for one that cannot), MuJoCo's speed settings and
smaller render size, reading a frame with a clear error, and shrinking it.

Nothing here imports :mod:`toolkit.envs`: :mod:`toolkit.pixels` builds envs for
:func:`toolkit.envs.make_env` with these pieces, so the caller passes the env factory in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError

#: The side of a Gymnasium MuJoCo env's rendered frame unless it is told otherwise.
MUJOCO_DEFAULT_RENDER = 480


def fast_render_settings(env: Any) -> None:
    """Make a MuJoCo env render much faster offscreen; a no-op for other envs.

    MuJoCo renders with 4x multisampling and 4096x4096 shadow maps by default, which costs
    most of a frame (about 200 ms against 20 ms for Hopper on a software renderer) and shows
    little once frames are shrunk to a few dozen pixels. Both are read when the rendering
    context is created, so call this before the env's first ``render()``.
    """
    model = getattr(getattr(env, "unwrapped", env), "model", None)
    # Check the type's module, not isinstance, so that envs without MuJoCo never import it.
    if model is None or not type(model).__module__.startswith("mujoco"):
        return
    quality = model.vis.quality
    quality.offsamples = 0
    quality.shadowsize = 0


def env_creator(env_id: str) -> Any:
    """The class or function that builds ``env_id``, loaded without building it (None if it fails)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    spec = gym.spec(env_id)
    try:
        return spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    except Exception:  # building the env reports a broken entry point better
        return None


def _is_gymnasium_mujoco(creator: Any) -> bool:
    """Whether ``creator`` is one of Gymnasium's MuJoCo env classes (which take width/height)."""
    if not isinstance(creator, type) or not creator.__module__.startswith("gymnasium.envs.mujoco"):
        return False
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    return issubclass(creator, MujocoEnv)


def check_renders_images(env_id: str, consequence: str) -> Any:
    """Refuse, in one sentence ending with ``consequence``, an env whose registered render modes
    lack ``rgb_array``; returns its creator (None when it cannot be loaded without building it)."""
    creator = env_creator(env_id)
    modes = getattr(creator, "metadata", {}).get("render_modes")
    if modes is not None and "rgb_array" not in modes:
        listed = ", ".join(modes) if modes else "none"
        raise ToolkitError(
            f"Environment '{env_id}' cannot render frames as images (its render modes: {listed}), so {consequence}."
        )
    return creator


def make_render_env(
    env_id: str, size: int, make: Callable[..., Any], consequence: str, **kwargs: Any
) -> Any:
    """``make(env_id, render_mode="rgb_array", **kwargs)`` ready to render frames that will be
    shrunk to ``size x size``, or a one-sentence :class:`ToolkitError` (ending with
    ``consequence``, e.g. "so it cannot be recorded") for an env that cannot render images.

    Gymnasium's MuJoCo envs render at ``4 * size`` instead of 480x480 (unless ``kwargs`` set a
    width or height) and with :func:`fast_render_settings`.
    """
    creator = check_renders_images(env_id, consequence)
    if (
        _is_gymnasium_mujoco(creator) and 4 * size < MUJOCO_DEFAULT_RENDER
        and "width" not in kwargs and "height" not in kwargs
    ):
        # A frame shrunk to `size` needs no 480x480 render: 4x4 source pixels per output pixel
        # still smooth edges, and the smaller render halves the time a frame takes.
        kwargs.update(width=4 * size, height=4 * size)
    try:
        env = make(env_id, render_mode="rgb_array", **kwargs)
    except TypeError as exc:
        # Gymnasium quotes the whole call (render_mode included) in every constructor
        # TypeError, so only this phrase means the env has no render_mode.
        if "unexpected keyword argument 'render_mode'" not in str(exc):
            raise
        raise ToolkitError(f"Environment '{env_id}' takes no render_mode, so {consequence}.") from None
    fast_render_settings(env)
    return env


def render_frame(env: Any, env_id: str, consequence: str) -> np.ndarray:
    """``env.render()`` as one ``[H, W, C]`` uint8 frame (C = 1, 3 or 4), or a one-sentence
    :class:`ToolkitError` ending with ``consequence`` when the env gives no image."""
    import gymnasium as gym

    try:
        frame = env.render()
    except gym.error.DependencyNotInstalled as exc:
        raise ToolkitError(f"Rendering {env_id} needs a package that is not installed: {exc}.") from None
    frame = np.asarray(frame) if frame is not None else None
    if frame is None or frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        got = "nothing" if frame is None else f"an array of shape {frame.shape}"
        raise ToolkitError(f"Environment '{env_id}' rendered {got} instead of an RGB image, so {consequence}.")
    return frame


def resize_frame(frame: np.ndarray, size: int, grey: bool = False) -> np.ndarray:
    """``[H, W, C]`` uint8 to ``[size, size, C']`` uint8 (C' = 3, or 1 with ``grey``).

    Shrinking averages the source pixels each output pixel covers (``area`` interpolation),
    which does not alias the way picking pixels does; enlarging repeats pixels.
    """
    import torch
    import torch.nn.functional as F

    # One numpy pass makes the float copy channels-first (what pooling is fast on) and, for
    # MuJoCo's upside-down view (negative strides, which torch cannot wrap), contiguous;
    # converting in torch and then permuting took about twice as long. An alpha channel
    # carries no picture; a grey render becomes the same picture in RGB.
    rgb = np.asarray(frame)[..., :3]
    if rgb.shape[-1] == 1:
        rgb = np.broadcast_to(rgb, (*rgb.shape[:-1], 3))
    pixels = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32, order="C"))[None]
    small = F.interpolate(pixels, size=(size, size), mode="area")[0]
    if grey:
        # ITU-R BT.601 luma, the weights most greyscale conversions (Atari's too) use; being
        # linear, it commutes with averaging, so it is applied to the small frame.
        small = (small * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return small.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
