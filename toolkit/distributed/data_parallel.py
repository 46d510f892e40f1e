"""Data-parallel offline training on Ray Train workers (``--workers N --gpus-per-worker G``).

:class:`DataParallelOfflineLoop` runs :class:`~toolkit.loops.offline.OfflineLoop` on ``N``
Ray Train workers (:class:`ray.train.torch.TorchTrainer`: a process group over gloo on CPU,
NCCL on GPU). Agents are plugins that know nothing of Ray or DDP, so the synchronisation is
generic and lives here:

* every worker builds the agent through the registry from the run's config, and the tensors of
  the agent's ``checkpointed`` modules are broadcast from rank 0, so all replicas start equal;
* every worker samples its own windows (sampler seed = run seed + rank), so one optimiser step
  sees ``N x batch_size`` windows;
* the gradients of every trainable parameter of those modules are all-reduced and divided by
  ``N`` at the end of each backward pass (one flattened all-reduce, :class:`GradientAverager`),
  before the agent clips them and steps its optimiser. Identical gradients, identical optimiser
  states and identical updates keep the replicas equal (the loop checks this at the end and
  logs it as ``max_parameter_difference``). Repeated backward passes before one step still
  average correctly, because the already-averaged part is the same on every worker. What this
  needs from an agent: the same sequence of backward passes on every worker (true for the same
  code on same-shaped batches), and no trained tensors outside its ``checkpointed`` modules.

Rank 0 alone writes metrics, evaluations and checkpoints, into the run directory, in exactly the
layout and format of :class:`~toolkit.loops.offline.OfflineLoop`, so ``toolkit eval`` and
``toolkit resume`` work on the result (resume trains on the run's ``--workers`` again; a local
OfflineLoop loads the checkpoint too, ignoring the extra key). The checkpoint also carries
every worker's sampler and torch random state, so a data-parallel run resumed with the same
number of workers continues exactly. Ctrl-C on the driver stops every worker at the same step
(they check every ``STOP_CHECK_EVERY`` steps) with a checkpoint; a second Ctrl-C stops at
once, leaving the last periodic checkpoint. On a multi-node cluster the run directory
must be on storage that rank 0's node and the driver share (the driver reads the final
checkpoint from it). One worker (``--workers 1``) reproduces the local loop exactly.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.data.dataset import OfflineDataset
from toolkit.distributed.cluster import init_ray, require_resources
from toolkit.errors import ToolkitError
from toolkit.trainer import LoopResult
from toolkit.loops.offline import OfflineLoop
from toolkit.offline import OfflineAgent
from toolkit.progress import TrainingProgress
from toolkit.runs import CHECKPOINT, RunSettings, load_checkpoint

#: Gradient steps between the workers' checks for a Ctrl-C on the driver (one broadcast each).
STOP_CHECK_EVERY = 10
#: Key of the per-worker random streams in a data-parallel checkpoint (ignored by OfflineLoop).
WORKER_STREAMS = "worker_streams"


class DataParallelOfflineLoop:
    """Drop-in for :class:`~toolkit.loops.offline.OfflineLoop` that trains on Ray Train workers.

    The driver holds no training state of its own: it ships the run's settings, the dataset
    (through Ray's object store) and, on resume, the checkpoint to the workers, waits for
    them, and finally loads the checkpoint rank 0 wrote into its own agent.
    """

    def __init__(
        self,
        agent: OfflineAgent,
        config: Any,
        settings: RunSettings,
        make_env: Callable[[], Any],
        run_dir: Path,
        device: torch.device,
        dataset: OfflineDataset,
        progress: bool = True,
    ) -> None:
        if settings.workers < 1:
            raise ToolkitError(f"Data-parallel training needs --workers of at least 1, got {settings.workers}.")
        self.agent, self.config, self.settings = agent, config, settings
        self.run_dir, self.device, self.dataset = run_dir, device, dataset
        self.show_progress = progress
        self._resume_state: dict[str, Any] | None = None

    @classmethod
    def from_session(cls, session: Any, run_dir: Path, progress: bool) -> DataParallelOfflineLoop:
        """The loop for a built session (how :mod:`toolkit.training` makes every loop)."""
        return cls(session.learner, session.config, session.settings, session.make_env, run_dir,
                   session.device, dataset=session.data, progress=progress)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint (of a data-parallel or a local run); the workers load it."""
        self._resume_state = state
        self.agent.load_state_dict(state["agent"])  # fails here, clearly, if it does not fit

    def run(self, total_steps: int) -> LoopResult:
        """Train on the workers until ``total_steps`` gradient steps; returns how it ended."""
        ray = init_ray(self.settings.address)
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        s = self.settings
        gpus = s.gpus_per_worker
        resources: dict[str, float] = {"CPU": 1.0, **({"GPU": gpus} if gpus > 0 else {})}
        require_resources(ray, {k: v * s.workers for k, v in resources.items()}, f"--workers {s.workers}")
        stop = ray.remote(num_cpus=0)(StopSignal).remote()
        job = {
            "settings": s.to_dict(),
            "run_dir": str(self.run_dir.resolve()),
            "total_steps": int(total_steps),
            "dataset": ray.put(self.dataset),
            "state": ray.put(_to_cpu(self._resume_state)) if self._resume_state is not None else None,
            "stop": stop,
        }
        if self.show_progress:
            from rich.console import Console

            Console(stderr=True).print(
                f"Training on {s.workers} Ray Train worker(s); rank 0 writes {self.run_dir / 'metrics.jsonl'}",
                highlight=False,
            )
        # Ray Train keeps its own bookkeeping under storage_path; nothing of it is needed after
        # the run (rank 0 writes the toolkit's checkpoint into the run directory), so it goes
        # to a temporary directory instead of ~/ray_results.
        with tempfile.TemporaryDirectory(prefix="toolkit-train-") as storage:
            trainer = TorchTrainer(
                _train_worker,
                train_loop_config=job,
                scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=gpus > 0, resources_per_worker=resources),
                torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
                run_config=RunConfig(name=f"{s.agent}-{self.run_dir.name}", storage_path=storage),
            )
            interrupted = _fit_stopping_on_ctrl_c(trainer, stop)
        state = load_checkpoint(self.run_dir / CHECKPOINT, device=self.device)
        self.agent.load_state_dict(state["agent"])
        counters = state["counters"]
        step = int(counters["step"])
        result = LoopResult(step, interrupted and step < total_steps, counters["last_return"])
        if hasattr(result, "return_source"):  # offline runs report their last evaluation's return
            result.return_source = OfflineLoop.return_source  # type: ignore[attr-defined]
        return result


