"""The model loop: gradient steps on minibatches of a dataset's training split.

For every model plugin (autoencoders, VAEs, classifiers): a "step" is one gradient step on a
minibatch drawn at random, on the device, from the training split. Every ``eval_every``
steps the test-split metrics are logged as ``eval`` and a small reconstruction grid goes to
TensorBoard (people look at generative models, they do not read them). Counters, logging,
checkpoints with exact resume, Ctrl-C and the progress bar come from
:class:`~toolkit.trainer.Trainer`, as for agents.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from toolkit.data.images import ImageDataset
from toolkit.model import AutoencoderModel, ExampleBatch, Model
from toolkit.runs import RunSettings
from toolkit.trainer import GradientStepTrainer

if TYPE_CHECKING:
    from toolkit.session import Session

#: Test examples measured at each periodic evaluation (the whole split at `toolkit eval`).
EVAL_EXAMPLES = 1_000
#: Test examples shown in the reconstruction grid logged at each evaluation.
GRID_EXAMPLES = 8


class MinibatchSampler:
    """Uniform minibatches from a split held on the device once, drawn by its own generator
    (part of the checkpoint, so a resumed run draws the same batches as an unbroken one)."""

    def __init__(self, data: ImageDataset, device: torch.device, seed: int) -> None:
        # Pixels stay uint8 on the device (4x less memory) and are scaled per batch.
        self.x = torch.as_tensor(data.x_train, device=device)
        self.y = None if data.y_train is None else torch.as_tensor(data.y_train, device=device, dtype=torch.int64)
        self.scale = 1.0 / 255.0 if self.x.dtype == torch.uint8 else 1.0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def sample(self, batch_size: int) -> ExampleBatch:
        index = torch.randint(len(self.x), (batch_size,), device=self.x.device, generator=self.generator)
        x = self.x[index].float().mul_(self.scale)
        return ExampleBatch(x, None if self.y is None else self.y[index])

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())


class ModelLoop(GradientStepTrainer):
    """Trains one model on one dataset; evaluates it on the test split."""

    def __init__(self, model: Model, config: Any, settings: RunSettings, data: ImageDataset, run_dir: Path,
                 device: torch.device, progress: bool = True) -> None:
        super().__init__(model, settings, run_dir, device, progress)
        self.model, self.config, self.data = model, config, data
        self.batch_size = int(config.batch_size)
        self.sampler = MinibatchSampler(data, device, seed=settings.seed)
        self._grid_inputs = torch.as_tensor(data.to_float(data.x_test[:GRID_EXAMPLES]), device=device)

    @classmethod
    def from_session(cls, session: Session, run_dir: Path, progress: bool) -> ModelLoop:
        """The loop for a built session (how :mod:`toolkit.training` makes every loop)."""
        return cls(session.learner, session.config, session.settings, session.data, run_dir, session.device,
                   progress=progress)

    def extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def evaluate(self) -> None:
        """Test-split metrics as ``eval``, and a reconstruction grid in TensorBoard; the best
        score so far (:func:`toolkit.model_eval.model_score`) keeps the model in ``checkpoints/best.pt``."""
        from toolkit.model_eval import model_score, seeded, test_metrics

        assert self.logger is not None
        # A sampled metric (a VAE's ELBO) draws from its own seeded stream, so evaluating
        # more or less often never changes what training draws.
        with seeded(self.settings.seed + 1_000_000, self.device):
            metrics = test_metrics(self.model, self.data, self.device, limit=EVAL_EXAMPLES)
        self.record_evaluation(metrics)
        self.keep_best(model_score(metrics)[1])
        if isinstance(self.model, AutoencoderModel) and self.logger.tb is not None:
            from toolkit.figures import reconstruction_grid

            grid = reconstruction_grid(self.model, self._grid_inputs)
            self.logger.tb.add_image("eval/reconstructions", grid, self.step, dataformats="HWC")

    def gradient_step(self) -> dict[str, torch.Tensor]:
        return self.model.update(self.sampler.sample(self.batch_size))

    def note(self) -> str:
        """The latest logged loss and test metric for the bar (no per-step device read)."""
        parts = [super().note()]
        for key in ("elbo", "accuracy", "recon_error"):
            if key in self.latest_eval:
                parts.append(f"test {key} {self.latest_eval[key]:.4g}")
                break
        return "  ".join(p for p in parts if p)
