"""Environment construction: Gymnasium ids, env plugins, clear errors, headless rendering."""

from __future__ import annotations

import os
import warnings
from typing import Any

from toolkit.errors import ToolkitError, did_you_mean
from toolkit.registry import ENVS, AgentSpec, registry

_plugins_loaded = False


def _headless_defaults() -> None:
    # MuJoCo and pygame need to be told there is no screen before they are imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def load_env_plugins() -> None:
    """Call every ``toolkit.envs`` entry point once so its environments are registered."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in registry.entries(ENVS):
        register = entry.load()
        if entry.status != "ok":
            warnings.warn(f"env plugin '{entry.name}' from {entry.distribution} is {entry.status}: {entry.reason}", stacklevel=2)
            continue
        try:
            register()
        except Exception as exc:  # one broken env plugin must not hide the others
            entry.status, entry.reason = "broken", f"{type(exc).__name__}: {exc}"


def check_env_id(env_id: str) -> None:
    """Raise a :class:`ToolkitError` with suggestions if ``env_id`` is not registered."""
    import gymnasium as gym

    load_env_plugins()
    if env_id in gym.registry:
        return
    known = list(gym.registry.keys())
    hint = did_you_mean(env_id, known)
    if not hint:
        base = env_id.split("-v")[0]
        versions = sorted(k for k in known if k.split("-v")[0] == base)
        hint = f" Registered versions: {', '.join(versions)}." if versions else ""
    raise ToolkitError(f"Unknown environment '{env_id}'.{hint}")


def make_env(env_id: str, render_mode: str | None = None, **kwargs: Any) -> Any:
    """``gymnasium.make`` with plugin envs registered and errors turned into one sentence."""
    _headless_defaults()
    check_env_id(env_id)
    import gymnasium as gym

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "v4 is out of date": the user chose it
            return gym.make(env_id, render_mode=render_mode, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        extra = " Install it with: pip install 'toolkit-rl[box2d]'." if "box2d" in str(exc).lower() else ""
        raise ToolkitError(f"Environment '{env_id}' needs a package that is not installed: {exc}.{extra}") from None


def space_kind(space: Any) -> str:
    """The name agents use for a space in :attr:`AgentSpec.action_spaces`: 'box', 'discrete', ..."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return "image" if len(space.shape) == 3 else "box"
    if isinstance(space, gym.spaces.Discrete):
        return "discrete"
    if isinstance(space, gym.spaces.MultiDiscrete):
        return "multi-discrete"
    if isinstance(space, gym.spaces.MultiBinary):
        return "multi-binary"
    return type(space).__name__.lower()


def check_agent_fits(spec: AgentSpec, env_id: str, env: Any) -> None:
    """Refuse an agent that cannot handle the env's spaces, naming agents that can."""
    for what, space, accepted in (
        ("action", env.action_space, spec.action_spaces),
        ("observation", env.observation_space, spec.observation_spaces),
    ):
        kind = space_kind(space)
        if kind in accepted or (kind == "image" and "box" in accepted and what == "action"):
            continue
        attr = "action_spaces" if what == "action" else "observation_spaces"
        fits = sorted(s.name for s in registry.agents() if kind in getattr(s, attr) and s.name != spec.name)
        advice = f" Agents that fit: {', '.join(fits)}." if fits else f" No installed agent handles {kind} {what}s yet."
        raise ToolkitError(
            f"Agent '{spec.name}' needs {' or '.join(accepted)} {what}s, but {env_id} has {space}.{advice}"
        )
