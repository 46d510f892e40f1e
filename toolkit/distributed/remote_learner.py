"""The learner on a GPU of the Ray cluster, when the driver has none.

``toolkit train AGENT --workers N --device cuda`` on a machine whose torch sees no CUDA GPU,
joined to a Ray cluster that has one, runs the whole training call (agent, distributed loop,
checkpoints) as one Ray task holding a GPU; the loop creates its env-runner actors from inside
that task. The driver prints where the learner runs, waits, and returns the task's
``(run_dir, LoopResult)``. The progress bar is off on the cluster; the metrics are in the run
directory as usual.

The run directory is written by the GPU node, so it must be on storage that node writes to and
this machine reads: the same machine, or a shared filesystem mounted at the same path.
Ctrl-C on the driver asks the task's loop to stop through a ``STOP`` file in the run directory;
the loop finishes its update and writes its checkpoint (a second Ctrl-C cancels the task at
once; checkpoints are written atomically, so the last one stays valid for ``toolkit resume``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.distributed.cluster import init_ray
from toolkit.errors import ToolkitError

#: Seconds the driver waits, after Ctrl-C, for the stopping learner to write its checkpoint.
CANCEL_GRACE_S = 60.0


def learner_goes_remote(device: str, local_cuda: bool, cluster_gpus: float) -> bool:
    """Whether a distributed run's learner should move to a GPU of the Ray cluster: CUDA was
    asked for (``cuda`` or ``cuda:N``), this torch has none, and the cluster has one. CUDA
    asked for with no GPU anywhere is a clear error."""
    if not device.startswith("cuda") or local_cuda:
        return False
    if cluster_gpus >= 1:
        return True
    raise ToolkitError(
        f"--device {device} was asked for, but no GPU is visible to this torch or in the Ray cluster; "
        "use --device cpu or auto, or join a cluster with a GPU with --address."
    )


def learner_on_cluster_gpu(workers: int, device: str, address: str | None) -> bool:
    """:func:`learner_goes_remote` for a run with ``workers`` Ray workers; joins Ray
    (``address``) only when CUDA is asked for and this torch has none."""
    if workers <= 0 or not device.startswith("cuda"):
        return False
    import torch

    if torch.cuda.is_available():
        return False
    ray = init_ray(address)
    return learner_goes_remote(device, False, float(ray.cluster_resources().get("GPU", 0.0)))


def _here(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


def run_remote_learner(fn: Callable[..., tuple[Path, Any]], *args: Any, run_dir: Path,
                       num_gpus: float = 1.0, device: str = "cuda", **kwargs: Any) -> tuple[Path, Any]:
    """Run ``fn(*args, device=device, progress=False, **kwargs)`` as one Ray task with
    ``num_gpus`` GPUs and return its result. ``fn`` must be importable on the cluster (a
    module-level function of the toolkit); ``device`` is the task's: ``cuda`` is the GPU Ray
    gave it. A :class:`ToolkitError` raised there is raised here as it was."""
    ray = init_ray()
    task = ray.remote(_here).options(num_gpus=num_gpus, num_cpus=1, max_retries=0)
    ref = task.remote(fn, args, {**kwargs, "device": device, "progress": False})
    where = "a GPU of the Ray cluster" if num_gpus else "a Ray worker"
    print(f"The learner runs on {where} (this torch sees no CUDA GPU); the run directory {run_dir} "
          "must be on storage that node writes to. Waiting for it; Ctrl-C stops it with a checkpoint.",
          file=sys.stderr, flush=True)
    try:
        return _get(ray, ref)
    except KeyboardInterrupt:
        # Ask the loop to stop the way Ctrl-C would locally: it finishes its update, writes its
        # checkpoint and returns. (ray.cancel would interrupt it mid-step, without a checkpoint.)
        from toolkit.trainer import STOP_FILE

        (run_dir / STOP_FILE).touch()
        try:
            ray.wait([ref], timeout=CANCEL_GRACE_S)
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            ray.cancel(ref, force=True)
        raise ToolkitError(
            f"Stopped the learner on the cluster; its last checkpoint in {run_dir} is valid, "
            f"continue with `toolkit resume {run_dir}`."
        ) from None


def _get(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ToolkitError):
            raise cause from None
        raise
