"""From a command (train, resume, eval) to a running loop, for agents and models alike.

Everything here checks user input before anything is written, so a mistake leaves nothing
behind on disk. The learner is built by :mod:`toolkit.session`; the loop that trains it is
looked up in :data:`LOOPS` by the learner's kind (see ``docs/architecture.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.config import to_dict
from toolkit.distributed.remote_learner import learner_on_cluster_gpu, run_remote_learner
from toolkit.envs import check_env_id
from toolkit.errors import ToolkitError
from toolkit.registry import AgentSpec, ModelSpec, load_object, registry
from toolkit.session import (
    Session,
    build_config,
    build_session,
    load_model_data,
    open_run,
    open_trained_run,
    resolve_device,
)
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


#: The loop class of each learner kind, locally and on Ray workers. Named by import path so
#: that Ray is imported only by runs that use it. Every loop class has
#: ``from_session(session, run_dir, progress)``.
LOOPS: dict[tuple[str, bool], str] = {
    ("off-policy", False): "toolkit.loops.off_policy:OffPolicyLoop",
    ("off-policy", True): "toolkit.distributed.rollouts:DistributedOffPolicyLoop",
    ("on-policy", False): "toolkit.loops.on_policy:OnPolicyLoop",
    ("on-policy", True): "toolkit.distributed.rollouts:DistributedOnPolicyLoop",
    ("offline", False): "toolkit.loops.offline:OfflineLoop",
    ("offline", True): "toolkit.distributed.data_parallel:DataParallelOfflineLoop",
    # A bridged library trains itself, spreading its work over Ray when asked (RLlib).
    ("external", False): "toolkit.loops.external:ExternalLoop",
    ("external", True): "toolkit.loops.external:ExternalLoop",
    ("autoencoder", False): "toolkit.loops.model:ModelLoop",
    ("generative", False): "toolkit.loops.model:ModelLoop",
    ("classifier", False): "toolkit.loops.model:ModelLoop",
    ("world-model", False): "toolkit.loops.world_model:WorldModelLoop",
}


def start_training(
    agent: str,
    env: str | None,
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
    log_every: int | None = None,
    progress: bool = True,
    dataset: str | Path | None = None,
    workers: int = 0,
    envs_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    pixels: int | None = None,
    frame_stack: int = 3,
    grey: bool = False,
    compile: str = "auto",
    preset: bool = False,
) -> tuple[Path, Any]:
    """Check everything, create the run directory, train. Returns the run dir and loop result.

    ``agent`` names an agent or a model. Models learn from ``dataset`` (a named image source,
    a frames file or a directory of MNIST/CIFAR files) and count ``steps`` in gradient steps;
    they take no env. Offline agents need ``dataset`` (a D4RL HDF5 file or a Minari dataset)
    and count gradient steps too; online agents count environment steps and refuse a dataset.
    Offline agents and models evaluate ten times over the run unless ``eval_every`` says
    otherwise; agents log every 1,000 steps and models 20 times a run unless ``log_every`` says
    otherwise. ``workers > 0`` uses Ray: env-runner actors for online agents, data-parallel
    workers for offline ones. With ``workers > 0`` and ``device="cuda"`` on a driver without
    CUDA, the learner runs on a GPU of the Ray cluster
    (:mod:`toolkit.distributed.remote_learner`); the run directory must then be on storage
    that GPU node writes to (the same machine or a shared filesystem). ``env_kwargs`` go to the
    env's constructor; ``pixels`` (a side in pixels) makes the agent observe ``frame_stack``
    rendered frames instead of the env's own observations (:mod:`toolkit.pixels`). ``compile``
    says how an agent's update runs (:mod:`toolkit.compile`). ``preset`` applies the agent's
    tuned settings for ``env`` (:attr:`toolkit.registry.AgentSpec.presets`) under the config
    file and ``set_items``."""
    if steps is not None and steps <= 0:
        raise ToolkitError(f"--steps must be a positive number of steps, got {steps}.")
    if eval_every < 0:
        raise ToolkitError(f"--eval-every must be 0 (the learner's default) or a positive number of steps, got {eval_every}.")
    if eval_episodes < 1:
        raise ToolkitError(f"--eval-episodes must be at least 1, got {eval_episodes}.")
    if checkpoint_every < 0:
        raise ToolkitError(f"--checkpoint-every must be 0 (only at the end) or a positive number of steps, got {checkpoint_every}.")
    if log_every is not None and log_every < 1:
        raise ToolkitError(f"--log-every must be a positive number of steps, got {log_every}.")
    _check_ray_options(workers, envs_per_worker, gpus_per_worker)
    spec = registry.learner(agent)
    check_learner_inputs(spec, env, dataset)
    if isinstance(spec, ModelSpec) and (env_kwargs or pixels is not None):
        raise ToolkitError(f"Model '{spec.name}' takes no env, so --env-kwargs and --pixels do not apply.")
    if pixels is not None and (pixels < 8 or frame_stack < 1):
        raise ToolkitError(f"--pixels needs a side of at least 8 pixels and --frame-stack at least 1, got {pixels} and {frame_stack}.")
    if isinstance(spec, ModelSpec):
        if preset:
            raise ToolkitError(f"Model '{spec.name}' has no presets: --preset applies to agents on an env.")
        if compile not in ("auto", "none"):
            raise ToolkitError(f"--compile applies to agents' updates; model '{spec.name}' trains eagerly.")
        return _start_model(spec, steps, seed, device, config_file, set_items, run_dir, runs_root,
                            eval_every, checkpoint_every, log_every, progress, dataset, workers)
    assert env is not None
    config = build_config(spec, config_file, set_items, preset=env if preset else None)
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
        log_every=log_every or 1_000, agent_config=to_dict(config), toolkit_version=__version__,
        dataset=_dataset_reference(dataset), workers=workers, envs_per_worker=envs_per_worker,
        gpus_per_worker=gpus_per_worker, address=address, env_kwargs=dict(env_kwargs or {}),
        pixels=pixels, frame_stack=frame_stack, grey=grey, compile=compile, preset=env if preset else None,
    )
    _refuse_existing_run_dir(run_dir)
    path = run_dir or default_run_dir(runs_root, agent, env, seed)
    on_cluster_gpu = spec.kind != "external" and learner_on_cluster_gpu(workers, device, address)
    if spec.kind == "external" and compile not in ("auto", "none"):
        raise ToolkitError(f"--compile applies to the toolkit's own agents; '{spec.name}' is trained by its library.")
    if not on_cluster_gpu:  # a mode the device cannot run fails before any write
        from toolkit.compile import resolve_mode

        resolve_mode(compile, resolve_device(device))
    if on_cluster_gpu:
        return run_remote_learner(_train_new, settings, config, path.resolve(), run_dir=path.resolve())
    return _train_new(settings, config, path, progress)


def _start_model(spec: ModelSpec, steps: int | None, seed: int, device: str,
                 config_file: Path | None, set_items: list[str] | None, run_dir: Path | None,
                 runs_root: Path, eval_every: int, checkpoint_every: int, log_every: int | None,
                 progress: bool, dataset: str | Path | None, workers: int) -> tuple[Path, Any]:
    """`toolkit train MODEL --dataset SOURCE`: the model counterpart of :func:`start_training`."""
    if workers > 0:
        raise ToolkitError(f"Model '{spec.name}' trains in one process; drop --workers.")
    config = build_config(spec, config_file, set_items)
    total = steps or spec.default_steps
    settings = RunSettings(
        agent="", env="", seed=seed, steps=total, device=device,
        eval_every=eval_every or max(1, total // 10), eval_episodes=0,
        checkpoint_every=checkpoint_every, log_every=log_every or max(1, total // 20),
        toolkit_version=__version__, dataset=_dataset_reference(dataset),
        model=spec.name, model_config=to_dict(config),
    )
    data = load_model_data(settings)  # an unknown source or a broken file fails before any write
    settings.data_shape = list(data.shape)
    _refuse_existing_run_dir(run_dir)
    path = run_dir or default_run_dir(runs_root, spec.name, _dataset_name(dataset), seed)
    session = build_session(settings, config, data=data)
    path = create_run_dir(path)
    save_settings(path, settings)
    return path, make_loop(session, path, progress).run(settings.steps)


def _dataset_name(dataset: str | Path) -> str:
    """A short name for run directories: a named source as is, a file or folder by its stem."""
    path = Path(dataset)
    return path.stem if path.exists() else str(dataset)


def _refuse_existing_run_dir(run_dir: Path | None) -> None:
    if run_dir is not None and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        create_run_dir(run_dir)  # raises before any work is done


def _train_new(settings: RunSettings, config: Any, path: Path, progress: bool,
               device: str | None = None) -> tuple[Path, Any]:
    """Build the session, create the run directory, train (here, or in a remote learner)."""
    session = build_session(settings, config, device)
    if session.spec.kind == "offline":
        session.data = _load_checked_dataset(session)
    path = create_run_dir(path)
    save_settings(path, settings)
    return path, make_loop(session, path, progress).run(settings.steps)


def _check_ray_options(workers: int, envs_per_worker: int, gpus_per_worker: float) -> None:
    if workers < 0:
        raise ToolkitError(f"--workers must be 0 (no Ray) or a positive number of Ray workers, got {workers}.")
    if envs_per_worker < 1:
        raise ToolkitError(f"--envs-per-worker must be at least 1, got {envs_per_worker}.")
    if gpus_per_worker < 0:
        raise ToolkitError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}.")


def check_learner_inputs(spec: AgentSpec | ModelSpec, env: str | None, dataset: str | Path | None) -> None:
    """Models take a dataset and no env; agents an env, and a dataset exactly when offline."""
    from toolkit.data.images import NAMED_SOURCES, is_image_source

    if isinstance(spec, ModelSpec):
        if env is not None:
            raise ToolkitError(
                f"Model '{spec.name}' learns from a dataset, not an environment; drop --env {env} and pass "
                f"--dataset SOURCE (record an env's frames with `toolkit dataset frames`)."
            )
        if dataset is None:
            raise ToolkitError(
                f"Model '{spec.name}' needs --dataset SOURCE: one of {', '.join(NAMED_SOURCES)}, a frames .hdf5 file "
                "or a directory of MNIST IDX files or CIFAR-10 python batches."
            )
        if spec.kind == "world-model" and not Path(dataset).is_file():  # a world model learns episodes, not images
            raise ToolkitError(
                f"Model '{spec.name}' learns from a frames file with actions, rewards and episode ends, which {dataset} "
                "is not; record one with `toolkit dataset frames ENV_ID`."
            )
        return
    if env is None:
        raise ToolkitError(f"Agent '{spec.name}' needs an environment; pass --env ENV_ID (e.g. --env CartPole-v1).")
    if dataset is not None and is_image_source(str(dataset)):
        raise ToolkitError(
            f"{dataset} is an image dataset, which models learn from; agent '{spec.name}' "
            + ("learns offline from a D4RL or Minari dataset (make one with `toolkit dataset collect`)."
               if spec.kind == "offline" else "learns from its own experience; drop --dataset.")
        )
    if spec.kind == "offline" and dataset is None:
        raise ToolkitError(
            f"Agent '{spec.name}' learns offline from a dataset; pass --dataset FILE "
            "(make one with `toolkit dataset collect`)."
        )
    if spec.kind != "offline" and dataset is not None:
        raise ToolkitError(f"Agent '{spec.name}' is {spec.kind} and learns from its own experience; drop --dataset.")


def _dataset_reference(dataset: str | Path | None) -> str | None:
    """A file is recorded by absolute path, so `toolkit resume` finds it from any directory;
    anything else (a Minari dataset id, a named image source) as given."""
    if dataset is None:
        return None
    path = Path(dataset)
    return str(path.resolve()) if path.exists() else str(dataset)


def _load_checked_dataset(session: Session) -> Any:
    """Load the run's dataset and refuse what would break learning (NaN or inf values, shapes
    that are not the env's), before anything is written; warn when it was recorded on
    another env id but fits."""
    from rich.markup import escape

    from toolkit.console import err_console
    from toolkit.data import check_dataset_fits, load_dataset
    from toolkit.data.validate import check_finite, env_mismatch

    assert session.settings.dataset is not None
    data = load_dataset(session.settings.dataset)
    check_finite(data)
    env = session.make_env()
    try:
        check_dataset_fits(data, env)
    finally:
        env.close()
    warning = env_mismatch(data, session.settings.env)
    if warning:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return data


def resume_training(run_dir: Path, steps: int | None = None, progress: bool = True,
                    address: str | None = None, device: str | None = None) -> tuple[Path, Any]:
    """Continue a run from its last checkpoint up to ``steps`` (default: the run's own target);
    a run with Ray workers may continue on another cluster (``address``), its learner on a
    cluster GPU as in :func:`start_training`. ``device`` overrides the run's device here."""
    saved = load_settings(run_dir)
    external = bool(saved.agent) and registry.agent(saved.agent).kind == "external"  # its library places its learner
    if device is None and not external and learner_on_cluster_gpu(saved.workers, saved.device, address or saved.address):
        return run_remote_learner(resume_training, run_dir.resolve(), steps, run_dir=run_dir.resolve(),
                                  address=address)
    if steps is not None and steps <= 0:
        raise ToolkitError(f"--steps must be a positive number of steps, got {steps}.")
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
    if session.spec.kind == "offline":
        session.data = _load_checked_dataset(session)
    loop = make_loop(session, run_dir, progress)
    try:
        loop.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        noun = "model" if session.is_model else "agent"
        raise ToolkitError(f"Checkpoint {run_dir / CHECKPOINT} does not fit this run's {noun} ({exc}).") from None
    save_settings(run_dir, session.settings)
    return run_dir, loop.run(target)


def make_loop(session: Session, run_dir: Path, progress: bool) -> Any:
    """The training loop of the learner's kind (see :data:`LOOPS`): local, or over Ray workers,
    with the agent's update compiled as ``settings.compile`` asks (:mod:`toolkit.compile`)."""
    from toolkit.compile import compile_update, resolve_mode

    kind = session.spec.kind
    distributed = session.settings.workers > 0
    reference = LOOPS.get((kind, distributed))
    if reference is None:
        where = "on Ray workers" if distributed else "here"
        raise ToolkitError(f"'{session.spec.name}' has kind '{kind}', which this toolkit cannot train {where}.")
    mode = resolve_mode(session.settings.compile, session.device)
    if not session.is_model:
        compile_update(session.learner, mode)
    return load_object(reference).from_session(session, run_dir, progress)


def evaluate_run(
    run_dir: Path, episodes: int, video: bool = False, seed: int | None = None,
    env: str | None = None, env_kwargs: dict[str, Any] | None = None, checkpoint: str = "latest",
) -> tuple[Any, Path, Path | None]:
    """Evaluate an agent run's latest checkpoint; writes ``eval/step-<N>.json`` (and a video).
    ``checkpoint="best"`` evaluates ``checkpoints/best.pt`` instead (the best periodic
    evaluation while training) and writes ``eval/best-step-<N>.json``.

    ``env`` (with ``env_kwargs``) evaluates the agent in another env than it trained in, e.g.
    an agent trained in a learned world model in the real env; its spaces must fit the agent's."""
    from toolkit.evaluation import evaluate

    if episodes <= 0:
        raise ToolkitError(f"--episodes must be positive, got {episodes}.")
    session, step = open_trained_run(run_dir, checkpoint)
    if session.is_model:
        raise ToolkitError(f"{run_dir} is a model run; evaluate it with evaluate_model_run (`toolkit eval` does).")
    prefix = "best-" if checkpoint == "best" else ""
    env_id, options = session.settings.env, session.settings.env_options
    if env is not None or env_kwargs:
        env_id, options = _other_env(session, env or env_id, env_kwargs or {})
    video_path = run_dir / "videos" / f"eval-{prefix}step{step}.mp4" if video else None
    eval_seed = session.settings.seed + 2_000_000 if seed is None else seed
    result = evaluate(session.agent, env_id, episodes, eval_seed, session.device, video_path, options=options)
    name = f"{prefix}step-{step}.json" if env_id == session.settings.env else f"{prefix}step-{step}-{env_id.replace('/', '_')}.json"
    out = run_dir / "eval" / name
    write_json(out, {"step": step, "checkpoint": checkpoint, "seed": eval_seed, "env": env_id, **result.to_dict(),
                     "video": str(video_path.relative_to(run_dir)) if video_path else None})
    return result, out, video_path


def _other_env(session: Session, env_id: str, env_kwargs: dict[str, Any]) -> tuple[str, Any]:
    """The env (and options) to evaluate a run in instead of its own, checked to fit the agent."""
    from dataclasses import replace

    from toolkit.envs import make_env

    check_env_id(env_id)
    options = replace(session.settings.env_options, kwargs=dict(env_kwargs))
    other = make_env(env_id, options=options)
    own = session.make_env()
    try:
        for what in ("observation_space", "action_space"):
            mine, theirs = getattr(own, what), getattr(other, what)
            if getattr(mine, "shape", None) != getattr(theirs, "shape", None) or type(mine) is not type(theirs):
                raise ToolkitError(
                    f"The run's agent was trained on {session.settings.env}, whose {what.replace('_', ' ')} {mine} "
                    f"does not fit {env_id}'s {theirs}."
                )
    finally:
        own.close()
        other.close()
    return env_id, options


def evaluate_model_run(run_dir: Path, is_samples: int = 100, is_limit: int = 500, figures: bool = True,
                       seed: int = 0, checkpoint: str = "latest") -> tuple[Any, Path, list[Path]]:
    """Evaluate a model run's latest checkpoint: the metrics table (``eval/step-<N>.json``) and,
    unless ``figures`` is False, PNGs under ``figures/step-<N>/`` (also in TensorBoard).
    ``checkpoint="best"`` evaluates ``checkpoints/best.pt`` (the best test score while
    training) into ``eval/best-step-<N>.json`` and ``figures/best-step-<N>/``."""
    from toolkit.figures import write_model_figures
    from toolkit.model_eval import evaluate_model

    if is_samples <= 0:
        raise ToolkitError(f"--is-samples must be positive, got {is_samples}.")
    session, step = open_trained_run(run_dir, checkpoint)
    prefix = "best-" if checkpoint == "best" else ""
    if not session.is_model:
        raise ToolkitError(f"{run_dir} is an agent run; `toolkit eval` runs episodes for it.")
    data, world = session.data, None
    if session.spec.kind == "world-model":  # M's metrics and dream; V is judged on the test episodes' frames
        from toolkit.loops.world_model import world_model_evaluation

        world = world_model_evaluation(session.learner, session.config, session.settings, session.device, seed=seed)
        data = world.frames
    report = evaluate_model(session.learner, data, session.device, is_samples=is_samples,
                            is_limit=is_limit, seed=seed)
    if world is not None:
        report.metrics = {**world.metrics, **report.metrics}
        report.labels.update(world.labels)
    out = run_dir / "eval" / f"{prefix}step-{step}.json"
    write_json(out, {"step": step, "checkpoint": checkpoint, "is_samples": is_samples, **report.to_dict()})
    paths: list[Path] = []
    if figures:
        from torch.utils.tensorboard import SummaryWriter

        figure_dir = run_dir / "figures" / f"{prefix}step-{step}"
        with SummaryWriter(str(run_dir / "tb")) as tb:
            paths = write_model_figures(session.learner, data, figure_dir, session.device, seed=seed, tb_writer=tb,
                                        step=step)
            if world is not None:
                from toolkit.figures import write_dream_strip

                paths.append(write_dream_strip(world.real, world.dreamt, figure_dir, tb_writer=tb, step=step))
    return report, out, paths