class StopSignal:
    """A Ray actor the driver sets on Ctrl-C; rank 0 reads it, and tells the other workers."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def is_requested(self) -> bool:
        return self.requested


def _fit_stopping_on_ctrl_c(trainer: Any, stop: Any) -> bool:
    """``trainer.fit()``; the first Ctrl-C asks the workers to stop together at their next
    check, with a checkpoint, the second stops at once. Returns whether Ctrl-C was pressed.

    ``fit`` runs in a thread: there Ray Train installs no SIGINT handler of its own (which
    would abort the workers without a checkpoint), and this thread keeps handling signals."""
    failure: list[BaseException] = []
    pressed = False

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:
            failure.append(exc)

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal pressed
        if pressed:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        pressed = True
        stop.request.remote()

    thread = threading.Thread(target=fit, name="toolkit-ray-train-fit", daemon=True)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    if failure:  # Ray wraps the worker's exception; report its first line
        raise ToolkitError(f"Data-parallel training failed on a Ray worker: {_reason(failure[0])}") from None
    return pressed


def _reason(exc: BaseException) -> str:
    """The innermost error's first line: what went wrong on the worker, not Ray's wrapping."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def _to_cpu(value: Any) -> Any:
    """A checkpoint with every tensor on the CPU, so any worker (CPU or GPU) can load it."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


# --- inside a Ray Train worker ----------------------------------------------------------------


def _train_worker(job: dict[str, Any]) -> None:
    """The body of every Ray Train worker: build the agent, synchronise, train."""
    import ray
    import ray.train
    import ray.train.torch

    from toolkit.session import build_session

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    settings = RunSettings(**job["settings"])
    settings.device = str(device)
    session = build_session(settings)
    # Ranks other than 0 write nothing: they get a scratch run directory for the base loop's
    # logger and never log, evaluate or save (checkpoints are still taken together, because
    # every worker's random streams go into rank 0's checkpoint).
    scratch = tempfile.TemporaryDirectory(prefix="toolkit-worker-") if rank else None
    run_dir = Path(job["run_dir"]) if rank == 0 else Path(scratch.name)  # type: ignore[union-attr]
    loop = WorkerLoop(rank, world, session.agent, session.config, settings, session.make_env,
                      run_dir, session.device, ray.get(job["dataset"]))
    loop.stop_signal = job["stop"]
    if job["state"] is not None:
        loop.load_state_dict(ray.get(job["state"]))
    loop.synchronise()
    try:
        loop.run(job["total_steps"])
    finally:
        if scratch is not None:
            scratch.cleanup()


def checkpointed_modules(agent: Any) -> list[nn.Module]:
    """The torch modules among an agent's ``checkpointed`` objects."""
    return [obj for obj in agent.checkpointed.values() if isinstance(obj, nn.Module)]


