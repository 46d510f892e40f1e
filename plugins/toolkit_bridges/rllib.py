"""RLlib's PPO, APPO, SAC and DQN as toolkit agents (kind ``"external"``), on RLlib's new API
stack: an ``RLModule`` acts, a ``Learner`` updates it, ``EnvRunner``s step the environments.

The toolkit keeps everything around the library (:mod:`toolkit.loops.external`); this module
only translates:

* :meth:`RLlibAgent.start` joins or starts Ray through :func:`toolkit.distributed.cluster.init_ray`
  (so ``--address`` works), registers the run's env as ``toolkit:<env id>`` with a creator
  that calls the toolkit's picklable ``make_env`` (env plugins and wrappers exist on every env
  runner) and builds the algorithm from the agent's config (fields named as
  ``AlgorithmConfig.training()`` names them, see :mod:`toolkit_bridges.rllib_spec`);
* :meth:`RLlibAgent.learn` calls ``algo.train()`` until enough env steps were sampled;
* :meth:`RLlibAgent.act` runs the RLModule as RLlib's env runners do (``forward_inference`` or
  ``forward_exploration``, then the action distribution, then the unsquashing of Box actions);
* checkpoints are RLlib's own (``algo.save_to_path``), plus the replay buffer, which RLlib's
  new stack leaves out.

Episode offsets: RLlib reports what an iteration sampled, not when each episode ended within
it (several env runners sample at once), so the episodes that finished during one
``algo.train()`` are spread evenly over the env steps that iteration sampled. Each episode's
return and length are exact: an ``on_episode_end`` callback logs them, chunks sampled in
earlier iterations included, as an un-reduced series (``reduce="item_series"``).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import pickle
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import ToolkitError
from toolkit.external import EnvContext, ExternalAgent, LearnReport
from toolkit.registry import library_version

#: The algorithm classes, by the name the bridge gives them.
ALGORITHMS = {
    "PPO": "ray.rllib.algorithms.ppo:PPOConfig",
    "APPO": "ray.rllib.algorithms.appo:APPOConfig",
    "SAC": "ray.rllib.algorithms.sac:SACConfig",
    "DQN": "ray.rllib.algorithms.dqn:DQNConfig",
}
#: Where the single-agent RLModule lies inside a checkpoint written by ``algo.save_to_path``.
MODULE_PATH = Path("learner_group") / "learner" / "rl_module" / "default_policy"
#: The replay buffer beside RLlib's checkpoint (RLlib's new stack does not save it).
BUFFER_FILE = "toolkit_replay_buffer.pkl"
#: What the bridge remembers of a checkpoint: the algorithm and its lifetime env steps.
STATE_FILE = "toolkit_rllib.json"
#: The metric the episode callback logs finished episodes under, as ``(return, length)``.
EPISODES_KEY = "toolkit_episodes"
#: Learner variables that RLlib's checkpoints leave out (the Learner's ``get_state`` holds the
#: module and optimiser only): PPO's and APPO's adaptive KL coefficient and SAC's log
#: temperature. Without them a resumed run would restart them at ``kl_coeff`` and
#: ``initial_alpha``; the bridge keeps them in its own note.
LEARNER_VARIABLES = ("curr_kl_coeffs_per_module", "curr_log_alpha")
#: Config fields that are not keywords of ``AlgorithmConfig.training()``.
NOT_TRAINING = frozenset({"hidden_sizes", "replay_buffer_capacity", "initial_epsilon", "final_epsilon",
                          "epsilon_timesteps"})

#: Learner statistics left out of the report: counters, bookkeeping and settings that only
#: echo the config (learning rates without a schedule, the entropy target).
_SKIPPED_STATS = frozenset({
    "weights_seq_no", "diff_num_grad_updates_vs_sampler_policy", "module_train_batch_size_mean",
    "last_target_update_ts", "num_target_updates", "target_entropy", "log_alpha_value", "curr_entropy_coeff",
    "qf_max", "qf_min", "var_IS",
})
#: RLlib's longer statistic names, shortened.
_RENAMED_STATS = {
    "gradients_default_optimizer_global_norm": "grad_norm",
    "mean_kl_loss": "kl",
    "curr_kl_coeff": "kl_coeff",
    "vf_explained_var": "explained_variance",
}


# --- importing RLlib --------------------------------------------------------------------------


def import_rllib() -> Any:
    """``import ray.rllib``, or one sentence naming the extra that installs it.

    Ray installed without its ``rllib`` extra imports, but ``ray.rllib`` then misses modules
    such as ``tree`` (dm-tree); that is a missing dependency, not a broken plugin."""
    try:
        import ray.rllib
    except ImportError as exc:
        raise ToolkitError(
            f"RLlib cannot be imported ({exc}); install it with: pip install 'toolkit-rl[rllib]'."
        ) from None
    # RLlib warns on every build that the new API stack is its default, about its own
    # deprecated internals and about a GPU monitor it lacks; none of it is the user's to act on.
    for name in ("ray.rllib", "ray._common.deprecation", "ray.tune.utils.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return ray.rllib


def _algorithm_config_class(algorithm: str) -> Any:
    module, _, name = ALGORITHMS[algorithm].partition(":")
    return getattr(importlib.import_module(module), name)


# --- what runs inside RLlib's processes (module-level, so Ray pickles it by reference) -------


def create_env(make_env: Any, env_config: Any = None) -> Any:
    """RLlib's env creator: the toolkit's own ``make_env`` (RLlib's ``env_config`` is unused)."""
    return make_env()


def record_episode(*, episode: Any, prev_episode_chunks: Any = (), metrics_logger: Any = None, **_: Any) -> None:
    """RLlib's ``on_episode_end`` callback: log the finished episode's return and length.

    An episode that spanned several ``sample()`` calls arrives as its last chunk plus the
    earlier ones (``prev_episode_chunks``); both are counted. ``item_series`` keeps every
    value un-averaged until the algorithm's result is compiled."""
    chunks = [episode, *(prev_episode_chunks or ())]
    total = float(sum(chunk.get_return() for chunk in chunks))
    length = int(sum(len(chunk) for chunk in chunks))
    metrics_logger.log_value(EPISODES_KEY, (total, length), reduce="item_series")


def read_learner_variables(learner: Any) -> dict[str, float]:
    """The :data:`LEARNER_VARIABLES` a Learner holds for the default module, as floats."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    out = {}
    for name in LEARNER_VARIABLES:
        variables = getattr(learner, name, None)
        if variables is not None and DEFAULT_MODULE_ID in variables:  # `in` creates nothing
            out[name] = float(variables[DEFAULT_MODULE_ID].detach().cpu())
    return out


def write_learner_variables(learner: Any, values: dict[str, float]) -> None:
    """Set the Learner's :data:`LEARNER_VARIABLES` in place (an optimiser may hold them)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    for name, value in values.items():
        variables = getattr(learner, name, None)
        if variables is not None:
            with torch.no_grad():
                variables[DEFAULT_MODULE_ID].fill_(value)


# --- pieces of learn() ------------------------------------------------------------------------


def episode_items(value: Any) -> list[tuple[float, int]]:
    """The ``(return, length)`` pairs the callback logged, from an iteration's result: RLlib
    hands back a series of one item as the item itself, and an empty one as nan or nothing."""
    if value is None or isinstance(value, float):
        return []
    items = list(value)
    if items and isinstance(items[0], (int, float)):
        return [(float(items[0]), int(items[1]))]
    return [(float(ret), int(length)) for ret, length in items]


def spread_episodes(episodes: list[tuple[float, int]], before: int, sampled: int) -> list[tuple[float, int, int]]:
    """``(return, length, offset)`` for episodes that finished during one iteration, which
    sampled ``sampled`` env steps after ``before`` steps of this ``learn`` call: the offsets
    are spread evenly over the iteration (RLlib does not say when each one ended)."""
    count = len(episodes)
    return [(float(ret), int(length), before + max(1, math.ceil((i + 1) * sampled / count)))
            for i, (ret, length) in enumerate(episodes)]


def learner_stats(stats: dict[str, Any]) -> dict[str, float]:
    """The learner's statistics for the default module as finite floats under short names
    (``policy_loss``, ``vf_loss``, ``entropy``, ``qf_loss``, ``alpha_value``...)."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        if key in _SKIPPED_STATS or key.startswith("num_") or key.endswith("learning_rate"):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):  # nested dicts (throughputs) and the like
            continue
        if math.isfinite(number):  # nan: no update happened in that iteration
            out[_RENAMED_STATS.get(key, key)] = number
    return out


def training_kwargs(config: Any) -> dict[str, Any]:
    """``AlgorithmConfig.training()`` keywords from a bridge config (see
    :mod:`toolkit_bridges.rllib_spec` for the fields that are not RLlib's own keywords)."""
    kwargs = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in NOT_TRAINING}
    if hasattr(config, "replay_buffer_capacity"):
        kwargs["replay_buffer_config"] = {"capacity": config.replay_buffer_capacity}
    if hasattr(config, "initial_epsilon"):
        kwargs["epsilon"] = [(0, config.initial_epsilon), (config.epsilon_timesteps, config.final_epsilon)]
    return kwargs


# --- the agent --------------------------------------------------------------------------------


class RLlibAgent(ExternalAgent):
    """One RLlib algorithm (``"PPO"``, ``"APPO"``, ``"SAC"`` or ``"DQN"``) as a toolkit agent.

    Training builds the whole ``Algorithm``; acting needs only its RLModule: after
    :meth:`load_native` alone (``toolkit eval``) it is read from the checkpoint, while
    training it is a copy of the learner's module, refreshed after every :meth:`learn`.
    """

    library = "ray"

    def __init__(self, algorithm: str, config: Any, observation_space: Any, action_space: Any,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        if algorithm not in ALGORITHMS:
            raise ToolkitError(f"Unknown RLlib algorithm '{algorithm}'; the bridge knows {', '.join(ALGORITHMS)}.")
        self.algorithm = algorithm
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)
        self._algo: Any = None
        self._module: Any = None  # the RLModule that acts, on the CPU
        self._module_stale = False  # the learner has updated since the module was copied
        self._restore_from: Path | None = None
        self._lifetime_steps = 0  # env steps RLlib has sampled, over the whole run

    # --- training -------------------------------------------------------------------------------

    def start(self, context: EnvContext) -> None:
        """Build the algorithm on the run's envs (Ray joined or started as the run says) and
        continue the checkpoint :meth:`load_native` read, if any."""
        import_rllib()
        from ray.tune.registry import register_env

        from toolkit.distributed.cluster import init_ray, require_resources

        ray = init_ray(context.address)
        if context.workers > 0:  # Ray would wait forever for env runners it cannot place
            require_resources(ray, {"CPU": float(context.workers), "GPU": context.workers * context.gpus_per_worker},
                              f"--workers {context.workers}")
        env_name = f"toolkit:{context.env_id}"
        register_env(env_name, partial(create_env, context.make_env))
        try:
            self._algo = self._algorithm_config(context, env_name).build_algo()
        except ValueError as exc:  # RLlib's own validation of settings that do not go together
            raise ToolkitError(f"RLlib refused the {self.algorithm} settings: {str(exc).strip().splitlines()[0]}") from None
        if self._restore_from is not None:
            self._restore(self._restore_from)
        self._lifetime_steps = self._sampled_lifetime()
        self._module_stale = True

    def _algorithm_config(self, context: EnvContext, env_name: str) -> Any:
        """RLlib's ``AlgorithmConfig`` for this agent's config and the run's Ray options."""
        from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

        on_gpu = context.device.type == "cuda"
        return (
            _algorithm_config_class(self.algorithm)()
            .environment(env_name)
            .env_runners(num_env_runners=context.workers, num_envs_per_env_runner=context.envs_per_worker,
                         num_gpus_per_env_runner=context.gpus_per_worker)
            # The learner runs in the driver: on its GPU with --device cuda, else on its CPU.
            .learners(num_learners=0, num_gpus_per_learner=1 if on_gpu else 0, local_gpu_idx=context.device.index or 0)
            .training(**training_kwargs(self.config))
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(self.config.hidden_sizes)))
            .callbacks(on_episode_end=record_episode)
            # The toolkit asks for env steps; a time floor per iteration (SAC 1 s, APPO 10 s)
            # would only make chunks overshoot by however many steps fit in it.
            .reporting(min_time_s_per_iteration=0)
            .debugging(seed=context.seed)
        )

    def learn(self, steps: int) -> LearnReport:
        """Run ``algo.train()`` until at least ``steps`` env steps were sampled in this call
        (RLlib samples whole batches, so it overshoots); report the true count."""
        algo = self._require_algo("learn")
        start = done = self._sampled_lifetime()
        report = LearnReport(steps=0)
        while done - start < steps:
            result = algo.train()
            now = self._sampled_lifetime()
            episodes = episode_items(result.get("env_runners", {}).get(EPISODES_KEY))
            if episodes:
                report.episodes.extend(spread_episodes(episodes, done - start, now - done))
            report.metrics.update(learner_stats(result.get("learners", {}).get("default_policy", {})))
            done = now
        report.steps = done - start
        # An episode reported by an iteration that sampled nothing (an asynchronous APPO env
        # runner's late metrics) still ends inside this call.
        report.episodes = [(r, n, min(max(o, 1), report.steps)) for r, n, o in report.episodes]
        self._lifetime_steps = done
        self._module_stale = True
        return report

    def _sampled_lifetime(self) -> int:
        """Env steps RLlib has sampled over the run (restored checkpoints included)."""
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

        return int(self._algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))

    def _require_algo(self, what: str) -> Any:
        if self._algo is None:
            raise ToolkitError(f"The RLlib {self.algorithm} agent cannot {what} before start().")
        return self._algo

    # --- acting -----------------------------------------------------------------------------------

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions for a batch of observations, as RLlib's env runner would send them to the
        env: the module's action (DQN) or a sample of its action distribution (deterministic:
        the distribution's mode), Box actions unsquashed into the env's bounds."""
        from ray.rllib.core.columns import Columns

        module = self._acting_module()
        batch = {Columns.OBS: obs.to("cpu", torch.float32)}
        with torch.no_grad():
            if deterministic:
                out = module.forward_inference(batch)
            else:  # t drives schedules such as DQN's epsilon
                out = module.forward_exploration(batch, t=self._lifetime_steps)
            actions = out.get(Columns.ACTIONS)
            if actions is None:
                dist_cls = (module.get_inference_action_dist_cls() if deterministic
                            else module.get_exploration_action_dist_cls())
                dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
                actions = (dist.to_deterministic() if deterministic else dist).sample()
        return self._actions_for_env(actions).to(obs.device)

    def _actions_for_env(self, actions: torch.Tensor) -> torch.Tensor:
        """What RLlib's ``NormalizeAndClipActions`` does with its defaults
        (``normalize_actions=True``, ``clip_actions=False``): a bounded float Box action is read
        as lying in [-1, 1], mapped onto [low, high] and clipped there; others pass as they are."""
        import gymnasium as gym

        if not isinstance(self.action_space, gym.spaces.Box):
            return actions.long()
        from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space, unsquash_action

        values = unsquash_action(actions.cpu().numpy(), get_base_struct_from_space(self.action_space))
        return torch.as_tensor(values, dtype=torch.float32)

    def _acting_module(self) -> Any:
        """The RLModule that acts: the learner's latest weights while training, else the one
        :meth:`load_native` read."""
        if self._algo is not None and self._module_stale:
            from ray.rllib.core import DEFAULT_MODULE_ID

            if self._module is None:
                spaces = {DEFAULT_MODULE_ID: (self.observation_space, self.action_space)}
                self._module = self._algo.config.get_rl_module_spec(spaces=spaces, inference_only=False).build()
            self._module.set_state(self._algo.learner_group.get_weights([DEFAULT_MODULE_ID])[DEFAULT_MODULE_ID])
            self._module.eval()
            self._module_stale = False
        if self._module is None:
            raise ToolkitError(f"The RLlib {self.algorithm} agent has no policy yet: call start() or load_native() first.")
        return self._module

    # --- checkpoints ------------------------------------------------------------------------------

    def save_native(self, directory: Path, resumable: bool = True) -> None:
        """RLlib's checkpoint (``algo.save_to_path``), the lifetime step count, and the replay
        buffer when the config keeps it and the checkpoint is one to resume from (the best
        checkpoint is only evaluated)."""
        algo = self._require_algo("save a checkpoint")
        algo.save_to_path(str(directory))
        buffer = getattr(algo, "local_replay_buffer", None)
        if resumable and buffer is not None and getattr(self.config, "store_buffer_in_checkpoints", False):
            with open(directory / BUFFER_FILE, "wb") as file:
                pickle.dump(buffer.get_state(), file, protocol=pickle.HIGHEST_PROTOCOL)
        state = {"algorithm": self.algorithm, "env_steps_sampled_lifetime": self._sampled_lifetime(),
                 "learner_variables": self.learner_variables(), "ray": library_version("ray")}
        (directory / STATE_FILE).write_text(json.dumps(state))

    def learner_variables(self) -> dict[str, float]:
        """The learner's :data:`LEARNER_VARIABLES` (KL coefficient, log temperature) now."""
        results = self._require_algo("read its learner").learner_group.foreach_learner(read_learner_variables)
        return next(iter(results)).get()

    def load_native(self, directory: Path) -> None:
        """Read the checkpoint's RLModule (enough to act, without Ray running); :meth:`start`
        then restores the whole algorithm from ``directory``."""
        import_rllib()
        from ray.rllib.core.rl_module.rl_module import RLModule

        directory = Path(directory)
        state = self._read_state(directory)
        self._module = RLModule.from_checkpoint(str((directory / MODULE_PATH).resolve()))
        self._module.eval()
        self._module_stale = False
        self._lifetime_steps = int(state.get("env_steps_sampled_lifetime", 0))
        self._restore_from = directory
        if self._algo is not None:
            self._restore(directory)

    def _read_state(self, directory: Path) -> dict[str, Any]:
        """The bridge's note in a checkpoint, checked to be of this agent's algorithm."""
        path = directory / STATE_FILE
        if not (directory / MODULE_PATH).is_dir() or not path.is_file():
            raise ToolkitError(f"{directory} is not a checkpoint of the RLlib bridge (no {MODULE_PATH} or {STATE_FILE}).")
        state = json.loads(path.read_text())
        if state.get("algorithm") != self.algorithm:
            raise ToolkitError(f"{directory} holds an RLlib {state.get('algorithm')} checkpoint, not {self.algorithm}.")
        return state

    def _restore(self, directory: Path) -> None:
        """Continue from a checkpoint: weights, optimiser, connector states, counters, and the
        replay buffer when it was saved."""
        self._algo.restore_from_path(str(Path(directory).resolve()))
        variables = self._read_state(directory).get("learner_variables") or {}
        self._algo.learner_group.foreach_learner(partial(write_learner_variables, values=variables))
        buffer = getattr(self._algo, "local_replay_buffer", None)
        if buffer is not None and (directory / BUFFER_FILE).is_file():
            with open(directory / BUFFER_FILE, "rb") as file:
                buffer.set_state(pickle.load(file))
        self._module_stale = True

    def close(self) -> None:
        """Stop the algorithm (its env runners and learner); the acting module stays usable."""
        if self._algo is None:
            return
        try:
            self._acting_module()  # keep the final weights for acting after training
        finally:
            self._algo.stop()
            self._algo = None


