"""State that survives a checkpoint, declared once: the base of agents and models."""

from __future__ import annotations

from typing import Any

import torch


class Checkpointed:
    """Everything a learner puts in :attr:`checkpointed` (modules, optimisers, tensors) is
    saved by :meth:`state_dict` and restored by :meth:`load_state_dict`; nothing else is.

    The state is handed out as the objects' own ``state_dict()`` (no copy): the framework
    writes it to a file straight away. Copy it before loading it into another live learner
    in the same process, or the two would share optimiser moments.
    """

    def __init__(self) -> None:
        self.checkpointed: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as tensors and plain Python values."""
        out: dict[str, Any] = {}
        for name, obj in self.checkpointed.items():
            out[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj.detach().clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = set(self.checkpointed) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)}")
        for name, obj in self.checkpointed.items():
            if hasattr(obj, "load_state_dict"):
                obj.load_state_dict(state[name])
            else:
                with torch.no_grad():
                    obj.copy_(state[name])

    def prunable_modules(self) -> dict[str, torch.nn.Module]:
        """The networks `toolkit prune` may sparsify, by their key in :attr:`checkpointed`.

        By default every module except target-network copies (keys containing ``target``),
        which suits models. An agent overrides it to name its policy alone (what acts), since
        pruning is judged by evaluation return and critics need not be small; see
        ``docs/pruning.md``.
        """
        return {
            name: obj for name, obj in self.checkpointed.items()
            if isinstance(obj, torch.nn.Module) and "target" not in name
        }
