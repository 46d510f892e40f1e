"""The contract between the framework and a model plugin (autoencoders, VAEs, classifiers, ...).

A model learns from a dataset of examples (images or vectors), one gradient step per
:meth:`Model.update`. Like an agent, it never reads files, writes logs, seeds, parses the
command line or talks to Ray: the model loop (:mod:`toolkit.loops.model`) samples minibatches
on the device, counts steps, logs, evaluates and checkpoints, once for every model.

What the framework can show about a model depends on what it can do, and that is said by the
base class it derives from:

* :class:`Model`: trains; :meth:`Model.evaluate` gives per-example test metrics.
* :class:`AutoencoderModel`: also ``encode`` / ``decode``: reconstructions, linear probes of
  the latents, latent traversals and (for 2-D latents) the latent scatter.
* :class:`GenerativeModel`: also ``sample`` from the prior and an importance-sampled
  negative log-likelihood: samples and NLL in the evaluation table.
* :class:`ClassifierModel`: ``log_probs`` over labelled classes: test accuracy, the
  confusion matrix and the parameter count in the evaluation.

See ``docs/plugins.md`` ("Writing a model") and ``docs/architecture.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import torch

from toolkit.checkpointing import Checkpointed


@dataclass(frozen=True)
class DataSpec:
    """What a model factory learns about its data before it builds anything.

    ``shape`` is one example's shape: ``(C, H, W)`` for images, ``(D,)`` for vectors.
    Examples reach the model as float32 in ``[0, 1]`` (pixels divided by 255).
    """

    shape: tuple[int, ...]
    #: Number of classes when the data is labelled, else None.
    num_classes: int | None = None
    #: Training examples of each class (``len == num_classes``) for labelled data, else None:
    #: frequency-aware output heads (Huffman trees, adaptive softmax cut-offs) are built from it.
    class_counts: tuple[int, ...] | None = None
    #: The source the data came from (``digits``, ``mnist-5k``, a file), for messages.
    source: str = ""

    @property
    def is_image(self) -> bool:
        """True for ``(C, H, W)`` data, which convolutional encoders can take."""
        return len(self.shape) == 3


class ExampleBatch(NamedTuple):
    """A minibatch of examples on the learner's device.

    ``x`` is float32 in ``[0, 1]`` of shape ``[B, *DataSpec.shape]``; ``y`` holds int64 class
    labels ``[B]`` when the dataset has labels, else None.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None


class Model(Checkpointed, ABC):
    """Base class of every model.

    Put everything that must survive a checkpoint (modules, optimisers, tensors, schedules)
    in :attr:`checkpointed`; :meth:`state_dict` and :meth:`load_state_dict` then come for free.
    """

    @abstractmethod
    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """One gradient step. Returns scalar metrics as tensors (read only when logged)."""

    @abstractmethod
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """Per-example test metrics, each a ``[B]`` tensor, without changing any weight.

        The framework averages them over the test set. Use ``recon_error`` for the mean
        squared reconstruction error per input value (every autoencoder reports it), and for
        VAEs ``elbo``, ``recon`` (the expected log-likelihood term) and ``kl``, in nats per example.
        """

    def train_mode(self, training: bool) -> None:
        """Switch every checkpointed module between training and evaluation behaviour."""
        for obj in self.checkpointed.values():
            if isinstance(obj, torch.nn.Module):
                obj.train(training)


class AutoencoderModel(Model):
    """A model with a latent code: ``encode`` maps examples to latents, ``decode`` maps back."""

    #: Size of the latent vector that :meth:`encode` returns.
    latent_dim: int

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latents ``[B, latent_dim]`` (a VAE's posterior mean) for a batch in ``[0, 1]``."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Examples in ``[0, 1]`` (a likelihood's mean) for latents ``[B, latent_dim]``."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``; models whose input is corrupted or masked first override it."""
        return self.decode(self.encode(x))


class GenerativeModel(AutoencoderModel):
    """An autoencoder with a prior over latents: it samples and has a likelihood."""

    @abstractmethod
    def sample(self, n: int) -> torch.Tensor:
        """``n`` examples in ``[0, 1]`` decoded from latents drawn from the prior."""

    @abstractmethod
    def importance_nll(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``-log p(x)`` per example ``[B]`` estimated with ``k`` importance samples from the
        posterior (Burda et al. 2016, IWAE bound), in nats."""


class ClassifierModel(Model):
    """A model that predicts a class for each example (it trains on labelled data only).

    Its :meth:`Model.evaluate` reports, per example, ``accuracy`` (1.0 when the most likely
    class is right, else 0.0) and ``loss`` (the negative log-likelihood of the true class, in
    nats), which the evaluation table, sweeps and ``toolkit prune`` read.
    """

    #: Number of classes the model chooses between.
    num_classes: int

    @abstractmethod
    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, num_classes]`` of every class for a batch in ``[0, 1]``;
        each row's ``exp`` sums to one, whatever the output head."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class ``[B]`` (int64) of each example."""
        return self.log_probs(x).argmax(dim=1)
