"""Entry-point targets of the stable-baselines3 bridges: ``sb3-sac``, ``sb3-td3``, ``sb3-ppo``,
``sb3-a2c`` and ``sb3-dqn``.

This module is imported by ``toolkit list``: it must stay light (config dataclasses and specs,
no torch and no stable_baselines3); :mod:`toolkit_bridges.sb3` imports the library when an
agent is built.

Each config's fields are stable-baselines3's constructor arguments under the same names, with
the library's own defaults (stable-baselines3 2.x, ``sac.py``, ``td3.py``, ``ppo.py``,
``a2c.py``, ``dqn.py``), so rl-zoo's hyperparameter files carry over key by key. A few fields
are the toolkit's, because stable-baselines3 takes objects there rather than plain values:

* ``net_arch``: the hidden widths, passed as ``policy_kwargs={"net_arch": [...]}``; the
  defaults are those of the library's ``MlpPolicy`` for each algorithm;
* ``n_envs``: how many copies of the env one ``DummyVecEnv`` steps side by side;
* ``learning_rate_schedule``: ``linear`` decays ``learning_rate`` to 0 over the whole run, as
  rl-zoo's ``lin_<value>`` does (the run's ``--steps``, not one chunk of it);
* ``action_noise_std`` (TD3): Gaussian exploration noise, ``NormalActionNoise`` with this
  standard deviation in the normalised [-1, 1] action space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from toolkit.config import check_fields, option
from toolkit.registry import AgentSpec

LIBRARY = "stable-baselines3"


# --- options several algorithms share (their defaults differ, so each takes it) ---------------


def _learning_rate(default: float) -> Any:
    return option(default, "Learning rate of the optimiser (stable-baselines3's learning_rate).", gt=0)


def _learning_rate_schedule() -> Any:
    return option(
        "constant", "How learning_rate changes over the run: constant, or linear down to 0 at the run's last step "
        "(rl-zoo's lin_<value>; a resumed run with more --steps stretches it).",
    )


def _gamma() -> Any:
    return option(0.99, "Discount factor.", ge=0, le=1)


def _net_arch(default: tuple[int, ...], what: str) -> Any:
    return option(default, f"Hidden layer widths of {what} (policy_kwargs net_arch; the default is stable-baselines3's).", ge=1)


def _n_envs(default: int = 1) -> Any:
    return option(default, "Copies of the environment stepped side by side in one DummyVecEnv; env steps count all of them.", ge=1)


def _buffer_size() -> Any:
    return option(1_000_000, "Replay buffer capacity in transitions (saved with every checkpoint).", ge=1)


def _learning_starts() -> Any:
    return option(100, "Env steps of uniformly random actions before learning begins (counted once per run).", ge=0)


def _train_freq(default: int) -> Any:
    return option(default, "Env steps (per env) between rounds of gradient steps.", ge=1)


def _gradient_steps() -> Any:
    return option(1, "Gradient steps per round; -1 does as many as env steps were collected.", ge=-1)


def _max_grad_norm(default: float) -> Any:
    return option(default, "Clip the gradient's global norm to this value.", gt=0)


def _use_sde() -> Any:
    return option(False, "Generalised state-dependent exploration (Raffin et al. 2022) instead of independent "
                         "noise; Box actions only.")


def _sde_sample_freq() -> Any:
    return option(-1, "With use_sde: env steps between new noise matrices; -1 samples one per rollout.", ge=-1)


def _check_auto(key: str, value: float | str, initial_allowed: bool) -> None:
    """stable-baselines3 reads a string ent_coef as 'auto' or 'auto_<initial value>' and a
    string target_entropy as 'auto' (sac.py, ``_setup_model``); anything else fails there."""
    if not isinstance(value, str) or value == "auto":
        return
    if initial_allowed and value.startswith("auto_") and _positive_number(value[len("auto_"):]):
        return
    allowed = "a number >= 0, 'auto' or 'auto_<initial value>' such as auto_0.1" if initial_allowed else "a number or 'auto'"
    raise ValueError(f"{key}={value} is not {allowed}")


def _positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _check_normalised_advantage(config: Any) -> None:
    """Normalising advantages divides by their standard deviation, which needs two samples in
    every minibatch and in the rollout (stable-baselines3's ppo.py asserts both)."""
    if not config.normalize_advantage:
        return
    if getattr(config, "batch_size", 2) < 2:
        raise ValueError("batch_size must be at least 2 with normalize_advantage=true "
                         "(the advantages of a minibatch are standardised)")
    if config.n_steps * config.n_envs < 2:
        raise ValueError("n_steps * n_envs must be at least 2 with normalize_advantage=true "
                         "(the rollout's advantages are standardised)")


def _check_replay(config: Any) -> None:
    """Bounds, and a replay buffer that can hold a batch (stable-baselines3 would sample
    repeated transitions from a smaller one without a word)."""
    check_fields(config)
    if config.buffer_size < config.batch_size:
        raise ValueError(f"buffer_size={config.buffer_size} cannot hold a batch of {config.batch_size}; "
                         "make buffer_size at least batch_size")


# --- the configs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SB3SACConfig:
    """stable-baselines3's SAC arguments, with its defaults."""

    learning_rate: float = _learning_rate(3e-4)
    learning_rate_schedule: Literal["constant", "linear"] = _learning_rate_schedule()
    buffer_size: int = _buffer_size()
    learning_starts: int = _learning_starts()
    batch_size: int = option(256, "Transitions per gradient step.", ge=1)
    tau: float = option(0.005, "Polyak averaging rate of the target critics.", gt=0, le=1)
    gamma: float = _gamma()
    train_freq: int = _train_freq(1)
    gradient_steps: int = _gradient_steps()
    ent_coef: float | str = option(
        "auto", "Entropy coefficient: a number, 'auto' (learned, starting at 1) or 'auto_<start>' such as auto_0.1.", ge=0
    )
    target_update_interval: int = option(1, "Gradient steps between target-critic updates.", ge=1)
    target_entropy: float | str = option("auto", "Entropy the learned ent_coef aims at: 'auto' is -dim(actions), or a number.")
    use_sde: bool = _use_sde()
    sde_sample_freq: int = _sde_sample_freq()
    use_sde_at_warmup: bool = option(False, "With use_sde: use gSDE instead of uniform random actions before learning_starts.")
    net_arch: tuple[int, ...] = _net_arch((256, 256), "the actor and of each critic")
    n_envs: int = _n_envs()

    def validate(self) -> None:
        """Raise ValueError for settings stable-baselines3 would refuse (bounds are declared on each field)."""
        _check_replay(self)
        _check_auto("ent_coef", self.ent_coef, initial_allowed=True)
        _check_auto("target_entropy", self.target_entropy, initial_allowed=False)


@dataclass(frozen=True)
class SB3TD3Config:
    """stable-baselines3's TD3 arguments, with its defaults."""

    learning_rate: float = _learning_rate(1e-3)
    learning_rate_schedule: Literal["constant", "linear"] = _learning_rate_schedule()
    buffer_size: int = _buffer_size()
    learning_starts: int = _learning_starts()
    batch_size: int = option(256, "Transitions per gradient step.", ge=1)
    tau: float = option(0.005, "Polyak averaging rate of the target networks.", gt=0, le=1)
    gamma: float = _gamma()
    train_freq: int = _train_freq(1)
    gradient_steps: int = _gradient_steps()
    policy_delay: int = option(2, "Critic updates per actor and target update (TD3's delayed policy updates).", ge=1)
    target_policy_noise: float = option(0.2, "Std of the Gaussian noise added to target actions (target policy smoothing).", ge=0)
    target_noise_clip: float = option(0.5, "Clip of that target-action noise.", ge=0)
    action_noise_std: float = option(
        0.0, "Std of Gaussian exploration noise on actions scaled to [-1, 1] (the toolkit's; 0: none, as stable-baselines3's "
        "default; the TD3 paper and rl-zoo use 0.1).", ge=0,
    )
    net_arch: tuple[int, ...] = _net_arch((400, 300), "the actor and of each critic")
    n_envs: int = _n_envs()

    def validate(self) -> None:
        """Raise ValueError for settings stable-baselines3 would refuse (bounds are declared on each field)."""
        _check_replay(self)


@dataclass(frozen=True)
class SB3PPOConfig:
    """stable-baselines3's PPO arguments, with its defaults."""

    learning_rate: float = _learning_rate(3e-4)
    learning_rate_schedule: Literal["constant", "linear"] = _learning_rate_schedule()
    n_steps: int = option(2048, "Env steps per env in each rollout (a rollout holds n_steps * n_envs).", ge=1)
    batch_size: int = option(64, "Minibatch size of each gradient step.", ge=1)
    n_epochs: int = option(10, "Passes over each rollout.", ge=1)
    gamma: float = _gamma()
    gae_lambda: float = option(0.95, "GAE lambda (Schulman et al. 2016): 1 is Monte Carlo, 0 one-step TD.", ge=0, le=1)
    clip_range: float = option(0.2, "Clipping of the probability ratio (PPO's epsilon).", gt=0)
    clip_range_vf: float | None = option(None, "Clipping of the value function's change around the old values; none: no clipping.", gt=0)
    normalize_advantage: bool = option(True, "Standardise advantages in each minibatch.")
    ent_coef: float = option(0.0, "Weight of the entropy bonus in the loss.", ge=0)
    vf_coef: float = option(0.5, "Weight of the value loss in the loss.", ge=0)
    max_grad_norm: float = _max_grad_norm(0.5)
    use_sde: bool = _use_sde()
    sde_sample_freq: int = _sde_sample_freq()
    target_kl: float | None = option(None, "Stop a rollout's epochs early once the approximate KL passes this; none: never.", gt=0)
    net_arch: tuple[int, ...] = _net_arch((64, 64), "the policy and of the value network (each its own)")
    n_envs: int = _n_envs()

    def validate(self) -> None:
        """Raise ValueError for settings stable-baselines3 would refuse (bounds are declared on each field)."""
        check_fields(self)
        _check_normalised_advantage(self)


@dataclass(frozen=True)
class SB3A2CConfig:
    """stable-baselines3's A2C arguments, with its defaults."""

    learning_rate: float = _learning_rate(7e-4)
    learning_rate_schedule: Literal["constant", "linear"] = _learning_rate_schedule()
    n_steps: int = option(5, "Env steps per env in each rollout, one gradient step each.", ge=1)
    gamma: float = _gamma()
    gae_lambda: float = option(1.0, "GAE lambda (Schulman et al. 2016): 1 is classic A2C's n-step returns.", ge=0, le=1)
    ent_coef: float = option(0.0, "Weight of the entropy bonus in the loss.", ge=0)
    vf_coef: float = option(0.5, "Weight of the value loss in the loss.", ge=0)
    max_grad_norm: float = _max_grad_norm(0.5)
    rms_prop_eps: float = option(1e-5, "Epsilon of RMSprop's denominator.", gt=0)
    use_rms_prop: bool = option(True, "RMSprop as in Mnih et al. (2016); false uses Adam.")
    use_sde: bool = _use_sde()
    sde_sample_freq: int = _sde_sample_freq()
    normalize_advantage: bool = option(False, "Standardise the advantages of each rollout.")
    net_arch: tuple[int, ...] = _net_arch((64, 64), "the policy and of the value network (each its own)")
    n_envs: int = _n_envs()

    def validate(self) -> None:
        """Raise ValueError for settings stable-baselines3 would refuse (bounds are declared on each field)."""
        check_fields(self)
        _check_normalised_advantage(self)


@dataclass(frozen=True)
class SB3DQNConfig:
    """stable-baselines3's DQN arguments, with its defaults (Nature DQN's, for Atari)."""

    learning_rate: float = _learning_rate(1e-4)
    learning_rate_schedule: Literal["constant", "linear"] = _learning_rate_schedule()
    buffer_size: int = _buffer_size()
    learning_starts: int = _learning_starts()
    batch_size: int = option(32, "Transitions per gradient step.", ge=1)
    tau: float = option(1.0, "Target update rate: 1 copies the network, below 1 Polyak-averages.", gt=0, le=1)
    gamma: float = _gamma()
    train_freq: int = _train_freq(4)
    gradient_steps: int = _gradient_steps()
    target_update_interval: int = option(10_000, "Env steps between target-network updates.", ge=1)
    exploration_fraction: float = option(
        0.1, "Fraction of the run's --steps over which epsilon decays linearly from initial to final.", gt=0, le=1
    )
    exploration_initial_eps: float = option(1.0, "Epsilon of epsilon-greedy at the start.", ge=0, le=1)
    exploration_final_eps: float = option(0.05, "Epsilon once exploration_fraction of the run has passed.", ge=0, le=1)
    max_grad_norm: float = _max_grad_norm(10.0)
    net_arch: tuple[int, ...] = _net_arch((64, 64), "the Q-network")
    n_envs: int = _n_envs()

    def validate(self) -> None:
        """Raise ValueError for settings stable-baselines3 would refuse (bounds are declared on each field)."""
        _check_replay(self)


# --- the specs ---------------------------------------------------------------------------------


def _spec(name: str, config: type, algorithm: str, action_spaces: tuple[str, ...], description: str) -> AgentSpec:
    return AgentSpec(
        name=name,
        config=config,
        factory=f"toolkit_bridges.sb3:make_{algorithm}",
        kind="external",
        action_spaces=action_spaces,
        observation_spaces=("box",),
        description=description,
        default_steps=1_000_000,
        api_version=1,
        requires=(LIBRARY,),
        extra="sb3",
    )


SB3_SAC = _spec("sb3-sac", SB3SACConfig, "sac", ("box",),
                "Soft Actor-Critic (Haarnoja et al. 2018): twin critics, tanh-Gaussian policy, learned entropy (stable-baselines3).")
SB3_TD3 = _spec("sb3-td3", SB3TD3Config, "td3", ("box",),
                "Twin Delayed DDPG (Fujimoto et al. 2018): twin critics, delayed actor, target smoothing (stable-baselines3).")
SB3_PPO = _spec("sb3-ppo", SB3PPOConfig, "ppo", ("box", "discrete"),
                "Proximal Policy Optimization (Schulman et al. 2017): clipped surrogate, GAE, minibatch epochs (stable-baselines3).")
SB3_A2C = _spec("sb3-a2c", SB3A2CConfig, "a2c", ("box", "discrete"),
                "Advantage Actor-Critic, the synchronous A3C of Mnih et al. (2016), with RMSprop (stable-baselines3).")
SB3_DQN = _spec("sb3-dqn", SB3DQNConfig, "dqn", ("discrete",),
                "Deep Q-Network (Mnih et al. 2015): replay, target network, epsilon-greedy (stable-baselines3).")
