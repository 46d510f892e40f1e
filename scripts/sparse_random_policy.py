"""How often a uniformly random policy reaches the goal of the sparse point-mass tasks.

The number behind "a random walk almost never gets there" (``toolkit_envs.sparse_point_mass``,
README's curiosity benchmark). Two measurements, in one run:

* the env itself (``gymnasium.make``), ``--env-episodes`` episodes per variant, each action drawn
  from the action space;
* a vectorised NumPy replica of the env's ``reset`` and ``step`` (same start box, 0.1 velocity
  scale, clipping to the square, goal disc, 100-step horizon), ``--episodes`` episodes per
  variant, which is what makes a one-in-ten-thousand event measurable. With ``--horizon 200``
  the two agree well enough to check the replica (successes are then ~100x commoner).

    python scripts/sparse_random_policy.py
    python scripts/sparse_random_policy.py --horizon 200 --env-episodes 20000
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import toolkit_envs
from toolkit_envs.sparse_point_mass import DISCRETE_MOVES, SPEED, START

VARIANTS = {"continuous": "toolkit/SparsePointMass-v0", "discrete": "toolkit/SparsePointMassDiscrete-v0"}


def replica_success_rate(discrete: bool, episodes: int, horizon: int, seed: int, chunk: int = 200_000) -> float:
    """Fraction of random-policy episodes that reach the default goal, simulated in bulk."""
    env = gym.make(VARIANTS["discrete" if discrete else "continuous"]).unwrapped
    goal, radius, noise = np.asarray(env.goal, np.float32), env.goal_radius, env.start_noise
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, episodes, chunk):
        n = min(chunk, episodes - start)
        position = (np.array(START, np.float32) + rng.uniform(-noise, noise, (n, 2))).astype(np.float32)
        reached = np.zeros(n, bool)
        for _ in range(horizon):
            if discrete:
                velocity = DISCRETE_MOVES[rng.integers(len(DISCRETE_MOVES), size=n)]
            else:
                velocity = rng.uniform(-1.0, 1.0, (n, 2)).astype(np.float32)
            position = np.clip(position + SPEED * velocity, -1.0, 1.0)
            # An episode ends on arrival: later steps of a finished episode do not matter.
            reached |= np.linalg.norm(position - goal, axis=1) <= radius
        hits += int(reached.sum())
    return hits / episodes


def env_success_rate(env_id: str, episodes: int, horizon: int, seed: int) -> float:
    """Fraction of random-policy episodes that reach the goal, stepping the env itself."""
    env = gym.make(env_id, max_episode_steps=horizon)
    env.action_space.seed(seed)
    hits = 0
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        hits += bool(info["success"])
    return hits / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=1_000_000, help="Replica episodes per variant.")
    parser.add_argument("--env-episodes", type=int, default=2_000, help="Env episodes per variant.")
    parser.add_argument("--horizon", type=int, default=100, help="Steps per episode (the registered limit is 100).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    toolkit_envs.register()
    print(f"uniformly random policy, {args.horizon}-step episodes, default goal")
    print("| variant | replica episodes | replica success | env episodes | env success |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, env_id in VARIANTS.items():
        replica = replica_success_rate(name == "discrete", args.episodes, args.horizon, args.seed)
        real = env_success_rate(env_id, args.env_episodes, args.horizon, args.seed)
        print(f"| {name} | {args.episodes:,} | {replica:.4%} | {args.env_episodes:,} | {real:.4%} |")


if __name__ == "__main__":
    main()
