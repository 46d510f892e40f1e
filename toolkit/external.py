"""The contract of an agent whose training algorithm lives in another library.

Bridges (``plugins/toolkit_bridges``: stable-baselines3 and RLlib) wrap an algorithm that
steps its own environments and runs its own updates. The toolkit cannot hand such an agent
batches, so its plugins are of kind ``"external"``: :class:`ExternalLoop`
(:mod:`toolkit.loops.external`) asks the library to train in chunks that end where the run
logs, evaluates or checkpoints, and everything around the library stays the toolkit's own:
the run directory, ``config.yaml``, ``metrics.jsonl`` (episode returns as ``episode`` rows,
deterministic evaluations as ``eval`` rows, the library's training statistics as ``train``
rows), TensorBoard, the evaluation protocol of :mod:`toolkit.evaluation` (it calls
:meth:`ExternalAgent.act`), ``resume``, ``sweep`` and ``plot``. Checkpoints are written in
the library's own format inside ``checkpoints/`` (see ``docs/bridges.md``).

The life cycle of an :class:`ExternalAgent`:

1. the spec's factory builds it from its config and the env's spaces, as every agent;
2. training: :meth:`ExternalAgent.start` with an :class:`EnvContext` (how to make the run's
   environments, its seed and Ray options) builds the library's algorithm; a resumed run
   calls :meth:`ExternalAgent.load_native` first and then :meth:`ExternalAgent.start`, which
   then continues the restored algorithm;
3. :meth:`ExternalAgent.learn` trains a number of env steps and reports what happened;
4. :meth:`ExternalAgent.save_native` writes the library's checkpoint into a directory;
5. evaluation, export and ``toolkit eval`` call :meth:`ExternalAgent.load_native` alone and
   then :meth:`ExternalAgent.act` (no environments are made for training);
6. :meth:`ExternalAgent.close` frees what the library holds (Ray actors, env processes).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolkit.agent import Agent, Batch, Rollout
from toolkit.errors import ToolkitError
from toolkit.registry import library_version


@dataclass(frozen=True)
class EnvContext:
    """What a bridge needs to make the run's environments, in its own processes too.

    ``make_env`` builds one environment exactly as the toolkit's own loops do (env plugins
    registered, ``--env-kwargs``, ``--pixels`` and the time limit applied); it is picklable
    (a :func:`functools.partial` of :func:`toolkit.envs.make_env`), so RLlib's env runners on
    other nodes can call it. The Ray fields are the run's ``--workers``, ``--envs-per-worker``,
    ``--gpus-per-worker`` and ``--address``. ``total_steps`` is the env steps the run trains to
    (a resumed run's new target), for libraries whose schedules (learning-rate decay, DQN's
    exploration fraction) are fractions of the whole budget.
    """

    env_id: str
    make_env: Callable[[], Any]
    seed: int
    device: torch.device
    total_steps: int
    workers: int = 0
    envs_per_worker: int = 1
    gpus_per_worker: float = 0.0
    address: str | None = None


@dataclass
class LearnReport:
    """What one call of :meth:`ExternalAgent.learn` did.

    ``steps`` is the number of env steps the library actually took (it may overshoot the
    request: RLlib samples whole batches). ``episodes`` holds ``(return, length, offset)`` of
    every training episode that finished, ``offset`` being the env steps into this call at
    which it ended (``1 <= offset <= steps``). ``metrics`` are the library's latest training
    statistics under short names (``actor_loss``, ``entropy``...), plain floats.
    """

    steps: int
    episodes: list[tuple[float, int, int]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


class ExternalAgent(Agent):
    """Base class of an agent trained by another library (kind ``"external"``).

    Subclasses set :attr:`library` to the distribution name of that library (its installed
    version is recorded in every run's checkpoint) and implement the abstract methods.
    :meth:`update` is never called: the library updates itself inside :meth:`learn`.
    """

    #: The distribution the algorithm comes from, e.g. ``"stable-baselines3"``.
    library: str = ""

    @abstractmethod
    def start(self, context: EnvContext) -> None:
        """Build the library's algorithm on the run's environments (or, after
        :meth:`load_native`, attach the restored one to them) so that :meth:`learn` can run."""

    @abstractmethod
    def learn(self, steps: int) -> LearnReport:
        """Train about ``steps`` more env steps and say what happened (see :class:`LearnReport`)."""

    @abstractmethod
    def save_native(self, directory: Path, resumable: bool = True) -> None:
        """Write everything needed to continue training into ``directory`` (which exists and is
        empty), in the library's own format: policy, optimiser, replay buffer, counters. With
        ``resumable=False`` (``checkpoints/best.pt``'s, which only evaluation reads) what only
        continuing needs, such as a replay buffer, may be left out."""

    @abstractmethod
    def load_native(self, directory: Path) -> None:
        """Restore what :meth:`save_native` wrote. Before :meth:`start` this must be enough to
        :meth:`act` (evaluation and export load nothing else)."""

    def close(self) -> None:
        """Release the library's resources (env processes, Ray actors). Default: nothing."""

    def update(self, batch: Batch | Rollout) -> dict[str, torch.Tensor]:
        raise ToolkitError(f"{type(self).__name__} is trained by {self.library} inside learn(); it takes no batches.")

    def state_dict(self) -> dict[str, Any]:
        """Only the library's name and version: the weights are in the native checkpoint,
        which :class:`toolkit.loops.external.ExternalLoop` writes beside the toolkit's own."""
        return {"library": self.library, "version": library_version(self.library)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore from the toolkit's checkpoint (see :func:`load_external_state`)."""


#: Where a checkpoint's native part lives, relative to the run directory: ``checkpoints/native/<name>``.
NATIVE_FOLDER = Path("checkpoints") / "native"


def load_external_state(agent: ExternalAgent, state: dict[str, Any], run_dir: Path) -> None:
    """Load the native checkpoint that a toolkit checkpoint's ``agent`` entry points to."""
    name = state.get("native")
    if not name:
        raise ToolkitError(f"The checkpoint of {run_dir} names no native {agent.library} checkpoint.")
    directory = run_dir / NATIVE_FOLDER / name
    if not directory.is_dir():
        raise ToolkitError(f"{run_dir}'s checkpoint names {directory}, which is missing.")
    agent.load_native(directory)


def refuse_external(agent: Any, name: str, command: str) -> None:
    """One sentence for commands that need the toolkit's own networks (``export``, ``prune``)
    when ``agent`` (called ``name``) is trained by another library."""
    if isinstance(agent, ExternalAgent):
        raise ToolkitError(
            f"'{name}' is trained by {agent.library}, whose weights live in its own checkpoint under "
            f"{NATIVE_FOLDER}/; `toolkit {command}` works on the toolkit's own agents."
        )