def _unique(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def trainable_parameters(agent: Any) -> list[nn.Parameter]:
    """Every parameter with a gradient in the agent's checkpointed modules, each once."""
    return _unique(p for m in checkpointed_modules(agent) for p in m.parameters() if p.requires_grad)


def module_tensors(agent: Any) -> list[torch.Tensor]:
    """Parameters and buffers of the agent's checkpointed modules, each once."""
    return _unique(t for m in checkpointed_modules(agent) for t in (*m.parameters(), *m.buffers()))


class GradientAverager:
    """Averages the gradients of ``params`` over the process group at the end of every backward
    pass, in one all-reduce, as DDP does, but without wrapping (or knowing) the agent's modules.

    A post-accumulate-grad hook marks each parameter whose gradient the pass produced; the first
    mark queues a callback that the autograd engine runs when the pass is over, which flattens
    the marked gradients (in the fixed order of ``params``), all-reduces them and divides by the
    world size. The same code on same-shaped batches marks the same parameters on every worker.
    """

    def __init__(self, params: list[nn.Parameter], world: int) -> None:
        self.params, self.world = params, world
        self._marked: set[int] = set()
        for param in params:
            param.register_post_accumulate_grad_hook(self._mark)

    def _mark(self, param: torch.Tensor) -> None:
        if not self._marked:
            torch.autograd.Variable._execution_engine.queue_callback(self._average)
        self._marked.add(id(param))

    def _average(self) -> None:
        import torch.distributed as dist

        grads = [p.grad for p in self.params if id(p) in self._marked and p.grad is not None]
        self._marked.clear()
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # gloo has no AVG
        flat.div_(self.world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


class WorkerLoop(OfflineLoop):
    """:class:`OfflineLoop` on one of ``world`` workers, with gradients averaged over all."""

    def __init__(self, rank: int, world: int, agent: OfflineAgent, config: Any, settings: RunSettings,
                 make_env: Callable[[], Any], run_dir: Path, device: torch.device, dataset: OfflineDataset) -> None:
        if rank:  # only rank 0 logs and evaluates; checkpoints are collective (see save)
            settings = replace(settings, log_every=0, eval_every=0)
        super().__init__(agent, config, settings, make_env, run_dir, device, dataset, progress=False)
        self.rank, self.world = rank, world
        #: The driver's :class:`StopSignal` actor (read by rank 0), and its pending answer.
        self.stop_signal: Any = None
        self._stop_answer: Any = None
        # Rank 0 keeps the run's own streams, so one worker reproduces the local loop exactly.
        self._reseed(settings.seed + rank)

    def _reseed(self, seed: int) -> None:
        if self.rank:
            self.sampler.generator.manual_seed(seed)
            torch.manual_seed(seed)

    # --- synchronisation ----------------------------------------------------------------------

    def synchronise(self) -> None:
        """Start every replica from rank 0's tensors and average gradients from now on."""
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in module_tensors(self.agent):
                dist.broadcast(tensor.data, src=0)
        GradientAverager(trainable_parameters(self.agent), self.world)

    def _gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    # --- checkpoints: collective, written by rank 0 -------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        own = {"sampler": self.sampler.state_dict(), "torch": torch.get_rng_state()}
        return {**super().extra_state(), WORKER_STREAMS: self._gather(_to_cpu(own))}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        streams = state.get(WORKER_STREAMS) or []
        if self.rank < len(streams):
            self.sampler.load_state_dict(streams[self.rank]["sampler"])
            torch.set_rng_state(streams[self.rank]["torch"].cpu())
        else:  # a local checkpoint, or more workers than before: fresh streams for this rank
            self._reseed(self.settings.seed + self.rank + 7919 * self.step)

    def save(self) -> None:
        state = self.state_dict()  # every rank: the random streams are gathered
        if self.rank == 0:  # through the trainer's writer: one sentence on a file-system error
            self._write(self.run_dir / CHECKPOINT, lambda: state, "checkpoint")

    # --- the run ------------------------------------------------------------------------------

    def after_steps(self, previous_step: int) -> None:
        super().after_steps(previous_step)
        if self.step % STOP_CHECK_EVERY == 0:
            self._check_stop()

    def _check_stop(self) -> None:
        """Every worker learns whether to stop at this same step (rank 0 asks the driver's
        signal without waiting for the answer, and broadcasts what it knows)."""
        import ray
        import torch.distributed as dist

        flag = torch.zeros(1, device=self.device)
        if self.rank == 0 and self.stop_signal is not None:
            if self._stop_answer is None:
                self._stop_answer = self.stop_signal.is_requested.remote()
            ready, _ = ray.wait([self._stop_answer], timeout=0)
            if ready:
                flag.fill_(float(ray.get(ready[0])))
                self._stop_answer = None
        dist.broadcast(flag, src=0)
        if flag.item():
            self._stop_requested = True

    def train_until(self, total_steps: int, bar: TrainingProgress) -> None:
        super().train_until(total_steps, bar)
        self._record_agreement()

    def _record_agreement(self) -> None:
        """Log how far the replicas' parameters drifted apart (0.0 when all is well)."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in trainable_parameters(self.agent)])
        replicas = self._gather(flat)
        if self.rank == 0:
            assert self.logger is not None
            difference = max(float((r - flat).abs().max()) for r in replicas)
            self.logger.log(self.step, "data_parallel", {
                "workers": self.world, "effective_batch_size": self.world * self.batch_size,
                "max_parameter_difference": difference,
            })
