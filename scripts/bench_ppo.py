"""Benchmark: this toolkit's PPO against stable-baselines3's PPO, side by side in one run.

Both sides train with the same settings, stable-baselines3's PPO defaults with its 2048-step
rollout split over 8 envs as our ``ppo`` defaults do: 8 envs (sb3: ``make_vec_env``'s
``DummyVecEnv`` of 8) x 256 steps per rollout, minibatches of 64, 10 epochs, GAE(0.99, 0.95),
clip 0.2, no value clipping, gradient norm clipped to 0.5, advantages standardised per
minibatch, separate 64x64 tanh policy and value networks with orthogonal init, Adam at 3e-4,
no observation normalisation. :data:`SETTINGS` maps each of our config keys to sb3's argument
(``--settings`` prints the mapping).

What is timed is the whole training loop, collection and updates together: env steps per
second over ``--rollouts`` rollouts, after one untimed rollout and update that warms caches.
Ours runs as ``toolkit train`` does (metrics file and TensorBoard events, one checkpoint at the
end); sb3 runs with ``verbose=0`` and its ``Monitor`` wrappers.
The two sides alternate across ``--repeats`` so drift on the machine hits both alike, and the
medians are reported. Both sides run with the same torch thread count (``--threads``).

    python scripts/bench_ppo.py                                   # Hopper-v4 and CartPole-v1, CPU
    python scripts/bench_ppo.py --env CartPole-v1 --rollouts 4 --repeats 5

Prints a table and the ratio toolkit / stable-baselines3 for each env, by wall-clock time and
by CPU time, and the load averages before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)


@dataclass(frozen=True)
class Setting:
    """One hyperparameter, as our ``ppo`` config spells it and as sb3's ``PPO`` takes it."""

    ours: str  # key of ``toolkit describe ppo``
    value: Any
    sb3: str  # PPO keyword; ``policy_kwargs.x`` and ``make_vec_env.x`` go there; "" where sb3 has none


#: The shared settings. sb3's rollout buffer holds ``n_steps`` per env, as our ``rollout_steps``;
#: keys sb3 has no argument for are explained in :data:`SB3_EQUIVALENT`.
SETTINGS: tuple[Setting, ...] = (
    Setting("num_envs", 8, "make_vec_env.n_envs"),  # a DummyVecEnv of that many
    Setting("rollout_steps", 256, "n_steps"),
    Setting("minibatch_size", 64, "batch_size"),
    Setting("epochs", 10, "n_epochs"),
    Setting("lr", 3e-4, "learning_rate"),
    Setting("lr_schedule", "constant", ""),
    Setting("gamma", 0.99, "gamma"),
    Setting("gae_lambda", 0.95, "gae_lambda"),
    Setting("clip_range", 0.2, "clip_range"),
    Setting("clip_range_vf", None, "clip_range_vf"),
    Setting("ent_coef", 0.0, "ent_coef"),
    Setting("vf_coef", 0.5, "vf_coef"),
    Setting("max_grad_norm", 0.5, "max_grad_norm"),
    Setting("normalize_advantage", True, "normalize_advantage"),
    Setting("normalize_obs", False, ""),
    Setting("hidden_sizes", (64, 64), "policy_kwargs.net_arch"),
    Setting("activation", "tanh", "policy_kwargs.activation_fn"),
    Setting("shared_network", False, ""),
    Setting("init_log_std", 0.0, "policy_kwargs.log_std_init"),
    Setting("complete_episodes", False, ""),
)


def setting(key: str) -> Any:
    """The shared value of our config key ``key``."""
    return next(s.value for s in SETTINGS if s.ours == key)


def toolkit_set_items() -> list[str]:
    """``key=value`` overrides for :func:`toolkit.session.build_config`, every key explicit."""

    def text(value: Any) -> str:
        if value is None:
            return "none"
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [f"{s.ours}={text(s.value)}" for s in SETTINGS]


def sb3_arguments() -> dict[str, Any]:
    """Keyword arguments of sb3's ``PPO``."""
    from torch import nn

    hidden = list(setting("hidden_sizes"))
    kwargs: dict[str, Any] = {
        "policy_kwargs": {
            "net_arch": {"pi": hidden, "vf": hidden},
            "activation_fn": {"tanh": nn.Tanh, "relu": nn.ReLU}[setting("activation")],
            "log_std_init": setting("init_log_std"),
            "ortho_init": True,  # our networks are initialised orthogonally too
        }
    }
    for s in SETTINGS:
        if s.sb3 and "." not in s.sb3:  # dotted ones go to the policy or the vec env
            kwargs[s.sb3] = s.value
    return kwargs


def rollout_size() -> int:
    """Env steps per rollout (and per update) on both sides."""
    return setting("num_envs") * setting("rollout_steps")


class Rate(NamedTuple):
    """Env steps per second of wall-clock time, and per second of this process's CPU time (all its
    threads); the second is steadier on a machine shared with other jobs."""

    wall: float
    cpu: float


def timed(steps: int, train: Callable[[], object]) -> Rate:
    """Run ``train``, which takes ``steps`` env steps, and rate it."""
    wall, cpu = time.perf_counter(), time.process_time()
    train()
    return Rate(steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu))


