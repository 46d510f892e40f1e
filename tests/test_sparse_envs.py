"""The sparse-reward point mass benchmarks (``toolkit/SparsePointMass-v0`` and its Discrete(5)
twin): Gymnasium's env checker, a scripted run to the goal, the cost of moving and of not moving,
and constructor arguments through ``gymnasium.make`` and ``toolkit.envs.make_env``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from toolkit.envs import EnvOptions, make_env
from toolkit.errors import ToolkitError

CONTINUOUS = "toolkit/SparsePointMass-v0"
DISCRETE = "toolkit/SparsePointMassDiscrete-v0"
IDS = (CONTINUOUS, DISCRETE)


def toward(env: gym.Env, position: np.ndarray) -> Any:
    """A straight-line controller's action from ``position`` to the goal: full speed on both
    axes for the Box variant, the axis with the larger gap for the discrete one."""
    gap = env.unwrapped.goal - position
    if isinstance(env.action_space, gym.spaces.Discrete):
        axis = int(np.argmax(np.abs(gap)))
        return 1 + 2 * axis + (0 if gap[axis] > 0 else 1)  # +x, -x, +y, -y are 1..4
    return np.clip(gap / 0.1, -1.0, 1.0).astype(np.float32)


def still(env: gym.Env) -> Any:
    """The action that does not move."""
    return 0 if isinstance(env.action_space, gym.spaces.Discrete) else np.zeros(2, np.float32)


@pytest.mark.parametrize("env_id", IDS)
def test_env_checker_passes(env_id: str) -> None:
    env = make_env(env_id)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_straight_line_reaches_the_goal(env_id: str) -> None:
    env = make_env(env_id)
    obs, info = env.reset(seed=3)
    assert info["success"] is False
    assert np.linalg.norm(obs - np.array([-0.8, -0.8])) <= 0.05 * np.sqrt(2) + 1e-6  # the start box
    total, steps, terminated, truncated = 0.0, 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(toward(env, obs))
        total += reward
        steps += 1
    assert terminated and not truncated, "the episode ends on the goal, not on the time limit"
    assert info["success"] is True
    assert reward > 9.9  # the goal reward (10) less one step's move cost
    assert total > 9.0
    assert np.linalg.norm(obs - env.unwrapped.goal) <= env.unwrapped.goal_radius
    assert steps <= (20 if env_id == CONTINUOUS else 35)  # diagonal moves are twice as fast
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_standing_still_costs_nothing_and_never_succeeds(env_id: str) -> None:
    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    start, steps, total = obs.copy(), 0, 0.0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(still(env))
        total += reward
        steps += 1
        assert info["success"] is False
    assert truncated and not terminated and steps == 100  # the registered time limit
    assert total == 0.0
    np.testing.assert_array_equal(obs, start)
    env.close()


def test_move_cost_is_charged() -> None:
    env = gym.make(CONTINUOUS, move_cost=0.5)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.array([0.6, -0.8], np.float32))
    assert reward == pytest.approx(-0.5 * 1.0)  # ||a||^2 = 0.36 + 0.64
    _, reward, *_ = env.step(np.array([3.0, 0.0], np.float32))  # clipped to the action box
    assert reward == pytest.approx(-0.5)
    discrete = gym.make(DISCRETE, move_cost=0.25)
    discrete.reset(seed=0)
    assert [discrete.step(a)[1] for a in (0, 1, 2, 3, 4)] == pytest.approx([0.0] + [-0.25] * 4)


def test_walls_stop_the_point() -> None:
    env = gym.make(CONTINUOUS)
    obs, _ = env.reset(seed=0)
    for _ in range(30):
        obs, *_ = env.step(np.array([-1.0, -1.0], np.float32))
    np.testing.assert_array_equal(obs, [-1.0, -1.0])
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("make", ["gymnasium", "toolkit"])
def test_kwargs_reach_the_constructor(make: str) -> None:
    kwargs = {"goal_distance": 0.5, "goal_radius": 0.25, "move_cost": 0.0, "goal_reward": 3.0, "start_noise": 0.0}
    env = gym.make(CONTINUOUS, **kwargs) if make == "gymnasium" else make_env(
        CONTINUOUS, options=EnvOptions(kwargs=kwargs))
    inner = env.unwrapped
    np.testing.assert_allclose(inner.goal, [-0.8 + 0.5 / np.sqrt(2)] * 2, atol=1e-6)
    assert (inner.goal_radius, inner.move_cost, inner.goal_reward) == (0.25, 0.0, 3.0)
    obs, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs, np.float32([-0.8, -0.8]))  # no start noise
    obs, reward, terminated, *_ = env.step(np.ones(2, np.float32))
    assert not terminated and reward == 0.0  # 0.14 of the 0.5 - 0.25 needed
    obs, reward, terminated, _, info = env.step(np.ones(2, np.float32))
    assert terminated and info["success"] and reward == 3.0
    env.close()


def test_goal_position_and_discrete_kwargs() -> None:
    env = make_env(DISCRETE, goal_x=-0.8, goal_y=0.0, goal_radius=0.1)
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == 5
    np.testing.assert_allclose(env.unwrapped.goal, [-0.8, 0.0])
    obs, _ = env.reset(seed=2)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(toward(env, obs))
        done = terminated or truncated
    assert info["success"] and reward == pytest.approx(10.0 - 0.01)


def test_bad_kwargs_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the square"):
        gym.make(CONTINUOUS, goal_distance=5.0)
    with pytest.raises(ValueError, match="both goal_x and goal_y"):
        gym.make(CONTINUOUS, goal_x=0.5)
    with pytest.raises(ToolkitError, match="takes no argument 'goal'"):
        make_env(CONTINUOUS, options=EnvOptions(kwargs={"goal": 1.0}))


def test_render_draws_the_goal_and_the_point() -> None:
    env = make_env(CONTINUOUS, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    green = (frame == np.array([60, 170, 60], np.uint8)).all(-1)
    red = (frame == np.array([200, 30, 30], np.uint8)).all(-1)
    assert green.sum() > 10 and red.sum() > 5
    rows, cols = np.nonzero(green)
    assert rows.mean() > 48 and cols.mean() > 48  # the goal near (0.8, 0.8)
    rows, cols = np.nonzero(red)
    assert rows.mean() < 16 and cols.mean() < 16  # the point near (-0.8, -0.8)


@pytest.mark.parametrize("env_id", IDS)
def test_a_random_policy_does_not_find_the_goal(env_id: str) -> None:
    # The benchmark's premise, as a guard against defaults that make it easy: a uniformly
    # random policy succeeds in ~0.01% of episodes (module docstring), so 200 seeded
    # episodes see none, and wander at a small cost.
    env = gym.make(env_id)
    env.action_space.seed(0)
    returns = []
    for episode in range(200):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            total += reward
            done = terminated or truncated
        assert not info["success"]
        returns.append(total)
    assert -1.0 < np.mean(returns) < -0.5
