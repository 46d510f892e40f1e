"""Magnitude pruning of a learner's weights, with masks that stay put while it trains on.

What is pruned: the weights (not biases) of every ``nn.Linear`` and convolution inside the
learner's :meth:`~toolkit.checkpointing.Checkpointed.prunable_modules` (for an agent its
policy network, for a model all its networks). Each such layer is a *prunable layer*,
named by its qualified module name (``conv1``, ``head.linear``, ``actor.trunk.0``).

How: L1 magnitude pruning (Han et al. 2015, "Learning both Weights and Connections for
Efficient Neural Networks"): the smallest-magnitude fraction of a layer's weights (or of all
layers' weights together, ``global``) is set to zero. The masks are computed with
``torch.nn.utils.prune`` and then made permanent (``prune.remove``), so the pruned network
is a plain network with zeros: its parameters, optimisers, target-network copies and
compiled code see the same tensors as before. The masks are kept in a :class:`PruningMasks`
object that the learner checkpoints like any other state, and re-applied after every
optimiser step, so fine-tuning (and any later `toolkit resume`) never revives a pruned
weight. See ``docs/pruning.md``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from toolkit.checkpointing import Checkpointed
from toolkit.errors import ToolkitError

#: Layer types whose ``weight`` is pruned.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: The key a learner's masks have in its ``checkpointed`` state.
MASKS_KEY = "pruning_masks"
#: Sparsities of the per-layer sensitivity scan.
SCAN_SPARSITIES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------- finding layers


def prunable_layers(learner: Checkpointed) -> dict[str, nn.Module]:
    """Every prunable layer of ``learner`` by name, in module order.

    Names are qualified module names inside the learner's prunable modules; when more than
    one of those modules holds layers, names start with the module's key (``actor_torso.0``,
    ``policy_head``).
    """
    found: dict[str, list[tuple[str, nn.Module]]] = {}
    for key, module in learner.prunable_modules().items():
        inside = [(name, layer) for name, layer in module.named_modules()
                  if isinstance(layer, PRUNABLE_TYPES) and isinstance(getattr(layer, "weight", None), torch.Tensor)]
        if inside:
            found[key] = inside
    layers: dict[str, nn.Module] = {}
    for key, inside in found.items():
        for name, layer in inside:
            full = name if len(found) == 1 and name else (f"{key}.{name}" if name else key)
            layers[full] = layer
    return layers


def check_layer_names(names: list[str], layers: Mapping[str, nn.Module], where: str) -> None:
    """Refuse a layer name that is not prunable, listing the ones that are."""
    for name in names:
        if name not in layers:
            raise ToolkitError(f"{where} has no prunable layer '{name}'; its prunable layers are: {', '.join(layers)}.")


def check_sparsity(value: float, what: str = "--sparsity") -> float:
    """A sparsity must lie in [0, 1): pruning every weight of a layer leaves nothing to learn."""
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise ToolkitError(f"{what} must lie in [0, 1), got {value}.")
    return value


# --------------------------------------------------------------------------- counting


def weight_sparsity(layer: nn.Module) -> float:
    """Fraction of the layer's weights that are exactly zero."""
    weight = layer.weight.detach()
    return float((weight == 0).sum()) / max(1, weight.numel())


def count_weights(layers: Mapping[str, nn.Module]) -> tuple[int, int]:
    """``(weights, non-zero weights)`` over the layers' weight tensors."""
    total = sum(layer.weight.numel() for layer in layers.values())
    nonzero = sum(int((layer.weight.detach() != 0).sum()) for layer in layers.values())
    return total, nonzero


def serialized_sizes(learner: Checkpointed) -> tuple[int, int]:
    """Bytes of the prunable modules' weights saved with ``torch.save``: dense, and sparse.

    The sparse file stores each pruned weight tensor as a bit mask (1 bit per weight) plus
    its non-zero values, the usual compressed layout of unstructured sparsity; every other
    tensor (biases, norms, buffers) is stored as it is in both.
    """
    layers = {id(layer.weight): layer for layer in prunable_layers(learner).values()}
    dense: dict[str, torch.Tensor] = {}
    sparse: dict[str, Any] = {}
    pruned_ids = {pid for pid, layer in layers.items() if weight_sparsity(layer) > 0}
    for key, module in learner.prunable_modules().items():
        for name, tensor in module.state_dict(keep_vars=True).items():
            full, value = f"{key}.{name}", tensor.detach().cpu()
            dense[full] = value
            if id(tensor) in pruned_ids:
                mask = (value != 0).flatten().numpy()
                sparse[full] = {"shape": list(value.shape), "bits": torch.from_numpy(np.packbits(mask)),
                                "values": value.flatten()[torch.from_numpy(mask)]}
            else:
                sparse[full] = value
    return _saved_bytes(dense), _saved_bytes(sparse)


def _saved_bytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


# --------------------------------------------------------------------------- masks


