"""Benchmark: this toolkit's dqn, ppo and a2c against stable-baselines3's DQN, PPO and A2C on
CartPole-v1, side by side in one run, with matched settings.

For each algorithm both sides train from the same settings (rl-zoo's tuned CartPole-v1
hyperparameters for DQN and PPO, stable-baselines3's defaults for A2C, both sides' networks
and optimisers alike) and are evaluated with one protocol: every ``--eval-every`` env steps,
the deterministic policy plays ``--eval-episodes`` episodes on the same seeds through
``toolkit.evaluation.evaluate``. A run stops at the first evaluation whose mean return reaches
``--threshold`` (475) or at ``--budget`` env steps. Reported per side: env steps at that
evaluation and the wall seconds spent training up to it (evaluation time excluded on both
sides; the toolkit's checkpoint writes are switched off, as stable-baselines3 writes none),
then the ratios toolkit / stable-baselines3 (below 1 is better for the toolkit).

    python scripts/bench_cartpole.py                          # dqn, ppo, a2c; 1 seed each
    python scripts/bench_cartpole.py --algos ppo a2c --seeds 3 --budget 300000

One torch thread by default (``--threads``), so the two sides compete on equal terms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

ENV_ID = "CartPole-v1"

#: Matched settings: the toolkit's --set items and stable-baselines3's keyword arguments.
#: DQN: rl-zoo's CartPole-v1 DQN; plain DQN on both sides (stable-baselines3 has no Double DQN);
#: its exploration lasts 8000 steps on both sides (toolkit: 7000 after 1000 random ones).
#: PPO: rl-zoo's CartPole-v1 PPO with constant lr and clip range. A2C: stable-baselines3's defaults.
MATCHED: dict[str, dict[str, Any]] = {
    "dqn": {
        "toolkit": ["lr=2.3e-3", "batch_size=64", "buffer_size=100000", "learning_starts=1000", "gamma=0.99",
                    "train_every=256", "updates_per_step=128", "target_update_interval=128", "tau=1.0",
                    "exploration_final_eps=0.04", "exploration_steps=7000", "hidden_sizes=256,256",
                    "double_q=false", "dueling=false", "max_grad_norm=10"],
        "sb3": dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                    train_freq=256, gradient_steps=128, target_update_interval=10, exploration_final_eps=0.04,
                    max_grad_norm=10, policy_kwargs={"net_arch": [256, 256]}),
        "sb3_envs": 1,
    },
    "ppo": {
        "toolkit": ["num_envs=8", "rollout_steps=32", "minibatch_size=256", "epochs=20", "gae_lambda=0.8",
                    "gamma=0.98", "lr=1e-3", "clip_range=0.2", "ent_coef=0.0", "vf_coef=0.5", "max_grad_norm=0.5",
                    "hidden_sizes=64,64", "activation=tanh", "normalize_advantage=true"],
        "sb3": dict(n_steps=32, batch_size=256, n_epochs=20, gae_lambda=0.8, gamma=0.98, learning_rate=1e-3,
                    clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, normalize_advantage=True),
        "sb3_envs": 8,
    },
    "a2c": {
        "toolkit": ["num_envs=8", "rollout_steps=5", "lr=7e-4", "gamma=0.99", "advantage=n-step", "ent_coef=0.0",
                    "vf_coef=0.5", "max_grad_norm=0.5", "optimizer=rmsprop", "hidden_sizes=64,64",
                    "activation=tanh", "normalize_advantage=false", "shared_network=false"],
        "sb3": dict(n_steps=5, learning_rate=7e-4, gamma=0.99, gae_lambda=1.0, ent_coef=0.0, vf_coef=0.5,
                    max_grad_norm=0.5, use_rms_prop=True, rms_prop_eps=1e-5, normalize_advantage=False),
        "sb3_envs": 8,
    },
}


@dataclass
class Outcome:
    """How one run ended: steps and training seconds at the first evaluation >= threshold."""

    reached: bool
    steps: int
    seconds: float
    best: float

    def cell(self) -> str:
        mark = "" if self.reached else " (not reached)"
        return f"{self.steps:>8d} steps {self.seconds:>7.1f} s{mark}"


class Protocol:
    """Evaluates every ``every`` steps on fixed seeds; keeps training and evaluation time apart."""

    def __init__(self, every: int, episodes: int, threshold: float, budget: int, seed: int) -> None:
        self.every, self.episodes, self.threshold, self.budget = every, episodes, threshold, budget
        self.eval_seed = 10_000 + seed
        self.next_eval = every
        self.eval_seconds = 0.0
        self.best = -float("inf")
        self.start = time.perf_counter()

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def evaluate(self, actor: Any, step: int) -> Outcome | None:
        """Score the policy; an Outcome once the threshold or the budget is reached, else None."""
        from toolkit.evaluation import evaluate

        trained = self.train_seconds()
        t0 = time.perf_counter()
        mean = evaluate(actor, ENV_ID, self.episodes, seed=self.eval_seed, device="cpu").mean
        self.eval_seconds += time.perf_counter() - t0
        self.best = max(self.best, mean)
        self.next_eval = (step // self.every + 1) * self.every
        if mean >= self.threshold or step >= self.budget:
            return Outcome(mean >= self.threshold, step, trained, self.best)
        return None


def run_toolkit(algo: str, protocol: Protocol, seed: int) -> Outcome:
    """The toolkit's agent through its own training loop, in chunks of ``eval_every`` steps."""
    from toolkit.envs import make_env
    from toolkit.registry import registry
    from toolkit.runs import RunSettings
    from toolkit.session import build_config

    spec = registry.agent(algo)
    config = build_config(spec, set_items=MATCHED[algo]["toolkit"])
    env = make_env(ENV_ID)
    torch.manual_seed(seed)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    settings = RunSettings(agent=algo, env=ENV_ID, seed=seed, steps=protocol.budget, device="cpu",
                           checkpoint_every=0, eval_every=0)
    if spec.kind == "on-policy":
        from toolkit.loops.on_policy import OnPolicyLoop as Loop
    else:
        from toolkit.loops.off_policy import OffPolicyLoop as Loop  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        loop = Loop(agent, config, settings, lambda: make_env(ENV_ID), Path(tmp), torch.device("cpu"), progress=False)
        loop.save = lambda: None  # no checkpoint writes: stable-baselines3 writes none either
        protocol.start = time.perf_counter()
        while True:
            result = loop.run(min(protocol.next_eval, protocol.budget))
            outcome = protocol.evaluate(agent, result.step)
            if outcome is not None:
                return outcome


