"""Joining a Ray cluster, or starting a small local one.

``--address`` (or ``RAY_ADDRESS``) joins an existing cluster: ``auto`` for the cluster this
machine belongs to, ``HOST:PORT`` for a head node's GCS, ``ray://HOST:PORT`` through Ray
Client. Without one, a local Ray starts with a bounded object store and no dashboard, so a
laptop run does not grab a third of the machine's memory or open ports it does not need.
"""

from __future__ import annotations

import os
from typing import Any

from toolkit.errors import ToolkitError

#: Object store of a local Ray started by the toolkit: rollouts and weights are small.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


def ray_module() -> Any:
    """``import ray``, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ToolkitError("Ray is not installed; install it with: pip install 'toolkit-rl[ray]'.") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """Connect to (or start) Ray once per process; returns the ``ray`` module.

    A process already connected keeps its connection (tests start one Ray per session).
    """
    ray = ray_module()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers inherit the driver's view of the headless rendering settings and thread count.
    env_vars = {k: os.environ[k] for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "SDL_VIDEODRIVER") if k in os.environ}
    env_vars.setdefault("OMP_NUM_THREADS", "1")
    runtime_env = {"env_vars": env_vars}
    try:
        if address is None:
            # "local" always starts a new Ray: without it, ray.init joins whatever cluster
            # /tmp/ray/ray_current_cluster names (another process's Ray on this machine).
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, runtime_env=runtime_env,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise ToolkitError(f"Could not connect to Ray at {where}: {str(exc).splitlines()[0]}") from None
    return ray


def require_resources(ray: Any, needs: dict[str, float], what: str) -> None:
    """Refuse work the connected cluster can never place (Ray would wait for it forever).

    ``needs`` maps Ray resource names (``CPU``, ``GPU``) to amounts; ``what`` says who needs
    them, e.g. ``"--workers 4"``. An autoscaling cluster is judged by what it has now."""
    total = ray.cluster_resources()
    for name, amount in needs.items():
        have = float(total.get(name, 0.0))
        if amount > have + 1e-9:
            raise ToolkitError(
                f"{what} needs {amount:g} {name}, but the Ray cluster has {have:g}; ask for less, "
                "or join a bigger cluster with --address."
            )