# --- factories (AgentSpec.factory) -----------------------------------------------------------


def _make(algorithm: str, config: Any, observation_space: Any, action_space: Any, device: str) -> RLlibAgent:
    import_rllib()  # a missing rllib extra is one sentence here, before any run directory exists
    return RLlibAgent(algorithm, config, observation_space, action_space, device)


def make_ppo(config: Any, observation_space: Any, action_space: Any, device: str = "cpu") -> RLlibAgent:
    """RLlib's PPO (:data:`toolkit_bridges.rllib_spec.RLLIB_PPO`)."""
    return _make("PPO", config, observation_space, action_space, device)


def make_appo(config: Any, observation_space: Any, action_space: Any, device: str = "cpu") -> RLlibAgent:
    """RLlib's APPO (:data:`toolkit_bridges.rllib_spec.RLLIB_APPO`)."""
    return _make("APPO", config, observation_space, action_space, device)


def make_sac(config: Any, observation_space: Any, action_space: Any, device: str = "cpu") -> RLlibAgent:
    """RLlib's SAC (:data:`toolkit_bridges.rllib_spec.RLLIB_SAC`)."""
    return _make("SAC", config, observation_space, action_space, device)


def make_dqn(config: Any, observation_space: Any, action_space: Any, device: str = "cpu") -> RLlibAgent:
    """RLlib's DQN (:data:`toolkit_bridges.rllib_spec.RLLIB_DQN`)."""
    return _make("DQN", config, observation_space, action_space, device)


__all__ = ["RLlibAgent", "make_appo", "make_dqn", "make_ppo", "make_sac"]
