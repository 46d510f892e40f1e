"""Environment construction: Gymnasium ids, env plugins, clear errors, headless rendering."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from dataclasses import dataclass, field

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
    _register_atari(env_id)
    if env_id in gym.registry:
        return
    known = list(gym.registry.keys())
    hint = did_you_mean(env_id, known)
    if not hint:
        base = env_id.split("-v")[0]
        versions = sorted(k for k in known if k.split("-v")[0] == base)
        hint = f" Registered versions: {', '.join(versions)}." if versions else ""
    raise ToolkitError(f"Unknown environment '{env_id}'.{hint}")


#: Atari preprocessing applied to ALE environments (Mnih et al. 2015; Machado et al. 2018).
ATARI_FRAME_SKIP = 4
ATARI_SCREEN_SIZE = 84
ATARI_NOOP_MAX = 30
ATARI_FRAME_STACK = 4


def _register_atari(env_id: str) -> None:
    """Register ale_py's ``ALE/...`` environments when ale_py is installed.

    Gymnasium 1.x no longer finds them on its own. Asking for an ALE id without ale_py is a
    clear error naming the extra to install, not "unknown environment".
    """
    import gymnasium as gym

    try:
        import ale_py
    except ImportError:
        if env_id.startswith("ALE/"):
            raise ToolkitError(
                f"Environment '{env_id}' is an Atari game and needs ale-py; install it with: pip install 'toolkit-rl[atari]'."
            ) from None
        return
    gym.register_envs(ale_py)  # importing ale_py registered them; this keeps the import explicit


def _is_atari_pixels(env_id: str) -> bool:
    """Whether ``env_id`` is an ALE game with screen observations (not RAM)."""
    import gymnasium as gym

    spec = gym.spec(env_id)
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    return entry.startswith("ale_py") and spec.kwargs.get("obs_type", "rgb") != "ram"


def _seed_emulator_on_reset(env: Any) -> Any:
    """Make an ALE episode a function of ``env.unwrapped.np_random`` at reset, as other envs are.

    The emulator keeps a random generator of its own (sticky actions) that a plain ``reset()``
    does not touch, so replaying an episode's actions (how a checkpoint restores the episode in
    progress) would not reach the same frames. Reseeding the emulator at every reset with a seed
    drawn from ``np_random`` ties both generators to the state the toolkit records.
    """
    import gymnasium as gym

    class SeedEmulatorOnReset(gym.Wrapper):
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            if seed is None:
                seed = int(self.env.unwrapped.np_random.integers(2**31 - 1))
            return self.env.reset(seed=seed, options=options)

    return SeedEmulatorOnReset(env)


def _make_atari(env_id: str, render_mode: str | None, **kwargs: Any) -> Any:
    """An ALE game with the usual DQN preprocessing: (4, 84, 84) uint8 stacks of grayscale frames.

    The emulator runs every frame (``frameskip=1``) so that ``AtariPreprocessing`` can repeat
    each action for 4 frames and max-pool the last two (Atari sprites flicker), start episodes
    with up to 30 no-ops, and downsample to 84x84 grayscale; the last 4 such frames are stacked
    so the agent can see motion.
    """
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    kwargs.setdefault("frameskip", 1)
    env = _seed_emulator_on_reset(gym.make(env_id, render_mode=render_mode, **kwargs))
    env = AtariPreprocessing(
        env, noop_max=ATARI_NOOP_MAX, frame_skip=ATARI_FRAME_SKIP, screen_size=ATARI_SCREEN_SIZE,
        grayscale_obs=True, scale_obs=False, terminal_on_life_loss=False,
    )
    return FrameStackObservation(env, ATARI_FRAME_STACK)


@dataclass(frozen=True)
class EnvOptions:
    """How a run builds its env beyond the id: constructor keyword arguments
    (``--env-kwargs``) and pixel observations (``--pixels``); recorded in the run's settings."""

    #: Keyword arguments for the env's constructor (``gymnasium.make(id, **kwargs)``).
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Side of square pixel observations rendered from the env; None keeps its own observations.
    pixels: int | None = None
    #: Rendered frames stacked into one pixel observation.
    frame_stack: int = 3
    #: One grey channel per frame instead of RGB.
    grey: bool = False


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """``"run=DIR,temperature=1.15"`` -> ``{"run": "DIR", "temperature": 1.15}``; values are
    read as YAML scalars (numbers, booleans, null, else strings)."""
    import yaml

    if not text:
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not key.isidentifier():
            raise ToolkitError(f"--env-kwargs expects key=value pairs separated by commas, got '{item}' in '{text}'.")
        if key in out:
            raise ToolkitError(f"--env-kwargs names '{key}' twice in '{text}'.")
        try:
            value = yaml.safe_load(raw.strip()) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw.strip()
        out[key] = value if isinstance(value, (int, float, bool, str)) or value is None else raw.strip()
    return out


def make_env(env_id: str, render_mode: str | None = None, options: EnvOptions | None = None, **kwargs: Any) -> Any:
    """``gymnasium.make`` with plugin envs registered and errors turned into one sentence.

    ALE (Atari) games get the usual preprocessing (see :func:`_make_atari`). ``options`` adds
    constructor arguments and pixel observations (:mod:`toolkit.pixels`).
    """
    _headless_defaults()
    check_env_id(env_id)
    import gymnasium as gym

    options = options or EnvOptions()
    kwargs = {**options.kwargs, **kwargs}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "v4 is out of date": the user chose it
            if options.pixels is not None:
                from toolkit.pixels import make_pixel_env

                return make_pixel_env(env_id, options, render_mode, **kwargs)
            if _is_atari_pixels(env_id):
                return _make_atari(env_id, render_mode, **kwargs)
            return gym.make(env_id, render_mode=render_mode, **kwargs)
    except TypeError as exc:  # an --env-kwargs key the env's constructor does not take
        if kwargs and "argument" in str(exc):
            # Gymnasium appends the whole call to the constructor's message; name just the key.
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if unknown:
                given = ", ".join(sorted(kwargs))
                raise ToolkitError(
                    f"Environment '{env_id}' takes no argument '{unknown.group(1)}' (--env-kwargs gave {given})."
                ) from None
            raise ToolkitError(f"Environment '{env_id}' does not accept {sorted(kwargs)}: {exc}.") from None
        raise
    except gym.error.DependencyNotInstalled as exc:
        if "opencv" in str(exc).lower():  # gymnasium's AtariPreprocessing resizes frames with OpenCV
            raise ToolkitError(
                f"Environment '{env_id}' needs OpenCV for its Atari preprocessing; install it with: pip install opencv-python-headless."
            ) from None
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
