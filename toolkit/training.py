"""From a command (train, resume, eval) to a running loop.

Everything here checks user input before anything is written, so a mistake leaves nothing
behind on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.config import apply_overrides, from_dict, load_yaml_overrides, parse_set_options, to_dict, validate
from toolkit.envs import check_agent_fits, check_env_id, make_env
from toolkit.errors import ToolkitError
from toolkit.registry import AgentSpec, registry
from toolkit.runs import (
    CHECKPOINT,
    RunSettings,
    create_run_dir,
    default_run_dir,
    load_checkpoint,
    load_settings,
    save_settings,
    write_json,
)


def resolve_device(name: str) -> Any:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ToolkitError("--device cuda was asked for, but this torch sees no CUDA GPU; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ToolkitError(f"Unknown device '{name}'; use auto, cpu or cuda.") from None


def build_config(spec: AgentSpec, config_file: Path | None = None, set_items: list[str] | None = None) -> Any:
    """The agent's config: defaults, then the YAML file, then ``--set`` overrides, validated."""
    config = spec.config()
    if config_file is not None:
        config = apply_overrides(config, load_yaml_overrides(config_file), source=str(config_file))
    config = apply_overrides(config, parse_set_options(set_items or []))
    validate(config)
    return config


@dataclass
class Session:
    """An agent built for a run, with what built it."""

    settings: RunSettings
    spec: AgentSpec
    config: Any
    agent: Any
    device: Any


def _build(settings: RunSettings, config: Any, spec: AgentSpec) -> tuple[Any, Any]:
    import torch

    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    env = make_env(settings.env)
    check_agent_fits(spec, settings.env, env)
    agent = spec.build(config, env.observation_space, env.action_space, str(device))
    env.close()
    return agent, device


def start_training(
    agent: str,
    env: str,
    steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    config_file: Path | None = None,
    set_items: list[str] | None = None,
    run_dir: Path | None = None,
    runs_root: Path = Path("runs"),
    eval_every: int = 0,
    eval_episodes: int = 5,
    checkpoint_every: int = 10_000,
    log_every: int = 1_000,
    progress: bool = True,
) -> tuple[Path, Any]:
    """Check everything, create the run directory, train. Returns the run dir and loop result."""
    if steps is not None and steps <= 0:
        raise ToolkitError(f"--steps must be a positive number of environment steps, got {steps}.")
    spec = registry.agent(agent)
    _check_trainable(spec)
    config = build_config(spec, config_file, set_items)
    check_env_id(env)
    settings = RunSettings(
        agent=agent, env=env, seed=seed, steps=steps or spec.default_steps, device=device,
        eval_every=eval_every, eval_episodes=eval_episodes, checkpoint_every=checkpoint_every,
        log_every=log_every, agent_config=to_dict(config), toolkit_version=__version__,
    )
    if run_dir is not None and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        create_run_dir(run_dir)  # raises before any work is done
    agent_obj, dev = _build(settings, config, spec)
    path = create_run_dir(run_dir or default_run_dir(runs_root, agent, env, seed))
    save_settings(path, settings)
    return path, _loop(Session(settings, spec, config, agent_obj, dev), path, progress).run(settings.steps)


def open_run(run_dir: Path) -> Session:
    """Rebuild a run's agent (untrained) from its config.yaml."""
    settings = load_settings(run_dir)
    spec = registry.agent(settings.agent)
    config = from_dict(spec.config, settings.agent_config)
    agent, device = _build(settings, config, spec)
    return Session(settings, spec, config, agent, device)


def resume_training(run_dir: Path, steps: int | None = None, progress: bool = True) -> tuple[Path, Any]:
    """Continue a run from its last checkpoint up to ``steps`` (default: the run's own target)."""
    session = open_run(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT, device=session.device)
    done = int(state["counters"]["step"])
    target = steps if steps is not None else session.settings.steps
    if target <= done:
        raise ToolkitError(
            f"{run_dir} has already trained {done} steps; pass --steps larger than {done} to train further."
        )
    session.settings.steps = target
    loop = _loop(session, run_dir, progress)
    try:
        loop.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ToolkitError(f"Checkpoint {run_dir / CHECKPOINT} does not fit this run's agent ({exc}).") from None
    save_settings(run_dir, session.settings)
    return run_dir, loop.run(target)


def _check_trainable(spec: AgentSpec) -> None:
    if spec.kind not in ("off-policy", "on-policy"):
        raise ToolkitError(f"Agent '{spec.name}' is {spec.kind}; this toolkit version trains off- and on-policy agents only.")


def _loop(session: Session, run_dir: Path, progress: bool) -> Any:
    _check_trainable(session.spec)
    if session.spec.kind == "on-policy":
        from toolkit.loops.on_policy import OnPolicyLoop as Loop
    else:
        from toolkit.loops.off_policy import OffPolicyLoop as Loop  # type: ignore[assignment]
    return Loop(
        session.agent, session.config, session.settings, lambda: make_env(session.settings.env),
        run_dir, session.device, progress=progress,
    )


def evaluate_run(
    run_dir: Path, episodes: int, video: bool = False, seed: int | None = None
) -> tuple[Any, Path, Path | None]:
    """Evaluate a run's latest checkpoint; writes ``eval/step-<N>.json`` (and a video)."""
    from toolkit.evaluation import evaluate

    if episodes <= 0:
        raise ToolkitError(f"--episodes must be positive, got {episodes}.")
    session = open_run(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT, device=session.device)
    try:
        session.agent.load_state_dict(state["agent"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ToolkitError(f"Checkpoint {run_dir / CHECKPOINT} does not fit this run's agent ({exc}).") from None
    step = int(state["counters"]["step"])
    video_path = run_dir / "videos" / f"eval-step{step}.mp4" if video else None
    eval_seed = session.settings.seed + 2_000_000 if seed is None else seed
    result = evaluate(session.agent, session.settings.env, episodes, eval_seed, session.device, video_path)
    out = run_dir / "eval" / f"step-{step}.json"
    write_json(out, {"step": step, "seed": eval_seed, **result.to_dict(),
                     "video": str(video_path.relative_to(run_dir)) if video_path else None})
    return result, out, video_path
