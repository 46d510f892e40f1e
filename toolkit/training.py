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
from toolkit.distributed.remote_learner import learner_on_cluster_gpu, run_remote_learner
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


def _session(settings: RunSettings, config: Any, spec: AgentSpec, device_name: str | None = None) -> Session:
    """Build the agent for ``settings.env`` on the chosen device (``device_name`` overrides the
    run's, e.g. on a cluster GPU), seeded."""
    import torch

    device = resolve_device(device_name or settings.device)
    torch.manual_seed(settings.seed)
    env = make_env(settings.env)
    check_agent_fits(spec, settings.env, env)
    agent = spec.build(config, env.observation_space, env.action_space, str(device))
    env.close()
    return Session(settings, spec, config, agent, device)


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
    dataset: str | Path | None = None,
    workers: int = 0,
    envs_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
) -> tuple[Path, Any]:
    """Check everything, create the run directory, train. Returns the run dir and loop result.

    Offline agents need ``dataset`` (a D4RL HDF5 file or a Minari dataset) and count ``steps``
    in gradient steps; online agents count environment steps and refuse a dataset. Offline
    runs evaluate ten times over the run unless ``eval_every`` says otherwise. ``workers > 0``
    uses Ray: env-runner actors for online agents, data-parallel workers for offline ones. With
    ``workers > 0`` and ``device="cuda"`` on a driver without CUDA, the learner runs on a GPU
    of the Ray cluster (:mod:`toolkit.distributed.remote_learner`); the run directory must then
    be on storage that GPU node writes to (the same machine or a shared filesystem)."""
    if steps is not None and steps <= 0:
        raise ToolkitError(f"--steps must be a positive number of steps, got {steps}.")
    _check_ray_options(workers, envs_per_worker, gpus_per_worker)
    spec = registry.agent(agent)
    _check_dataset_option(spec, dataset)
    config = build_config(spec, config_file, set_items)
    if workers > 0 and spec.kind == "on-policy":  # one rollout holds every runner's envs
        from toolkit.distributed.rollouts import distributed_config

        config = distributed_config(config, spec.config(), workers, envs_per_worker)
    check_env_id(env)
    total = steps or spec.default_steps
    if spec.kind == "offline" and eval_every == 0:
        eval_every = max(1, total // 10)
    settings = RunSettings(
        agent=agent, env=env, seed=seed, steps=total, device=device,
        eval_every=eval_every, eval_episodes=eval_episodes, checkpoint_every=checkpoint_every,
        log_every=log_every, agent_config=to_dict(config), toolkit_version=__version__,
        dataset=_dataset_reference(dataset), workers=workers, envs_per_worker=envs_per_worker,
        gpus_per_worker=gpus_per_worker, address=address,
    )
    if run_dir is not None and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        create_run_dir(run_dir)  # raises before any work is done
    path = run_dir or default_run_dir(runs_root, agent, env, seed)
    if learner_on_cluster_gpu(workers, device, address):
        return run_remote_learner(_train_new, settings, config, path.resolve(), run_dir=path.resolve())
    return _train_new(settings, config, path, progress)


def _train_new(settings: RunSettings, config: Any, path: Path, progress: bool,
               device: str | None = None) -> tuple[Path, Any]:
    """Build the session, create the run directory, train (here, or in a remote learner)."""
    spec = registry.agent(settings.agent)
    session = _session(settings, config, spec, device)
    data = _load_checked_dataset(session) if spec.kind == "offline" else None
    path = create_run_dir(path)
    save_settings(path, settings)
    return path, _loop(session, path, progress, data).run(settings.steps)


def _check_ray_options(workers: int, envs_per_worker: int, gpus_per_worker: float) -> None:
    if workers < 0:
        raise ToolkitError(f"--workers must be 0 (no Ray) or a positive number of Ray workers, got {workers}.")
    if envs_per_worker < 1:
        raise ToolkitError(f"--envs-per-worker must be at least 1, got {envs_per_worker}.")
    if gpus_per_worker < 0:
        raise ToolkitError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}.")


def _check_dataset_option(spec: AgentSpec, dataset: str | Path | None) -> None:
    if spec.kind == "offline" and dataset is None:
        raise ToolkitError(
            f"Agent '{spec.name}' learns offline from a dataset; pass --dataset FILE "
            "(make one with `toolkit dataset collect`)."
        )
    if spec.kind != "offline" and dataset is not None:
        raise ToolkitError(f"Agent '{spec.name}' is {spec.kind} and learns from its own experience; drop --dataset.")


def _dataset_reference(dataset: str | Path | None) -> str | None:
    """A file is recorded by absolute path, so `toolkit resume` finds it from any directory;
    anything else (a Minari dataset id) as given."""
    if dataset is None:
        return None
    path = Path(dataset)
    return str(path.resolve()) if path.exists() else str(dataset)


