"""stable-baselines3's SAC, TD3, PPO, A2C and DQN as toolkit agents (kind ``"external"``).

stable-baselines3 steps its own ``DummyVecEnv`` of the run's environments (each wrapped in its
``Monitor``, whose ``info["episode"]`` reports finished episodes) and updates itself inside
``model.learn``; :class:`toolkit.loops.external.ExternalLoop` calls :meth:`SB3Agent.learn`
with chunks that end where the run logs, evaluates or checkpoints, and
``learn(chunk, reset_num_timesteps=False)`` continues where the last chunk stopped: no env
reset, ``num_timesteps`` (and so ``learning_starts``) counted over the whole run.

**Schedules span the run, not the chunk.** stable-baselines3 measures training progress as
``1 - num_timesteps / total`` (``BaseAlgorithm._update_current_progress_remaining``), where
``total`` is ``num_timesteps + chunk`` for a ``learn`` that does not reset the count (set in
``_setup_learn``; on-policy ``learn`` even passes that local total straight in). Learned in
chunks, DQN's exploration would reach its final epsilon inside the first chunk and a linear
learning rate would be almost 0 from the second chunk on. The algorithms here are thin
subclasses (:class:`SAC` ... :class:`DQN` below) that measure progress against the run's
``--steps`` instead (:attr:`toolkit.external.EnvContext.total_steps`; a resumed run's new
target), which is what one ``learn(--steps)`` call would do.

A native checkpoint is ``model.zip`` (``BaseAlgorithm.save``: weights, optimisers, counters,
schedules) plus, for the off-policy algorithms, ``replay_buffer.pkl``; both load with plain
stable-baselines3 (``SAC.load``, ``load_replay_buffer``).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3 as sb3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv

from toolkit.errors import ToolkitError
from toolkit.external import EnvContext, ExternalAgent, LearnReport
from toolkit_bridges.sb3_spec import (
    LIBRARY,
    SB3A2CConfig,
    SB3DQNConfig,
    SB3PPOConfig,
    SB3SACConfig,
    SB3TD3Config,
)

MODEL_FILE = "model.zip"
REPLAY_FILE = "replay_buffer.pkl"

#: Config fields that are the toolkit's, not constructor arguments (see :mod:`toolkit_bridges.sb3_spec`).
TOOLKIT_FIELDS = frozenset({"net_arch", "n_envs", "learning_rate_schedule", "action_noise_std"})


# --- progress measured over the run ------------------------------------------------------------


class RunProgress:
    """Mixed into a stable-baselines3 algorithm: progress (which drives learning-rate, clip-range
    and exploration schedules) is measured against :attr:`run_total_steps`, the run's whole
    budget, rather than the end of the current ``learn`` call (see the module docstring)."""

    #: The env steps the run trains to; None until :meth:`SB3Agent.start` sets it.
    run_total_steps: int | None = None

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        total = self.run_total_steps or total_timesteps
        # On-policy rollouts may overshoot the budget: progress stops at 0, never below
        # (a negative remainder would turn a linear learning rate negative).
        super()._update_current_progress_remaining(num_timesteps, max(total, num_timesteps))  # type: ignore[misc]

    def _excluded_save_params(self) -> list[str]:
        # The total belongs to a run, not to the model: model.zip stays plain stable-baselines3.
        return [*super()._excluded_save_params(), "run_total_steps"]  # type: ignore[misc]


class SAC(RunProgress, sb3.SAC):
    """stable-baselines3's SAC with schedules over the run."""


class TD3(RunProgress, sb3.TD3):
    """stable-baselines3's TD3 with schedules over the run."""


class PPO(RunProgress, sb3.PPO):
    """stable-baselines3's PPO with schedules over the run."""


class A2C(RunProgress, sb3.A2C):
    """stable-baselines3's A2C with schedules over the run."""


class DQN(RunProgress, sb3.DQN):
    """stable-baselines3's DQN with epsilon and schedules over the run."""


# --- what learn() reports ----------------------------------------------------------------------


