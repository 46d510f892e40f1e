"""Env-steps/s of collection on Ray env runners against local single-process collection.

Collection only, no learning: local collection steps ``M`` envs in this process with the
agent's policy acting (what the local loops do between updates); ``N`` Ray env runners each
step ``M`` envs with the same policy, with one request always in flight per runner (what
the distributed off-policy loop does). Prints env-steps/s for local and for 1, 2, 4 ...
workers up to the machine's cores, the speedup over local and the scaling efficiency
(speedup / workers; 1.0 is linear). Default: Hopper-v4 with sac acting, 4 envs per runner.

    python scripts/bench_ray_collection.py [--env Hopper-v4] [--agent sac] [--envs-per-worker 4]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from toolkit.config import to_dict  # noqa: E402
from toolkit.distributed.cluster import init_ray  # noqa: E402
from toolkit.distributed.env_runner import EnvRunner  # noqa: E402
from toolkit.distributed.rollouts import cpu_state  # noqa: E402
from toolkit.envs import make_env  # noqa: E402
from toolkit.loops.collect import EnvBatch  # noqa: E402
from toolkit.registry import registry  # noqa: E402


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4 ... up to ``cores`` (and ``cores`` itself)."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def local_rate(args: argparse.Namespace, agent_config: dict) -> float:
    """Env-steps/s of one process stepping ``envs_per_worker`` envs with the policy."""
    spec = registry.agent(args.agent)
    batch = EnvBatch.make(lambda: make_env(args.env), args.envs_per_worker, seed=0)
    from toolkit.config import from_dict

    agent = spec.build(from_dict(spec.config, agent_config), batch.observation_space, batch.action_space, "cpu")
    act = batch.policy(agent, "cpu")
    batch.run(act, args.steps_per_request, lambda *_: None)  # warm-up
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        steps += int(batch.run(act, args.steps_per_request, lambda *_: None)["mask"].sum())
    return steps / (time.perf_counter() - start)


def ray_rate(ray: object, workers: int, args: argparse.Namespace, agent_config: dict, weights: object) -> float:
    """Env-steps/s of ``workers`` runners, one request in flight per runner."""
    remote = ray.remote(EnvRunner).options(num_cpus=1)
    runners = [remote.remote(args.agent, agent_config, args.env, args.envs_per_worker, 0, i) for i in range(workers)]
    ray.get([r.sample_steps.remote(args.steps_per_request, False, 0, weights) for r in runners])  # start + warm-up
    in_flight = {r.sample_steps.remote(args.steps_per_request, False): r for r in runners}
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        runner = in_flight.pop(ready[0])
        columns, _, _ = ray.get(ready[0])
        steps += int(columns["mask"].sum())
        in_flight[runner.sample_steps.remote(args.steps_per_request, False)] = runner
    elapsed = time.perf_counter() - start
    for runner in runners:
        ray.kill(runner)
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--agent", default="sac", help="whose policy acts (its default config)")
    parser.add_argument("--envs-per-worker", type=int, default=4)
    parser.add_argument("--steps-per-request", type=int, default=64, help="steps per env in one request")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per setting")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    spec = registry.agent(args.agent)
    agent_config = to_dict(spec.config())
    env = make_env(args.env)
    weights = cpu_state(spec.build(spec.config(), env.observation_space, env.action_space, "cpu").state_dict())
    env.close()

    cores = os.cpu_count() or 1
    print(f"{args.env}, {args.agent} acting, {args.envs_per_worker} envs per process, "
          f"{args.steps_per_request} steps per env per request, {cores} cores, torch {torch.__version__}")
    base = local_rate(args, agent_config)
    rows = [("local (1 process)", 1, base)]
    ray = init_ray(num_cpus=cores)
    weights_ref = ray.put(weights)
    for n in worker_counts(min(args.max_workers, cores)):
        rows.append((f"ray, {n} worker{'s' if n > 1 else ''}", n, ray_rate(ray, n, args, agent_config, weights_ref)))
    ray.shutdown()

    print(f"{'collection':<22}{'env-steps/s':>13}{'speedup':>10}{'efficiency':>12}")
    for name, n, rate in rows:
        speedup = rate / base
        print(f"{name:<22}{rate:>13,.0f}{speedup:>10.2f}{speedup / n:>12.2f}")


if __name__ == "__main__":
    main()
