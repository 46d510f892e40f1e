"""Sparse-reward point mass: cross the square to a small goal disc, paying for every move.

A benchmark for exploration bonuses (``toolkit train sac-icm`` / ``dqn-icm`` / ``ppo-icm``): the
point starts near the corner (-0.8, -0.8) of the square [-1, 1]^2 and the only reward worth
having is a goal disc near the opposite corner, about 2.26 away. Velocity actions are scaled by
0.1 as in ``toolkit/PointMass-v0``, so the straight line takes ~16 steps with the continuous
actions (both axes at once) and ~30 with the discrete ones, well inside the 100-step horizon.

Why it is hard:

* **The goal is out of a random walk's reach.** 100 steps of uniformly random actions move the
  point by a zero-mean walk of ~0.58 (continuous) or ~0.63 (discrete) standard deviation per
  axis, while the goal lies 1.6 away on *both* axes. Measured with the default settings over
  1,000,000 episodes (a vectorised replica of :meth:`SparsePointMassEnv.step`, which agrees with
  the env itself over 20,000 episodes of a 200-step horizon: 0.45% against 0.44% continuous,
  0.89% against 0.87% discrete), a uniformly random policy reaches the goal in **0.006%** of
  episodes with the continuous actions and **0.02%** with the discrete ones (with a 200-step
  horizon it would be 0.44% and 0.87%). The random warm-up of an off-policy agent (a few
  thousand steps, some tens of episodes) therefore almost never stores a goal transition.
* **Standing still is the local optimum.** Every step costs ``move_cost * ||a||^2`` (at most
  0.02 a step by default), so before the goal is ever seen the best policy is to keep still: a
  return of 0, against about -0.7 for wandering at random. Measured with 15,000 env steps and
  default settings, seeds 0-2: ``dqn`` (discrete) and ``sac`` (continuous) never reached the
  goal, and all six deterministic policies end up standing still (evaluation returns between
  -0.01 and 0); ``sac``'s entropy bonus keeps its *training* actions near uniform, which is
  the random walk above. The goal reward (+10, against about 0.3 of move costs along the
  straight line) ends the episode with ``info["success"] = True``; an episode with a return
  above ``goal_reward / 2`` is a success. Reaching the goal takes directed exploration:
  holding a random full-speed direction for 10 steps at a time (continuous) succeeds in 21% of
  episodes, and ``dqn-icm`` with a normalised bonus found the goal on all three seeds.

Constructor arguments (``--env-kwargs key=value,...``): ``goal_distance`` (from the start
centre, along the diagonal towards (1, 1); the default 2.263 puts the goal centre at
(0.8, 0.8)), or ``goal_x`` and ``goal_y`` for any goal centre; ``goal_radius``; ``move_cost``;
``goal_reward``; ``start_noise`` (half-width of the start box around (-0.8, -0.8)).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

#: Centre of the box the point starts in.
START = (-0.8, -0.8)
#: Distance from START to the default goal centre (0.8, 0.8).
DEFAULT_GOAL_DISTANCE = 1.6 * math.sqrt(2.0)
#: The discrete variant's moves: stay, +x, -x, +y, -y (unit velocities, scaled like the Box ones).
DISCRETE_MOVES = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
#: Velocity scale of an action (as in PointMassEnv).
SPEED = 0.1


class SparsePointMassEnv(gym.Env):
    """Observation: position (x, y) in [-1, 1]^2. Action: a velocity in [-1, 1]^2, scaled by
    0.1. Reward: ``-move_cost * ||a||^2`` each step, plus ``goal_reward`` on entering the goal
    disc, which ends the episode (``info["success"]``). The registered time limit (100 steps)
    truncates the rest. See the module docstring for why a plain agent fails here."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        render_mode: str | None = None,
        goal_distance: float | None = None,
        goal_x: float | None = None,
        goal_y: float | None = None,
        goal_radius: float = 0.15,
        move_cost: float = 0.01,
        goal_reward: float = 10.0,
        start_noise: float = 0.05,
    ) -> None:
        if (goal_x is None) != (goal_y is None):
            raise ValueError("Give both goal_x and goal_y (a goal centre), or neither.")
        if goal_x is not None and goal_distance is not None:
            raise ValueError("Give goal_distance or goal_x/goal_y, not both.")
        if goal_radius <= 0 or move_cost < 0 or start_noise < 0:
            raise ValueError(f"Need goal_radius > 0, move_cost >= 0 and start_noise >= 0, got "
                             f"{goal_radius}, {move_cost} and {start_noise}.")
        if goal_x is not None and goal_y is not None:
            goal = np.array([goal_x, goal_y], np.float64)
        else:
            # Along the diagonal, so one number sets the difficulty of both axes alike.
            distance = DEFAULT_GOAL_DISTANCE if goal_distance is None else float(goal_distance)
            goal = np.array(START) + distance / math.sqrt(2.0)
        if np.any(np.abs(goal) > 1.0):
            raise ValueError(f"The goal centre {tuple(goal.round(3))} lies outside the square [-1, 1]^2.")
        self.goal = goal.astype(np.float32)
        self.goal_radius = float(goal_radius)
        self.move_cost = float(move_cost)
        self.goal_reward = float(goal_reward)
        self.start_noise = float(start_noise)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space: gym.spaces.Space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.render_mode = render_mode
        self.position = np.array(START, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Place the point uniformly in the start box around (-0.8, -0.8)."""
        super().reset(seed=seed)
        noise = self.np_random.uniform(-self.start_noise, self.start_noise, 2)
        self.position = (np.array(START) + noise).astype(np.float32)
        return self.position.copy(), {"success": False}

    def velocity(self, action: Any) -> np.ndarray:
        """The action as a velocity in [-1, 1]^2 (before the 0.1 scale)."""
        return np.clip(np.asarray(action, np.float32).reshape(2), -1.0, 1.0)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move, charge the move cost, and end the episode with the goal reward on arrival."""
        velocity = self.velocity(action)
        self.position = np.clip(self.position + SPEED * velocity, -1.0, 1.0).astype(np.float32)
        reward = -self.move_cost * float(np.dot(velocity, velocity))
        success = bool(np.linalg.norm(self.position - self.goal) <= self.goal_radius)
        if success:
            reward += self.goal_reward
        return self.position.copy(), reward, success, False, {"success": success}

    def render(self) -> np.ndarray:
        """A 64x64 RGB frame: the goal disc in green, the point in red."""
        side = 64
        frame = np.full((side, side, 3), 255, np.uint8)
        scale = (side - 1) / 2.0
        # Pixel centres in env coordinates, y pointing up as in the PointMass frame (row = y).
        coords = np.arange(side) / scale - 1.0
        gx, gy = np.meshgrid(coords, coords)
        in_goal = (gx - self.goal[0]) ** 2 + (gy - self.goal[1]) ** 2 <= self.goal_radius**2
        frame[in_goal] = (60, 170, 60)
        x, y = ((self.position + 1.0) * scale).astype(int)
        frame[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = (200, 30, 30)
        return frame


class SparsePointMassDiscreteEnv(SparsePointMassEnv):
    """:class:`SparsePointMassEnv` with ``Discrete(5)`` actions: stay, +x, -x, +y, -y (each a
    unit velocity, so a move costs ``move_cost`` and staying costs nothing)."""

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(render_mode=render_mode, **kwargs)
        self.action_space = gym.spaces.Discrete(len(DISCRETE_MOVES))

    def velocity(self, action: Any) -> np.ndarray:
        """The move the action index names."""
        return DISCRETE_MOVES[int(action)]