class EpisodeRecorder(BaseCallback):
    """Collects every finished training episode from the ``Monitor`` infos, with the env steps
    into the current ``learn`` call at which it ended."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start
        self.episodes: list[tuple[float, int, int]] = []

    def _on_step(self) -> bool:
        # Called after each VecEnv step, once num_timesteps counts it (sb3's collect_rollouts).
        offset = self.model.num_timesteps - self.start
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.episodes.append((float(episode["r"]), int(episode["l"]), offset))
        return True


def short_metrics(values: dict[str, Any]) -> dict[str, float]:
    """stable-baselines3's logged values (``train/actor_loss``, ``rollout/exploration_rate``)
    under their last name part (``actor_loss``), as floats; what is not a number is dropped."""
    out: dict[str, float] = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[key.rpartition("/")[2]] = number
    return out


def silent_logger() -> Logger:
    """A logger with no outputs: nothing printed or written; values stay readable in
    ``name_to_value`` (they are cleared only by a dump, and :meth:`SB3Agent.learn` asks for none)."""
    return Logger(folder=None, output_formats=[])


# --- the agent ---------------------------------------------------------------------------------


class SB3Agent(ExternalAgent):
    """One stable-baselines3 algorithm (any of :class:`SAC`, :class:`TD3`, :class:`PPO`,
    :class:`A2C`, :class:`DQN`) trained by the library inside :meth:`learn`."""

    library = LIBRARY

    def __init__(self, algorithm: type[BaseAlgorithm], config: Any, observation_space: gym.Space,
                 action_space: gym.Space, device: str | torch.device) -> None:
        super().__init__()
        self.algorithm, self.config = algorithm, config
        self.observation_space, self.action_space = observation_space, action_space
        self.device = torch.device(device)
        self.model: BaseAlgorithm | None = None
        self.venv: DummyVecEnv | None = None
        #: The replay buffer of a loaded checkpoint, read when training starts (evaluation never needs it).
        self._replay_path: Path | None = None
        #: The latest value of every statistic: each learn() reports all seen so far, so the
        #: loop averages the same keys in every chunk.
        self._metrics: dict[str, float] = {}

    @property
    def off_policy(self) -> bool:
        """True for the algorithms with a replay buffer (SAC, TD3, DQN)."""
        return issubclass(self.algorithm, OffPolicyAlgorithm)

    # --- training ---------------------------------------------------------------------------

    def start(self, context: EnvContext) -> None:
        """Build the algorithm on ``n_envs`` monitored copies of the run's env, or attach the
        one :meth:`load_native` restored (with its replay buffer) to them."""
        self.venv = DummyVecEnv([lambda: Monitor(context.make_env())] * self.config.n_envs)
        if self.model is None:
            self.model = self._build(self.venv, context)
        else:
            self._continue(self.venv, context)
        self.model.set_logger(silent_logger())
        self.model.run_total_steps = context.total_steps  # type: ignore[attr-defined]

    def _build(self, venv: DummyVecEnv, context: EnvContext) -> BaseAlgorithm:
        try:
            return self.algorithm("MlpPolicy", venv, seed=context.seed, device=context.device, verbose=0,
                                  **sb3_arguments(self.config, self.action_space))
        except (AssertionError, ValueError) as exc:  # a setting the library refuses
            raise ToolkitError(f"stable-baselines3 refused the settings of {self.algorithm.__name__}: {exc}") from None

    def _continue(self, venv: DummyVecEnv, context: EnvContext) -> None:
        """A resumed run: the restored model on fresh envs (``set_env`` resets them; the episodes
        that were running at the checkpoint are lost), seeded so that they are not the run's
        first episodes again. The global random streams are the toolkit's, already restored."""
        assert self.model is not None
        self.model.set_env(venv)
        venv.seed(context.seed + self.model.num_timesteps)
        self.model.action_space.seed(context.seed + self.model.num_timesteps)
        if self._replay_path is not None:
            self.model.load_replay_buffer(self._replay_path)  # type: ignore[attr-defined]
            self._replay_path = None

    def learn(self, steps: int) -> LearnReport:
        """Let stable-baselines3 train about ``steps`` more env steps (whole rollouts for PPO and
        A2C, whole ``train_freq`` rounds of all envs otherwise, so it may take more)."""
        if self.model is None or self.venv is None:
            raise RuntimeError("SB3Agent.learn() needs start() first")
        before = self.model.num_timesteps
        recorder = EpisodeRecorder(before)
        # log_interval=None: stable-baselines3 never dumps its logger, so each statistic keeps
        # its latest value in name_to_value (a dump would clear them, and off-policy dumps come
        # every log_interval *episodes*, which a chunk may not finish).
        self.model.learn(steps, callback=recorder, log_interval=None,  # type: ignore[arg-type]
                         reset_num_timesteps=False, progress_bar=False)
        self._metrics.update(short_metrics(self.model.logger.name_to_value))
        return LearnReport(steps=self.model.num_timesteps - before, episodes=recorder.episodes,
                           metrics=dict(self._metrics))

    def close(self) -> None:
        """Close the training envs."""
        if self.venv is not None:
            self.venv.close()
            self.venv = None

    # --- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The policy's actions for a batch of observations (``model.predict``: Box actions
        in the env's bounds, Discrete ones as long integers)."""
        if self.model is None:
            raise RuntimeError("SB3Agent.act() needs start() or load_native() first")
        actions, _ = self.model.predict(obs.detach().cpu().numpy(), deterministic=deterministic)
        dtype = torch.long if isinstance(self.action_space, gym.spaces.Discrete) else torch.float32
        return torch.as_tensor(np.asarray(actions), dtype=dtype, device=obs.device)

    # --- native checkpoints ---------------------------------------------------------------------

    def save_native(self, directory: Path, resumable: bool = True) -> None:
        """``model.zip``, and ``replay_buffer.pkl`` for the off-policy algorithms when the
        checkpoint is for resuming (a best checkpoint is only evaluated: tens of MB saved)."""
        if self.model is None:
            raise RuntimeError("SB3Agent.save_native() needs start() or load_native() first")
        self.model.save(directory / MODEL_FILE)
        if self.off_policy and resumable:
            self.model.save_replay_buffer(directory / REPLAY_FILE)  # type: ignore[attr-defined]

    def load_native(self, directory: Path) -> None:
        """Load ``model.zip`` on this agent's device, with no env (enough to :meth:`act`); the
        replay buffer is read only if training starts."""
        path = directory / MODEL_FILE
        if not path.is_file():
            raise ToolkitError(f"The native checkpoint {directory} has no {MODEL_FILE}.")
        self.model = self.algorithm.load(path, device=self.device)
        replay = directory / REPLAY_FILE
        self._replay_path = replay if self.off_policy and replay.is_file() else None


