"""Benchmark: this toolkit's SAC against stable-baselines3's SAC, side by side in one run.

Both train on the same env with the same settings (batch 256, two 256-unit hidden layers,
one gradient step per env step, learning after the same number of random steps) on the
same device. What is timed is the learning phase only: env steps per second while every
step also runs one gradient update, the regime that dominates a real run.

    python scripts/bench_sac.py                       # Hopper-v4, CPU (and CUDA if present)
    python scripts/bench_sac.py --steps 3000 --repeats 3 --device cpu

Prints a table and the ratio toolkit / stable-baselines3 for each device.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)


def toolkit_steps_per_second(env_id: str, warmup: int, steps: int, device: str, seed: int) -> float:
    from toolkit.envs import make_env
    from toolkit.loops.off_policy import OffPolicyLoop
    from toolkit.registry import registry
    from toolkit.runs import RunSettings
    from toolkit.session import build_config

    spec = registry.agent("sac")
    config = build_config(spec, set_items=[f"learning_starts={warmup}", "batch_size=256", "hidden_sizes=256,256"])
    env = make_env(env_id)
    torch.manual_seed(seed)
    agent = spec.build(config, env.observation_space, env.action_space, device)
    settings = RunSettings(agent="sac", env=env_id, seed=seed, steps=warmup + steps, device=device,
                           checkpoint_every=0, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        loop = OffPolicyLoop(agent, config, settings, lambda: make_env(env_id), Path(tmp),
                             torch.device(device), progress=False)
        loop.run(warmup + 100)  # random phase plus a few updates to warm caches
        start = time.perf_counter()
        loop.run(warmup + 100 + steps)
        return steps / (time.perf_counter() - start)


def sb3_steps_per_second(env_id: str, warmup: int, steps: int, device: str, seed: int) -> float:
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make(env_id), learning_starts=warmup, batch_size=256, buffer_size=warmup + steps + 200,
                train_freq=1, gradient_steps=1, policy_kwargs={"net_arch": [256, 256]}, device=device, seed=seed)
    model.learn(warmup + 100)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--steps", type=int, default=2000, help="timed learning steps per run")
    parser.add_argument("--warmup", type=int, default=1000, help="random steps before learning")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the median is reported")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"SAC on {args.env}: batch 256, 2x256 hidden, 1 update per env step, {args.steps} timed steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'device':<8}{'toolkit steps/s':>18}{'sb3 steps/s':>14}{'ratio':>8}")
    for device in devices:
        ours, theirs = [], []
        for r in range(args.repeats):  # alternate the two so drift on the machine hits both alike
            ours.append(toolkit_steps_per_second(args.env, args.warmup, args.steps, device, seed=r))
            theirs.append(sb3_steps_per_second(args.env, args.warmup, args.steps, device, seed=r))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{device:<8}{a:>18.1f}{b:>14.1f}{a / b:>7.2f}x   (runs: toolkit {[round(x, 1) for x in ours]}, "
              f"sb3 {[round(x, 1) for x in theirs]})")


if __name__ == "__main__":
    main()
