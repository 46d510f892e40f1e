"""First-party environments, registered through the ``toolkit.envs`` entry point.

* ``toolkit/PointMass-v0`` is a tiny continuous-control task (steer a point to the origin)
  that learns in seconds, for smoke tests, plugin authors and contract tests.
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
    # No registered time limit: a dream truncates itself (max_steps), the real env keeps its own.
    if "toolkit/Dream-v0" not in gym.registry:
        gym.register("toolkit/Dream-v0", entry_point="toolkit_envs.dream:DreamEnv")
    if "toolkit/WorldModelReal-v0" not in gym.registry:
        gym.register("toolkit/WorldModelReal-v0", entry_point="toolkit_envs.dream:WorldModelRealEnv")