# --- from a config to stable-baselines3's arguments --------------------------------------------


def linear_schedule(start: float) -> Any:
    """``start`` at the run's first step down to 0 at its last (rl-zoo's ``lin_<start>``), as an
    object of stable-baselines3's own, so model.zip unpickles without the toolkit."""
    try:
        from stable_baselines3.common.utils import LinearSchedule  # stable-baselines3 >= 2.6
    except ImportError:
        from stable_baselines3.common.utils import get_linear_fn

        return get_linear_fn(start, 0.0, 1.0)
    return LinearSchedule(start, 0.0, 1.0)


def sb3_arguments(config: Any, action_space: gym.Space) -> dict[str, Any]:
    """The constructor arguments of stable-baselines3's algorithm for ``config``: its fields
    as they are, the toolkit's own fields turned into the objects the library takes."""
    arguments = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in TOOLKIT_FIELDS}
    arguments["policy_kwargs"] = {"net_arch": list(config.net_arch)}
    if config.learning_rate_schedule == "linear":
        arguments["learning_rate"] = linear_schedule(config.learning_rate)
    noise = getattr(config, "action_noise_std", 0.0)
    if noise > 0:
        size = int(np.prod(action_space.shape))
        arguments["action_noise"] = NormalActionNoise(np.zeros(size), noise * np.ones(size))
    return arguments


def _check_sde(config: Any, action_space: gym.Space, name: str) -> None:
    if getattr(config, "use_sde", False) and not isinstance(action_space, gym.spaces.Box):
        raise ToolkitError(f"{name}: use_sde=true needs Box (continuous) actions; this env's are {action_space}.")


def _make(algorithm: type[BaseAlgorithm], name: str, config: Any, observation_space: gym.Space,
          action_space: gym.Space, device: str) -> SB3Agent:
    _check_sde(config, action_space, name)
    return SB3Agent(algorithm, config, observation_space, action_space, device)


def make_sac(config: SB3SACConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> SB3Agent:
    """The ``sb3-sac`` agent."""
    return _make(SAC, "sb3-sac", config, observation_space, action_space, device)


def make_td3(config: SB3TD3Config, observation_space: gym.Space, action_space: gym.Space, device: str) -> SB3Agent:
    """The ``sb3-td3`` agent."""
    return _make(TD3, "sb3-td3", config, observation_space, action_space, device)


def make_ppo(config: SB3PPOConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> SB3Agent:
    """The ``sb3-ppo`` agent."""
    return _make(PPO, "sb3-ppo", config, observation_space, action_space, device)


def make_a2c(config: SB3A2CConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> SB3Agent:
    """The ``sb3-a2c`` agent."""
    return _make(A2C, "sb3-a2c", config, observation_space, action_space, device)


def make_dqn(config: SB3DQNConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> SB3Agent:
    """The ``sb3-dqn`` agent."""
    return _make(DQN, "sb3-dqn", config, observation_space, action_space, device)
