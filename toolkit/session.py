"""From resolved run settings to a built learner: config, device, seed, data, agent or model.

Every command that needs a learner goes through here (`train`, `resume`, `eval`, dataset
collection, Ray workers), so an agent or a model is always built the same way. Nothing here
writes to disk; :mod:`toolkit.training` opens the run directory and picks the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.config import apply_overrides, from_dict, load_yaml_overrides, parse_set_options, validate
from toolkit.envs import check_agent_fits, make_env
from toolkit.errors import ToolkitError
from toolkit.registry import AgentSpec, ModelSpec, registry
from toolkit.runs import BEST_CHECKPOINT, CHECKPOINT, RunSettings, load_checkpoint, load_settings


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


def build_config(spec: AgentSpec | ModelSpec, config_file: Path | None = None, set_items: list[str] | None = None,
                 preset: str | None = None) -> Any:
    """The learner's config: defaults, then the agent's preset for the env id ``preset`` (if
    given), then the YAML file, then ``--set`` overrides, validated."""
    config = spec.config()
    if preset is not None:
        if not isinstance(spec, AgentSpec):
            raise ToolkitError(f"Model '{spec.name}' has no presets: --preset applies to agents on an env.")
        config = apply_overrides(config, dict(spec.preset(preset)["settings"]), source=f"preset for {preset}")
    if config_file is not None:
        config = apply_overrides(config, load_yaml_overrides(config_file), source=str(config_file))
    config = apply_overrides(config, parse_set_options(set_items or []))
    validate(config)
    return _absolute_run_paths(config)


def _absolute_run_paths(config: Any) -> Any:
    """Settings that name another run (``encoder=RUN_DIR``) are recorded by absolute path, so
    `toolkit resume` and `eval` find that run from any working directory."""
    from toolkit.config import describe
    from toolkit.runs import CONFIG_FILE

    absolute = {}
    for info in describe(config):
        value = info.default  # describe() of an instance reports its current values
        if isinstance(value, str) and value and (Path(value).expanduser() / CONFIG_FILE).is_file():
            absolute[info.key] = str(Path(value).expanduser().resolve())
    return apply_overrides(config, absolute, source="run paths") if absolute else config


@dataclass
class Session:
    """A learner (agent or model) built for a run, with what built it."""

    settings: RunSettings
    spec: AgentSpec | ModelSpec
    config: Any
    learner: Any
    device: Any
    #: What the learner trains on besides an env: a model's image dataset, an offline
    #: agent's dataset (set by :mod:`toolkit.training`); None for online agents.
    data: Any = None

    @property
    def agent(self) -> Any:
        """The learner of an agent run (the name every RL module knows it by)."""
        return self.learner

    @property
    def is_model(self) -> bool:
        return isinstance(self.spec, ModelSpec)

    def make_env(self) -> Any:
        """A fresh environment of the run (agents only)."""
        return make_env(self.settings.env, options=self.settings.env_options)


def build_session(settings: RunSettings, config: Any = None, device_name: str | None = None,
                  data: Any = None) -> Session:
    """Build the run's learner on the chosen device (``device_name`` overrides the run's, e.g.
    on a cluster GPU), seeded. ``config`` defaults to the run's saved one; a model's ``data``
    is loaded from ``settings.dataset`` unless given."""
    import torch

    device = resolve_device(device_name or settings.device)
    if settings.model:
        spec: AgentSpec | ModelSpec = registry.model(settings.model)
        config = config if config is not None else from_dict(spec.config, settings.model_config)
        if data is None:
            data = load_model_data(settings)
        torch.manual_seed(settings.seed)
        learner = _with_masks(spec.build(config, data.spec, str(device)), settings)
        return Session(settings, spec, config, learner, device, data)
    spec = registry.agent(settings.agent)
    config = config if config is not None else from_dict(spec.config, settings.agent_config)
    torch.manual_seed(settings.seed)
    env = make_env(settings.env, options=settings.env_options)
    check_agent_fits(spec, settings.env, env)
    learner = _with_masks(spec.build(config, env.observation_space, env.action_space, str(device)), settings)
    env.close()
    return Session(settings, spec, config, learner, device, data)


def _with_masks(learner: Any, settings: RunSettings) -> Any:
    """A pruned run's learner gets a place for its pruning masks, which its checkpoint fills
    (see :mod:`toolkit.pruning`), so every command holds its pruned weights at zero."""
    if settings.pruning:
        from toolkit.pruning import PruningMasks

        PruningMasks.attach(learner)
    return learner


def load_model_data(settings: RunSettings) -> Any:
    """A model run's dataset, split with the run's seed; a run resumed or evaluated on data of
    another example shape (a frames file re-recorded at another size) is refused."""
    from toolkit.data.images import load_image_source

    assert settings.dataset is not None
    data = load_image_source(settings.dataset, seed=settings.seed)
    if settings.data_shape is not None and tuple(settings.data_shape) != tuple(data.shape):
        raise ToolkitError(
            f"{settings.dataset} now gives examples of shape {tuple(data.shape)}, but this run's "
            f"model was trained on {tuple(settings.data_shape)}; use data of the run's shape."
        )
    return data


def open_run(run_dir: Path, device: str | None = None) -> Session:
    """Rebuild a run's learner (untrained) from its config.yaml (on ``device``, default the run's)."""
    return build_session(load_settings(run_dir), device_name=device)


#: The checkpoints `toolkit eval --checkpoint` can read.
CHECKPOINTS = {"latest": CHECKPOINT, "best": BEST_CHECKPOINT}


def checkpoint_path(run_dir: Path, which: str = "latest") -> Path:
    """The path of a run's ``latest`` or ``best`` checkpoint, checked to exist."""
    if which not in CHECKPOINTS:
        raise ToolkitError(f"Unknown checkpoint '{which}'; use latest or best.")
    path = run_dir / CHECKPOINTS[which]
    if which == "best" and not path.is_file() and (run_dir / CHECKPOINT).is_file():
        raise ToolkitError(
            f"{run_dir} has no best checkpoint: one is kept only by runs that evaluate while training "
            "(--eval-every); evaluate its latest with --checkpoint latest."
        )
    return path


def open_trained_run(run_dir: Path, checkpoint: str = "latest", device: str | None = None) -> tuple[Session, int]:
    """A run's learner with the weights of its ``latest`` (or ``best``) checkpoint, and the
    step that checkpoint was saved at (on ``device``, default the run's)."""
    session = open_run(run_dir, device)
    path = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path, device=session.device)
    key = "model" if session.is_model else "agent"
    try:
        from toolkit.external import ExternalAgent, load_external_state

        if isinstance(session.learner, ExternalAgent):  # its weights are in the library's own checkpoint
            load_external_state(session.learner, state[key], run_dir)
        else:
            session.learner.load_state_dict(state[key])
        step = int(state["counters"]["step"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ToolkitError(f"Checkpoint {path} does not fit this run's {key} ({exc}).") from None
    return session, step