def toolkit_steps_per_second(env_id: str, rollouts: int, device: str, seed: int) -> Rate:
    """Our ``ppo`` through :class:`~toolkit.loops.on_policy.OnPolicyLoop`, as ``toolkit train`` runs it."""
    from toolkit.envs import make_env
    from toolkit.loops.on_policy import OnPolicyLoop
    from toolkit.registry import registry
    from toolkit.runs import RunSettings
    from toolkit.session import build_config

    spec = registry.agent("ppo")
    config = build_config(spec, set_items=toolkit_set_items())
    wrong = {s.ours: getattr(config, s.ours) for s in SETTINGS if getattr(config, s.ours) != s.value}
    assert not wrong, f"the ppo config did not take the benchmark's settings: {wrong}"
    env = make_env(env_id)
    torch.manual_seed(seed)
    agent = spec.build(config, env.observation_space, env.action_space, device)
    warmup, steps = rollout_size(), rollouts * rollout_size()
    settings = RunSettings(agent="ppo", env=env_id, seed=seed, steps=warmup + steps, device=device,
                           checkpoint_every=0, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        loop = OnPolicyLoop(agent, config, settings, lambda: make_env(env_id), Path(tmp), torch.device(device),
                            progress=False)
        loop.run(warmup)  # one rollout and update, untimed
        return timed(steps, lambda: loop.run(warmup + steps))


def sb3_steps_per_second(env_id: str, rollouts: int, device: str, seed: int) -> Rate:
    """stable-baselines3's ``PPO`` on a ``DummyVecEnv`` of the same size, same settings."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    with warnings.catch_warnings():  # gymnasium re-arms its "v4 is out of date" warning on import
        warnings.simplefilter("ignore", DeprecationWarning)
        envs = make_vec_env(env_id, n_envs=setting("num_envs"), seed=seed, vec_env_cls=DummyVecEnv)
    model = PPO("MlpPolicy", envs, device=device, seed=seed, verbose=0, **sb3_arguments())
    warmup, steps = rollout_size(), rollouts * rollout_size()
    model.learn(warmup)  # one rollout and update, untimed
    return timed(steps, lambda: model.learn(steps, reset_num_timesteps=False))


def alternating_runs(
    ours: Callable[[int], Rate], theirs: Callable[[int], Rate], repeats: int
) -> tuple[list[Rate], list[Rate]]:
    """Run both sides ``repeats`` times, taking turns at going first so drift hits both alike."""
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(ours(r))
            b.append(theirs(r))
        else:
            b.append(theirs(r))
            a.append(ours(r))
    return a, b


def print_row(env_id: str, ours: list[Rate], theirs: list[Rate]) -> None:
    """One table row: the wall-clock medians and their ratio, the ratio of the CPU-time medians,
    and every run's wall-clock rate for judging the spread."""
    a, b = statistics.median(r.wall for r in ours), statistics.median(r.wall for r in theirs)
    cpu_ratio = statistics.median(r.cpu for r in ours) / statistics.median(r.cpu for r in theirs)
    print(f"{env_id:<14}{a:>18.1f}{b:>14.1f}{a / b:>7.2f}x{cpu_ratio:>10.2f}x   (runs: toolkit "
          f"{[round(r.wall) for r in ours]}, sb3 {[round(r.wall) for r in theirs]})", flush=True)


def print_load(when: str) -> None:
    """The machine's load averages: on a shared machine they say how far to trust the table."""
    one, five, fifteen = os.getloadavg()
    print(f"load average {when}: {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs", flush=True)


def print_settings() -> None:
    """The mapping of :data:`SETTINGS`, one line each: our key, the value, sb3's argument."""
    for s in SETTINGS:
        print(f"{s.ours:<20}{s.value!s:<12}{s.sb3 or '(no sb3 argument: ' + SB3_EQUIVALENT[s.ours] + ')'}")


#: What sb3 does for the settings it has no argument for.
SB3_EQUIVALENT = {
    "lr_schedule": "a float learning_rate is constant",
    "normalize_obs": "no VecNormalize wrapper",
    "shared_network": "net_arch=dict(pi=..., vf=...) keeps them apart",
    "complete_episodes": "fixed-length rollouts always",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="env id (repeatable); default Hopper-v4 and CartPole-v1")
    parser.add_argument("--rollouts", type=int, default=3, help="timed rollouts (and updates) per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; the median is reported")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--settings", action="store_true", help="print how each setting maps to sb3, and exit")
    args = parser.parse_args()
    if args.settings:
        print_settings()
        return
    torch.set_num_threads(args.threads)

    envs = args.env or ["Hopper-v4", "CartPole-v1"]
    print(f"PPO, {setting('num_envs')} envs x {setting('rollout_steps')} steps, minibatch {setting('minibatch_size')}, "
          f"{setting('epochs')} epochs, 64x64 tanh; {args.rollouts} timed rollouts "
          f"({args.rollouts * rollout_size()} steps) x {args.repeats} repeats; device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_load("before")
    print(f"{'env':<14}{'toolkit steps/s':>18}{'sb3 steps/s':>14}{'ratio':>8}{'CPU ratio':>11}")
    for env_id in envs:
        ours, theirs = alternating_runs(
            lambda seed: toolkit_steps_per_second(env_id, args.rollouts, args.device, seed),
            lambda seed: sb3_steps_per_second(env_id, args.rollouts, args.device, seed),
            args.repeats,
        )
        print_row(env_id, ours, theirs)
    print_load("after")


if __name__ == "__main__":
    main()
