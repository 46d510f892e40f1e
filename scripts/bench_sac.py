"""Benchmark: this toolkit's SAC against stable-baselines3's SAC, side by side in one run.

Both train on the same env with the same settings (batch 256, two 256-unit hidden layers,
one gradient step per env step, learning after the same number of random steps) on the
same device and the same torch thread count. What is timed is the learning phase only: env
steps per second while every step also runs one gradient update, the regime that dominates
a real run. The two sides alternate over ``--repeats`` so drift on a shared machine hits both.

Extra rows time the toolkit's other settings at the same update-to-data ratio: ``num_envs=4``
(four envs acting with one forward pass, their steps stored with one replay write, four
updates per loop step) and each ``--compile`` mode the device runs. The last line is the
compute ceiling: the update's matrix-multiply FLOPs against this machine's measured matmul
throughput at the same shapes, which bounds how fast any implementation of the same update
can go here.

    python scripts/bench_sac.py                       # Hopper-v4, CPU (and CUDA if present)
    python scripts/bench_sac.py --steps 3000 --repeats 3 --device cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

#: Extra toolkit rows: a label, ``--set`` items and the ``--compile`` mode.
VARIANTS = {
    "toolkit": ((), "none"),
    "toolkit num_envs=4": (("num_envs=4",), "none"),
    "toolkit compile": ((), "compile"),
    "toolkit cudagraphs": ((), "cudagraphs"),
    "toolkit cudagraphs num_envs=4": (("num_envs=4",), "cudagraphs"),
}
HIDDEN = 256
BATCH = 256


def toolkit_steps_per_second(env_id: str, warmup: int, steps: int, device: str, seed: int,
                             sets: tuple[str, ...] = (), compile_mode: str = "none") -> float:
    from toolkit.compile import compile_update
    from toolkit.envs import make_env
    from toolkit.loops.off_policy import OffPolicyLoop
    from toolkit.registry import registry
    from toolkit.runs import RunSettings
    from toolkit.session import build_config

    spec = registry.agent("sac")
    config = build_config(spec, set_items=[f"learning_starts={warmup}", f"batch_size={BATCH}",
                                           f"hidden_sizes={HIDDEN},{HIDDEN}", *sets])
    env = make_env(env_id)
    torch.manual_seed(seed)
    agent = spec.build(config, env.observation_space, env.action_space, device)
    compile_update(agent, compile_mode)
    settings = RunSettings(agent="sac", env=env_id, seed=seed, steps=warmup + steps, device=device,
                           checkpoint_every=0, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        loop = OffPolicyLoop(agent, config, settings, lambda: make_env(env_id), Path(tmp),
                             torch.device(device), progress=False)
        loop.run(warmup + 200)  # random phase plus some updates: caches warm, compilation done
        if device == "cuda":
            torch.cuda.synchronize()
        start = loop.step
        began = time.perf_counter()
        loop.run(start + steps)
        if device == "cuda":
            torch.cuda.synchronize()
        return (loop.step - start) / (time.perf_counter() - began)


def sb3_steps_per_second(env_id: str, warmup: int, steps: int, device: str, seed: int) -> float:
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make(env_id), learning_starts=warmup, batch_size=BATCH, buffer_size=warmup + steps + 400,
                train_freq=1, gradient_steps=1, policy_kwargs={"net_arch": [HIDDEN, HIDDEN]}, device=device, seed=seed)
    model.learn(warmup + 200)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def update_flops(obs_dim: int, act_dim: int) -> float:
    """Matrix-multiply FLOPs of one SAC update (batch 256, 2x256) as the toolkit computes it.

    A linear layer costs ``2 * in * out`` FLOPs per sample forward, as much again for the
    gradient of its weights and for that of its input. Per sample: the actor on s' (forward
    only) and on s (forward, weight gradients, input gradients below the first layer); the
    twin target critics on s' (forward); the twin critics on (s, a) (forward, weight
    gradients, input gradients below the first layer) and on (s, pi(s)) (forward and input
    gradients down to the action, weights detached)."""
    h = HIDDEN
    actor = [2 * obs_dim * h, 2 * h * h, 2 * h * 2 * act_dim]
    critic = [2 * (obs_dim + act_dim) * h, 2 * h * h, 2 * h]
    fa, fc = sum(actor), 2 * sum(critic)  # twin critics
    below_first_a, below_first_c = fa - actor[0], fc - 2 * critic[0]
    per_sample = (fa + (fa + fa + below_first_a) + fc + (fc + fc + below_first_c) + (fc + fc))
    return float(BATCH * per_sample)


def matmul_flops_per_second(device: str) -> float:
    """Measured GEMM throughput at the update's main shape, [256, 256] x [256, 256]."""
    a = torch.randn(BATCH, HIDDEN, device=device)
    b = torch.randn(HIDDEN, HIDDEN, device=device)
    for _ in range(20):
        a @ b
    n, best = 200, float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / n)
    return 2 * BATCH * HIDDEN * HIDDEN / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--steps", type=int, default=2000, help="timed learning steps per run")
    parser.add_argument("--warmup", type=int, default=1000, help="random steps before learning")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the median is reported")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--extra", action=argparse.BooleanOptionalAction, default=True,
                        help="also time num_envs=4 and the --compile modes the device runs")
    args = parser.parse_args()

    import gymnasium as gym

    probe = gym.make(args.env)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    load = os.getloadavg()
    print(f"SAC on {args.env}: batch {BATCH}, 2x{HIDDEN} hidden, 1 update per env step, {args.steps} timed steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before the run")
    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(f"\n{device} ({name})")
        print(f"{'':<32}{'steps/s':>10}{'vs sb3':>9}   runs")
        ours, theirs = [], []
        for r in range(args.repeats):  # alternate the two so drift on the machine hits both alike
            ours.append(toolkit_steps_per_second(args.env, args.warmup, args.steps, device, seed=r))
            theirs.append(sb3_steps_per_second(args.env, args.warmup, args.steps, device, seed=r))
        sb3 = statistics.median(theirs)
        print(f"{'stable-baselines3':<32}{sb3:>10.1f}{1.0:>8.2f}x   {[round(x, 1) for x in theirs]}")
        rows = {"toolkit": ours}
        if args.extra:
            for label, (sets, mode) in VARIANTS.items():
                if label == "toolkit" or (mode == "cudagraphs" and device != "cuda"):
                    continue
                rows[label] = [toolkit_steps_per_second(args.env, args.warmup, args.steps, device, seed=r,
                                                        sets=sets, compile_mode=mode) for r in range(args.repeats)]
        for label, runs in rows.items():
            value = statistics.median(runs)
            print(f"{label:<32}{value:>10.1f}{value / sb3:>8.2f}x   {[round(x, 1) for x in runs]}")
        flops = update_flops(obs_dim, act_dim)
        rate = matmul_flops_per_second(device)
        ceiling = rate / flops
        print(f"compute ceiling: {flops / 1e6:.0f} MFLOP of matmuls per update at {rate / 1e9:.0f} GFLOP/s measured "
              f"= {ceiling:.0f} updates/s at most, {ceiling / sb3:.2f}x stable-baselines3")


if __name__ == "__main__":
    main()
