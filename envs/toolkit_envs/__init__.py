"""First-party environments, registered through the ``toolkit.envs`` entry point.

* ``toolkit/PointMass-v0`` is a tiny continuous-control task (steer a point to the origin)
  that learns in seconds, for smoke tests, plugin authors and contract tests.
* ``toolkit/SparsePointMass-v0`` (Box actions) and ``toolkit/SparsePointMassDiscrete-v0``
  (``Discrete(5)``: stay, +x, -x, +y, -y) are sparse-reward exploration benchmarks: cross the
  square to a goal disc (+10, ends the episode) while every move costs a little, so a plain
  agent learns to stand still; 100 steps. ``--env-kwargs`` sets ``goal_distance`` (or
  ``goal_x``/``goal_y``), ``goal_radius``, ``move_cost``, ``goal_reward``, ``start_noise``;
  see :mod:`toolkit_envs.sparse_point_mass`.
* ``toolkit/Dream-v0`` is the dream of a trained world model (``--env-kwargs run=WM_DIR``,
  optionally ``temperature=``, ``max_steps=``), and ``toolkit/WorldModelReal-v0`` the real env
  it was trained on, observed through it (``--env-kwargs run=WM_DIR``); see
  :mod:`toolkit_envs.dream`.
"""

from __future__ import annotations


def register() -> None:
    """Register this package's environments with Gymnasium (called once per process)."""
    import gymnasium as gym

    if "toolkit/PointMass-v0" not in gym.registry:
        gym.register("toolkit/PointMass-v0", entry_point="toolkit_envs.point_mass:PointMassEnv", max_episode_steps=50)
    # 100 steps: several times the straight line (~16-30 steps), far too few for a random walk.
    if "toolkit/SparsePointMass-v0" not in gym.registry:
        gym.register("toolkit/SparsePointMass-v0", entry_point="toolkit_envs.sparse_point_mass:SparsePointMassEnv",
                     max_episode_steps=100)
    if "toolkit/SparsePointMassDiscrete-v0" not in gym.registry:
        gym.register("toolkit/SparsePointMassDiscrete-v0",
                     entry_point="toolkit_envs.sparse_point_mass:SparsePointMassDiscreteEnv", max_episode_steps=100)
    # No registered time limit: a dream truncates itself (max_steps), the real env keeps its own.
    if "toolkit/Dream-v0" not in gym.registry:
        gym.register("toolkit/Dream-v0", entry_point="toolkit_envs.dream:DreamEnv")
    if "toolkit/WorldModelReal-v0" not in gym.registry:
        gym.register("toolkit/WorldModelReal-v0", entry_point="toolkit_envs.dream:WorldModelRealEnv")
