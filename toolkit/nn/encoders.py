"""One observation encoder interface for every agent: :func:`make_encoder`.

An agent never looks at raw observations itself: it asks :func:`make_encoder` for an
:class:`ObservationEncoder` named by its config (``--set encoder=...``) and reads the features
it returns. Every encoder takes observations exactly as the environment and the replay buffer
hand them over (``uint8`` pixels or float vectors, with any leading batch dimensions) and
returns ``[..., out_dim]`` float features:

* ``mlp`` (:class:`FlattenEncoder`): the observation flattened, pixels scaled to [0, 1]. For
  vectors this is the identity, so an agent's maths on vector observations is unchanged; the
  agent's own MLP layers do the rest.
* ``nature`` (:class:`NatureEncoder`): the Nature-DQN torso (Mnih et al. 2015).
* ``impala`` (:class:`ImpalaEncoder`): the IMPALA residual torso (Espeholt et al. 2018).
* a run directory (:class:`PretrainedEncoder`): the encoder of a trained autoencoder model
  (``toolkit train ae|vae --dataset FRAMES``), applied to each stacked frame on its own.
* ``auto``: ``mlp`` for vector observations, ``nature`` for images (``impala`` for frames
  smaller than the 36x36 the Nature CNN needs).

Image observations are ``(C, H, W)`` or ``(H, W, C)`` (told apart by
:func:`toolkit.nn.conv.channels_last`); a stack of ``k`` frames of ``C`` channels each has
``C * k`` channels, frame after frame.

:func:`random_shift` is the image augmentation of DrQ (Kostrikov et al. 2020).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.configs import ENCODER_NAMES
from toolkit.errors import ToolkitError
from toolkit.nn.conv import ImageInput, ImpalaCNN, NatureCNN, channels_last

#: The named encoders; anything else given to :func:`make_encoder` is taken as a run directory.
ENCODERS = ENCODER_NAMES
#: The smallest frame side the Nature CNN takes: 8x8/4, 4x4/2 and 3x3/1 convolutions leave 1x1 of 36.
NATURE_MIN_SIDE = 36


class ObservationEncoder(nn.Module, ABC):
    """Raw observations ``[..., *obs_shape]`` -> features ``[..., out_dim]``.

    Subclasses implement :meth:`encode` on one flat batch ``[B, *obs_shape]``; :meth:`forward`
    folds any leading dimensions (an on-policy rollout's ``[T, N]``) into that batch and back.
    A frozen encoder (:meth:`freeze`) has no trainable parameters and stays in evaluation mode
    whatever its owner's ``train()`` says.
    """

    #: Which encoder this is: ``mlp``, ``nature``, ``impala`` or ``pretrained``.
    kind: str

    def __init__(self, obs_shape: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.out_dim = int(out_dim)
        #: Whether observations are images (3-D), as :func:`toolkit.envs.space_kind` decides.
        self.image = len(self.obs_shape) == 3
        #: For images, whether they are ``(H, W, C)`` (the layout :func:`random_shift` needs).
        self.channels_last = self.image and channels_last(self.obs_shape)
        self.trainable = True

    @property
    def convolutional(self) -> bool:
        """Whether the features come from a convolutional torso trained here (nature, impala)."""
        return self.kind in ("nature", "impala")

    @abstractmethod
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """``[B, *obs_shape]`` -> ``[B, out_dim]``."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[: obs.dim() - len(self.obs_shape)]
        features = self.encode(obs.reshape(-1, *self.obs_shape))
        return features.reshape(*lead, self.out_dim)

    def freeze(self) -> ObservationEncoder:
        """Stop training this encoder: no gradients for its parameters, evaluation mode for good."""
        self.trainable = False
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ObservationEncoder:
        # A frozen encoder's batch statistics or dropout must not change under a caller's train().
        return super().train(mode and self.trainable)


class FlattenEncoder(ObservationEncoder):
    """``mlp``: the observation flattened (pixels scaled to [0, 1] and moved channels-first first).

    Vectors, even byte-valued ones such as Atari RAM, are only cast to float32: for float
    vectors this is the identity, which keeps every agent's maths on vectors as it was.
    """

    kind = "mlp"

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        super().__init__(obs_shape, math.prod(int(d) for d in obs_shape))
        self.input = ImageInput(self.channels_last) if self.image else None

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.input(obs) if self.input is not None else obs.float()
        return x.flatten(1)


class NatureEncoder(ObservationEncoder):
    """``nature``: the Nature-DQN torso, :class:`~toolkit.nn.conv.NatureCNN` (Mnih et al. 2015),
    ``64 * 7 * 7`` features for 84x84 frames."""

    kind = "nature"

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        cnn = NatureCNN(obs_shape)
        super().__init__(obs_shape, cnn.out_dim)
        # NatureCNN's own attribute names, so DQN checkpoints written before this interface
        # existed (``q.encoder.conv.*``) still load.
        self.input, self.conv = cnn.input, cnn.conv

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.conv(self.input(obs))


class ImpalaEncoder(ObservationEncoder):
    """``impala``: the IMPALA residual torso, :class:`~toolkit.nn.conv.ImpalaCNN` (Espeholt et
    al. 2018): three conv + max-pool + two residual block stages of 16, 32 and 32 channels,
    then a linear layer to ``feature_dim`` features."""

    kind = "impala"

    def __init__(self, obs_shape: tuple[int, ...], feature_dim: int) -> None:
        super().__init__(obs_shape, feature_dim)
        self.cnn = ImpalaCNN(self.obs_shape, feature_dim)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.cnn(obs)


class PretrainedEncoder(ObservationEncoder):
    """The encoder of a trained autoencoder model, applied frame by frame.

    An observation of ``k`` stacked frames of the model's ``(C, H, W)`` examples is scaled to
    [0, 1], split into its ``k`` frames, each frame encoded by the model's ``encode``, and the
    ``k`` latent vectors concatenated: ``out_dim = k * latent_dim``. Encoding one frame at a
    time keeps the model's input what it was trained on, for any stack depth.

    The model's modules become this module's (so the agent's checkpoint holds them, fine-tuned
    or not). ``encode`` is written for evaluation and runs without gradients; to fine-tune,
    this calls the method underneath that decorator, on the same modules.
    """

    kind = "pretrained"

    def __init__(self, model: Any, obs_shape: tuple[int, ...], frame_shape: tuple[int, int, int]) -> None:
        frames = int(obs_shape[-1] if channels_last(obs_shape) else obs_shape[0]) // frame_shape[0]
        super().__init__(obs_shape, frames * int(model.latent_dim))
        self.frames, self.frame_shape = frames, tuple(int(d) for d in frame_shape)
        self.input = ImageInput(self.channels_last)
        self.model = model  # not a module: its decoder and optimiser stay out of the agent's state
        encoder = getattr(model, "encoder", None)
        if isinstance(encoder, nn.Module):
            self.network: nn.Module = encoder
        else:  # a third-party model without an ``encoder`` module: keep all of its modules
            self.network = nn.ModuleDict(
                {name: obj for name, obj in model.checkpointed.items() if isinstance(obj, nn.Module)}
            )
        self._encode = inspect.unwrap(type(model).encode)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.input(obs)
        frames = x.reshape(x.shape[0] * self.frames, *self.frame_shape)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            latents = self._encode(self.model, frames)
        return latents.reshape(x.shape[0], self.out_dim)


def make_encoder(
    choice: str,
    observation_space: Any,
    device: torch.device | str = "cpu",
    trainable: bool = True,
    feature_dim: int = 256,
) -> ObservationEncoder:
    """The encoder ``choice`` names for observations of ``observation_space``, on ``device``.

    ``choice`` is ``auto``, ``mlp``, ``nature``, ``impala`` (see the module docstring) or the
    directory of a trained autoencoder run. ``feature_dim`` is the width of IMPALA's last
    layer (the paper's 256); the other encoders' widths follow from the observation. With
    ``trainable=False`` the encoder is frozen (:meth:`ObservationEncoder.freeze`). Anything a
    user can get wrong raises :class:`~toolkit.errors.ToolkitError` with one sentence.
    """
    shape = tuple(int(d) for d in getattr(observation_space, "shape", None) or ())
    if not shape:
        raise ToolkitError(f"Encoders read Box observations (vectors or images); this environment observes {observation_space}.")
    image = len(shape) == 3
    side = min(shape[:2] if image and channels_last(shape) else shape[1:]) if image else 0
    if choice == "auto":
        # The Nature CNN's convolutions need 36 pixels a side; smaller frames (--pixels 32)
        # get the IMPALA torso, whose padded layers take any size.
        choice = ("nature" if side >= NATURE_MIN_SIDE else "impala") if image else "mlp"
    if choice in ("nature", "impala") and not image:
        raise ToolkitError(
            f"encoder={choice} needs image observations, but this environment observes vectors of shape {shape}; use encoder=mlp."
        )
    if choice == "nature" and side < NATURE_MIN_SIDE:
        raise ToolkitError(
            f"encoder=nature needs frames of at least {NATURE_MIN_SIDE}x{NATURE_MIN_SIDE} pixels, but this environment "
            f"observes {shape}; use encoder=impala, or larger frames."
        )
    if choice == "mlp":
        encoder: ObservationEncoder = FlattenEncoder(shape)
    elif choice == "nature":
        encoder = NatureEncoder(shape)
    elif choice == "impala":
        encoder = ImpalaEncoder(shape, feature_dim)
    else:
        encoder = _pretrained_encoder(Path(choice).expanduser(), shape, device)
    encoder = encoder.to(device)
    return encoder if trainable else encoder.freeze()


def _pretrained_encoder(run_dir: Path, obs_shape: tuple[int, ...], device: torch.device | str) -> PretrainedEncoder:
    """The encoder of the autoencoder model trained in ``run_dir``, checked against ``obs_shape``."""
    from toolkit.model import AutoencoderModel
    from toolkit.session import open_trained_run

    if len(obs_shape) != 3:
        raise ToolkitError(
            f"encoder run {run_dir} encodes images, but this environment observes vectors of shape {obs_shape}; "
            "use encoder=mlp, or observe pixels (--pixels SIZE)."
        )
    if not (run_dir / "config.yaml").is_file():
        raise ToolkitError(
            f"encoder={run_dir} is neither mlp, nature, impala nor a run directory (it has no config.yaml); "
            "train an encoder with: toolkit train ae --dataset FRAMES."
        )
    # Opening a run seeds torch's generators with that run's seed; the agent being built must
    # keep drawing from its own seeded stream.
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        session, _ = open_trained_run(run_dir)
    if not session.is_model:
        raise ToolkitError(
            f"encoder run {run_dir} is an agent run; give the run of an autoencoder model (toolkit train ae|vae --dataset FRAMES)."
        )
    model = session.learner
    if not isinstance(model, AutoencoderModel):
        raise ToolkitError(
            f"encoder run {run_dir} trained a {session.settings.model} model, which has no encoder; "
            "give the run of an autoencoder model such as ae or vae."
        )
    data_shape = tuple(int(d) for d in session.settings.data_shape or ())
    if len(data_shape) != 3:
        raise ToolkitError(
            f"encoder run {run_dir} was trained on vectors of shape {data_shape}, not on images; "
            "train an encoder on frames (toolkit dataset frames, then toolkit train ae --dataset FILE)."
        )
    last = channels_last(obs_shape)
    channels, height, width = (obs_shape[2], obs_shape[0], obs_shape[1]) if last else obs_shape
    c = data_shape[0]
    if (height, width) != data_shape[1:] or channels % c:
        frame = (c if channels % c == 0 else channels, height, width)
        raise ToolkitError(
            f"encoder run {run_dir} was trained on images of shape {data_shape}, but this environment observes "
            f"{frame} frames (observations of shape {obs_shape}); train an encoder on frames of that size."
        )
    for obj in model.checkpointed.values():
        if isinstance(obj, nn.Module):
            obj.to(device)
    return PretrainedEncoder(model, obs_shape, data_shape)  # type: ignore[arg-type]


def random_shift(images: torch.Tensor, pad: int = 4, channels_last: bool = False) -> torch.Tensor:
    """Shift each image by its own random ``(dy, dx)`` in ``[-pad, pad]^2``, edges repeated.

    The augmentation of DrQ (Kostrikov et al. 2020, section 3.1): pad each image by ``pad``
    pixels replicating its border, then crop a random window of the original size. Cropping
    the padded image at offset ``pad + d`` reads pixel ``clamp(i + d)`` of the original, so
    this is done as one gather with clamped indices for the whole batch: no padded copy, no
    Python loop per image, any dtype (``uint8`` frames stay bytes). ``images`` is
    ``[..., C, H, W]`` or, with ``channels_last``, ``[..., H, W, C]``; the shape is kept.
    """
    flat = images.reshape(-1, *images.shape[-3:])
    if not channels_last:
        flat = flat.movedim(1, -1)  # gather rows and columns with channels last, move back below
    n, height, width = flat.shape[0], flat.shape[1], flat.shape[2]
    shifts = torch.randint(-pad, pad + 1, (n, 2), device=images.device)
    rows = (torch.arange(height, device=images.device) + shifts[:, :1]).clamp(0, height - 1)  # [n, H]
    cols = (torch.arange(width, device=images.device) + shifts[:, 1:]).clamp(0, width - 1)  # [n, W]
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = flat[batch, rows[:, :, None], cols[:, None, :]]  # [n, H, W, C]
    if not channels_last:
        out = out.movedim(-1, 1)
    return out.reshape(images.shape)


__all__ = [
    "ENCODERS",
    "FlattenEncoder",
    "ImpalaEncoder",
    "NatureEncoder",
    "ObservationEncoder",
    "PretrainedEncoder",
    "make_encoder",
    "random_shift",
]