class _SB3Actor:
    """Gives a stable-baselines3 model the ``act`` the toolkit's evaluation calls."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        action, _ = self.model.predict(obs.cpu().numpy(), deterministic=deterministic)
        return torch.as_tensor(np.asarray(action))


def run_sb3(algo: str, protocol: Protocol, seed: int) -> Outcome:
    """stable-baselines3's agent; a callback evaluates on the same schedule and stops at the threshold."""
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    settings = dict(MATCHED[algo]["sb3"])
    if algo == "dqn":  # the same 8000-step exploration schedule, whatever the budget
        settings["exploration_fraction"] = 8000 / protocol.budget
    cls = {"dqn": sb3.DQN, "ppo": sb3.PPO, "a2c": sb3.A2C}[algo]
    env = make_vec_env(ENV_ID, n_envs=MATCHED[algo]["sb3_envs"], seed=seed)
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    found: list[Outcome] = []

    class EvalEvery(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps < protocol.next_eval:
                return True
            outcome = protocol.evaluate(_SB3Actor(model), self.num_timesteps)
            if outcome is not None:
                found.append(outcome)
                return False
            return True

    protocol.start = time.perf_counter()
    model.learn(total_timesteps=protocol.budget + protocol.every, callback=EvalEvery())
    return found[0] if found else Outcome(False, model.num_timesteps, protocol.train_seconds(), protocol.best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["dqn", "ppo", "a2c"], choices=sorted(MATCHED))
    parser.add_argument("--seeds", type=int, default=1, help="runs per algorithm and side; medians are compared")
    parser.add_argument("--budget", type=int, default=200_000, help="env-step cap per run")
    parser.add_argument("--eval-every", type=int, default=5_000, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from toolkit.registry import registry

    print(f"{ENV_ID}: env steps and training seconds to a deterministic evaluation return >= {args.threshold} "
          f"({args.eval_episodes} episodes every {args.eval_every} steps, budget {args.budget}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    rows: list[tuple[str, list[Outcome], list[Outcome]]] = []
    for algo in args.algos:
        try:
            registry.agent(algo)
        except Exception as exc:  # another engineer's plugin may not be installed yet
            print(f"{algo}: skipped, the toolkit's '{algo}' agent is not available ({exc})")
            continue
        ours: list[Outcome] = []
        theirs: list[Outcome] = []
        for seed in range(args.seeds):  # alternate the sides so drift on the machine hits both alike
            for side, runner, out in (("toolkit", run_toolkit, ours), ("sb3", run_sb3, theirs)):
                protocol = Protocol(args.eval_every, args.eval_episodes, args.threshold, args.budget, seed)
                outcome = runner(algo, protocol, seed)
                out.append(outcome)
                print(f"  {algo:<4} {side:<8} seed {seed}: {outcome.cell()}  best eval {outcome.best:.1f}", flush=True)
        rows.append((algo, ours, theirs))

    print()
    print(f"{'algo':<6}{'toolkit steps':>15}{'toolkit s':>11}{'sb3 steps':>11}{'sb3 s':>9}"
          f"{'steps ratio':>13}{'time ratio':>12}{'tk steps/s':>12}{'sb3 steps/s':>13}{'speed ratio':>13}"
          f"{'reached (tk/sb3)':>18}")
    for algo, ours, theirs in rows:
        def med(xs: list[Outcome], key: Callable[[Outcome], float]) -> float:
            return statistics.median(key(x) for x in xs)

        s1, t1 = med(ours, lambda o: o.steps), med(ours, lambda o: o.seconds)
        s2, t2 = med(theirs, lambda o: o.steps), med(theirs, lambda o: o.seconds)
        r1, r2 = med(ours, lambda o: o.steps / o.seconds), med(theirs, lambda o: o.steps / o.seconds)
        reached = f"{sum(o.reached for o in ours)}/{len(ours)} {sum(o.reached for o in theirs)}/{len(theirs)}"
        print(f"{algo:<6}{s1:>15.0f}{t1:>11.1f}{s2:>11.0f}{t2:>9.1f}{s1 / s2:>12.2f}x{t1 / t2:>11.2f}x"
              f"{r1:>12.0f}{r2:>13.0f}{r1 / r2:>12.2f}x{reached:>18}")
    print("steps and time ratios are toolkit / stable-baselines3 medians (below 1: the toolkit needs fewer steps or "
          "seconds); speed ratio is training throughput, toolkit / stable-baselines3 (above 1: the toolkit is faster); "
          "a run that did not reach the threshold counts with its budget")


if __name__ == "__main__":
    main()
