"""First-party environments, registered through the ``toolkit.envs`` entry point.

``toolkit/PointMass-v0`` is a tiny continuous-control task (steer a point to the origin)
that learns in seconds, for smoke tests, plugin authors and contract tests.
"""

from __future__ import annotations


def register() -> None:
    """Register this package's environments with Gymnasium (called once per process)."""
    import gymnasium as gym

    if "toolkit/PointMass-v0" not in gym.registry:
        gym.register("toolkit/PointMass-v0", entry_point="toolkit_envs.point_mass:PointMassEnv", max_episode_steps=50)
