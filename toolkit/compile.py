"""``--compile``: how an agent's update runs, eagerly or compiled.

* ``none``: plain eager PyTorch.
* ``compile``: ``torch.compile`` of the agent's ``update`` (TorchInductor). Fused optimiser
  steps and ``backward`` stay eager where Dynamo does not trace them (graph breaks); the
  losses around them are compiled.
* ``cudagraphs``: the same, with the compiled graphs captured in CUDA graphs
  (``mode="reduce-overhead"``), which replays a whole graph with one launch. CUDA only.
* ``auto``: the measured default of the device (:data:`DEFAULT_MODE`).

Two things keep a compiled update from recompiling or synchronising: learning rates become
0-dim tensors before the first compiled call (a float learning rate is a guard, so every
schedule step would recompile), and optimisers on CUDA are built ``capturable`` (their step
counters stay on the device; :func:`toolkit.nn.fast_adam_options`). The update itself reads
nothing back to the host (``tests/test_sync_free.py``). See ``docs/speed.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from toolkit.errors import ToolkitError

MODES = ("auto", "none", "compile", "cudagraphs")

#: What ``auto`` means per device, from ``scripts/bench_sac.py --compile-modes`` (docs/speed.md).
#: On this project's 2-core CPU a compiled SAC update ran slower than the eager one (matrix
#: multiplies dominate and are the same kernels; Inductor's fused elementwise code gained less
#: than its graph breaks cost). CUDA has not been measured on a GPU yet, so it stays eager
#: until a measurement says otherwise.
DEFAULT_MODE = {"cpu": "none", "cuda": "none"}


def resolve_mode(mode: str, device: torch.device) -> str:
    """The mode a run uses on ``device``: ``auto`` resolved, anything impossible refused."""
    if mode not in MODES:
        raise ToolkitError(f"--compile must be one of {', '.join(MODES)}, got '{mode}'.")
    if mode == "auto":
        return DEFAULT_MODE.get(device.type, "none")
    if mode == "cudagraphs" and device.type != "cuda":
        raise ToolkitError(
            f"--compile cudagraphs captures CUDA graphs and needs a CUDA device, but this run trains on {device.type}; "
            "use --compile compile or none."
        )
    return mode


def _optimizers(learner: Any) -> Iterator[torch.optim.Optimizer]:
    """Every optimiser a learner checkpoints, those of learners it wraps included."""
    for obj in getattr(learner, "checkpointed", {}).values():
        if isinstance(obj, torch.optim.Optimizer):
            yield obj
        elif hasattr(obj, "checkpointed"):
            yield from _optimizers(obj)


def tensor_learning_rates(learner: Any) -> None:
    """Turn every float learning rate of the learner's optimisers into a 0-dim tensor on its
    parameters' device (schedulers then fill it in place)."""
    for optimizer in _optimizers(learner):
        for group in optimizer.param_groups:
            if not isinstance(group["lr"], torch.Tensor):
                device = group["params"][0].device if group["params"] else torch.device("cpu")
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def compile_update(learner: Any, mode: str) -> None:
    """Replace ``learner.update`` by its compiled form (``mode`` as resolved by :func:`resolve_mode`).

    Learning rates turn into tensors at the first call, after a resumed run has loaded its
    checkpoint (whose optimiser state carries the learning rates it saved)."""
    if mode == "none":
        return
    # Dynamo warns that it ignores the profiler's record_function in optimiser steps: nothing a
    # user can act on, so its warnings are kept off the terminal.
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    compiled: Callable[..., Any] = torch.compile(learner.update, mode="reduce-overhead" if mode == "cudagraphs" else None)
    prepared = False

    def update(batch: Any) -> dict[str, torch.Tensor]:
        nonlocal prepared
        if not prepared:
            tensor_learning_rates(learner)
            prepared = True
        return compiled(batch)

    learner.update = update