class PruningMasks:
    """The masks of a pruned learner: which weights are held at zero.

    Lives in the learner's ``checkpointed`` under :data:`MASKS_KEY`, so checkpoints carry it
    and a resumed or fine-tuned run keeps its sparsity. After every step of any of the
    learner's optimisers the masked weights are zeroed again (Adam's moments would otherwise
    move them off zero).
    """

    def __init__(self, learner: Checkpointed) -> None:
        self.learner = learner
        self.masks: dict[str, torch.Tensor] = {}
        #: The masked layers, found once: :meth:`apply` runs after every optimiser step.
        self._layers: dict[str, nn.Module] = {}
        self._hooked: set[int] = set()

    @classmethod
    def attach(cls, learner: Checkpointed) -> PruningMasks:
        """The learner's masks, created empty (to be filled by pruning or a checkpoint) if absent."""
        existing = learner.checkpointed.get(MASKS_KEY)
        if isinstance(existing, PruningMasks):
            return existing
        masks = cls(learner)
        learner.checkpointed[MASKS_KEY] = masks
        return masks

    def add(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Hold each named layer's weights at zero wherever its mask is false, from now on; a
        layer masked before keeps its old zeros too."""
        combined = dict(self.masks)
        for name, mask in masks.items():
            old = combined.get(name)
            combined[name] = mask.bool() if old is None else mask.bool() & old.to(mask.device)
        self._hold(combined)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight."""
        for name, mask in self.masks.items():
            self._layers[name].weight.mul_(mask)

    def _hold(self, masks: Mapping[str, torch.Tensor]) -> None:
        layers = prunable_layers(self.learner)
        check_layer_names(list(masks), layers, "This learner")
        self._layers = {name: layers[name] for name in masks}
        self.masks = {name: mask.to(device=layers[name].weight.device, dtype=torch.bool)
                      for name, mask in masks.items()}
        self.apply()
        for optimizer in _optimizers(self.learner):
            if id(optimizer) not in self._hooked:
                optimizer.register_step_post_hook(lambda *_: self.apply())
                self._hooked.add(id(optimizer))

    def state_dict(self) -> dict[str, Any]:
        """The masks by layer name (bool tensors)."""
        return {"masks": dict(self.masks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the masks and hold them from now on."""
        self._hold(state["masks"])


def _optimizers(learner: Checkpointed) -> Iterator[torch.optim.Optimizer]:
    """Every optimiser in the learner's checkpointed state, through wrapped learners."""
    for obj in learner.checkpointed.values():
        if isinstance(obj, torch.optim.Optimizer):
            yield obj
        elif isinstance(obj, Checkpointed):
            yield from _optimizers(obj)


# --------------------------------------------------------------------------- pruning


def l1_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of ``weight`` with the ``round(sparsity * n)`` smallest magnitudes dropped
    (``torch.nn.utils.prune``'s L1 criterion)."""
    method = prune.L1Unstructured(amount=float(sparsity))
    return method.compute_mask(weight.detach(), default_mask=torch.ones_like(weight)).bool()


def prune_per_layer(learner: Checkpointed, sparsities: Mapping[str, float]) -> PruningMasks:
    """Prune each named layer to its own sparsity (L1 magnitude, within the layer)."""
    layers = prunable_layers(learner)
    check_layer_names(list(sparsities), layers, "The run's learner")
    for name, sparsity in sparsities.items():  # all checked before any layer changes
        check_sparsity(sparsity, f"The sparsity of {name}")
    masks = PruningMasks.attach(learner)
    new: dict[str, torch.Tensor] = {}
    for name, sparsity in sparsities.items():
        layer = layers[name]
        order = list(layer._parameters)
        prune.l1_unstructured(layer, "weight", amount=float(sparsity))
        new[name] = _made_permanent(layer, order)
    masks.add(new)
    return masks


def prune_global(learner: Checkpointed, sparsity: float) -> PruningMasks:
    """Prune the ``sparsity`` fraction of smallest-magnitude weights over all prunable layers
    together (a layer whose weights are small loses more of them)."""
    check_sparsity(sparsity)
    layers = prunable_layers(learner)
    if not layers:
        raise ToolkitError("The learner has no Linear or convolution weights to prune.")
    orders = {name: list(layer._parameters) for name, layer in layers.items()}
    prune.global_unstructured([(layer, "weight") for layer in layers.values()],
                              pruning_method=prune.L1Unstructured, amount=float(sparsity))
    masks = PruningMasks.attach(learner)
    masks.add({name: _made_permanent(layer, orders[name]) for name, layer in layers.items()})
    return masks


def _made_permanent(layer: nn.Module, order: list[str]) -> torch.Tensor:
    """Undo torch's re-parametrisation (``weight_orig`` times ``weight_mask``), leaving the
    original Parameter object holding the zeros, in its original place among the layer's
    parameters: code that pairs ``parameters()`` of two networks (a target network's Polyak
    update) must keep seeing weights next to weights. Returns the mask."""
    mask = layer.weight_mask.detach().clone()
    prune.remove(layer, "weight")
    params = dict(layer._parameters)
    layer._parameters.clear()
    layer._parameters.update((key, params[key]) for key in order)
    return mask


def choose_sparsities(scan: Mapping[str, Mapping[float, float]], dense_metric: float, max_drop: float,
                      sizes: Mapping[str, int]) -> dict[str, float]:
    """Per-layer sparsities from a sensitivity scan whose predicted metric drop stays within
    ``max_drop``.

    The drop of pruning several layers is predicted as the sum of the drops each caused alone
    in the scan (the additive model of the sensitivity analysis in Han et al. 2015, Fig. 6;
    an estimate, so the report measures the real one). Greedily, the move that removes the
    most weights per unit of predicted drop is taken while the total stays within
    ``max_drop``; a layer may jump over scan points whose noise made them look worse.
    """
    chosen = {name: 0.0 for name in scan}

    def drop(name: str, s: float) -> float:
        return 0.0 if s == 0.0 else max(0.0, dense_metric - scan[name][s])

    total = 0.0
    while True:
        best: tuple[float, str, float, float] | None = None
        for name, points in scan.items():
            for s in points:
                if s <= chosen[name]:
                    continue
                added = drop(name, s) - drop(name, chosen[name])
                if total + added > max_drop + 1e-12:
                    continue
                removed = (s - chosen[name]) * sizes[name]
                value = removed / (max(added, 0.0) + 1e-9)
                if best is None or value > best[0]:
                    best = (value, name, s, added)
        if best is None:
            return {name: s for name, s in chosen.items() if s > 0}
        _, name, s, added = best
        chosen[name] = s
        total += added