def _load_checked_dataset(session: Session) -> Any:
    from toolkit.data import check_dataset_fits, load_dataset

    assert session.settings.dataset is not None
    data = load_dataset(session.settings.dataset)
    env = make_env(session.settings.env)
    try:
        check_dataset_fits(data, env)
    finally:
        env.close()
    return data


def open_run(run_dir: Path, device: str | None = None) -> Session:
    """Rebuild a run's agent (untrained) from its config.yaml (on ``device``, default the run's)."""
    settings = load_settings(run_dir)
    spec = registry.agent(settings.agent)
    config = from_dict(spec.config, settings.agent_config)
    return _session(settings, config, spec, device)


def open_trained_run(run_dir: Path) -> tuple[Session, int]:
    """A run's agent with its latest checkpoint's weights, and the step it was saved at."""
    session = open_run(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT, device=session.device)
    try:
        session.agent.load_state_dict(state["agent"])
        step = int(state["counters"]["step"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ToolkitError(f"Checkpoint {run_dir / CHECKPOINT} does not fit this run's agent ({exc}).") from None
    return session, step


def resume_training(run_dir: Path, steps: int | None = None, progress: bool = True,
                    address: str | None = None, device: str | None = None) -> tuple[Path, Any]:
    """Continue a run from its last checkpoint up to ``steps`` (default: the run's own target);
    a run with Ray workers may continue on another cluster (``address``), its learner on a
    cluster GPU as in :func:`start_training`. ``device`` overrides the run's device here."""
    saved = load_settings(run_dir)
    if device is None and learner_on_cluster_gpu(saved.workers, saved.device, address or saved.address):
        return run_remote_learner(resume_training, run_dir.resolve(), steps, run_dir=run_dir.resolve(),
                                  address=address)
    session = open_run(run_dir, device)
    if address is not None:
        session.settings.address = address
    state = load_checkpoint(run_dir / CHECKPOINT, device=session.device)
    done = int(state["counters"]["step"])
    target = steps if steps is not None else session.settings.steps
    if target <= done:
        raise ToolkitError(
            f"{run_dir} has already trained {done} steps; pass --steps larger than {done} to train further."
        )
    session.settings.steps = target
    data = _load_checked_dataset(session) if session.spec.kind == "offline" else None
    loop = _loop(session, run_dir, progress, data)
    try:
        loop.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ToolkitError(f"Checkpoint {run_dir / CHECKPOINT} does not fit this run's agent ({exc}).") from None
    save_settings(run_dir, session.settings)
    return run_dir, loop.run(target)


def _loop(session: Session, run_dir: Path, progress: bool, dataset: Any = None) -> Any:
    """The training loop of the agent's kind: local, or spread over Ray workers."""
    kind = session.spec.kind
    args = (session.agent, session.config, session.settings, lambda: make_env(session.settings.env),
            run_dir, session.device)
    distributed = session.settings.workers > 0
    if kind == "offline":
        if distributed:
            from toolkit.distributed.data_parallel import DataParallelOfflineLoop as OfflineLoop
        else:
            from toolkit.loops.offline import OfflineLoop  # type: ignore[assignment]

        return OfflineLoop(*args, dataset=dataset, progress=progress)
    if kind == "on-policy":
        if distributed:
            from toolkit.distributed.rollouts import DistributedOnPolicyLoop as OnPolicyLoop
        else:
            from toolkit.loops.on_policy import OnPolicyLoop  # type: ignore[assignment]

        return OnPolicyLoop(*args, progress=progress)
    if kind == "off-policy":
        if distributed:
            from toolkit.distributed.rollouts import DistributedOffPolicyLoop as OffPolicyLoop
        else:
            from toolkit.loops.off_policy import OffPolicyLoop  # type: ignore[assignment]

        return OffPolicyLoop(*args, progress=progress)
    raise ToolkitError(f"Agent '{session.spec.name}' has kind '{kind}', which this toolkit cannot train.")


def evaluate_run(
    run_dir: Path, episodes: int, video: bool = False, seed: int | None = None
) -> tuple[Any, Path, Path | None]:
    """Evaluate a run's latest checkpoint; writes ``eval/step-<N>.json`` (and a video)."""
    from toolkit.evaluation import evaluate

    if episodes <= 0:
        raise ToolkitError(f"--episodes must be positive, got {episodes}.")
    session, step = open_trained_run(run_dir)
    video_path = run_dir / "videos" / f"eval-step{step}.mp4" if video else None
    eval_seed = session.settings.seed + 2_000_000 if seed is None else seed
    result = evaluate(session.agent, session.settings.env, episodes, eval_seed, session.device, video_path)
    out = run_dir / "eval" / f"step-{step}.json"
    write_json(out, {"step": step, "seed": eval_seed, **result.to_dict(),
                     "video": str(video_path.relative_to(run_dir)) if video_path else None})
    return result, out, video_path
