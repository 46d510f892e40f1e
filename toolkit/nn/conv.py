"""Convolutional building blocks for image observations and image models.

* :class:`ImageInput`: bytes to floats in [0, 1], channels moved first, inside the network so
  replay buffers and datasets can keep compact ``uint8`` pixels.
* :class:`NatureCNN`: the DQN torso (Mnih et al. 2015).
* :class:`ICMConvEncoder`: the Intrinsic Curiosity Module's encoder (Pathak et al. 2017).
* :class:`ImpalaCNN`: the IMPALA residual torso (Espeholt et al. 2018).
* :class:`ConvEncoder` / :class:`ConvDecoder`: a small mirrored pair for autoencoders and VAEs,
  for any image size from 8x8 up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def channels_last(shape: Sequence[int]) -> bool:
    """Whether an image observation's shape is ``(H, W, C)`` rather than ``(C, H, W)``.

    Images have more rows and columns than channels, so the smaller of the two outer dimensions
    is the channel axis: ``(4, 84, 84)`` Atari stacks and ``(9, 84, 84)`` stacks of three RGB
    frames are channels-first, ``(84, 84, 9)`` and gymnasium's RGB renders channels-last. When
    the outer dimensions are equal (a cube), at most 4 leading entries mean channels-first.
    """
    first, last = int(shape[0]), int(shape[-1])
    if first != last:
        return last < first
    return first > 4



class ImageInput(nn.Module):
    """Integer pixels (``uint8``, 0..255) to floats in [0, 1]; ``[..., H, W, C]`` to ``[..., C, H, W]``.

    Float inputs are taken as already scaled and only cast to float32, so a network gives the
    same output for bytes and for the same image divided by 255.
    """

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() if x.is_floating_point() else x.float() / 255.0
        return x.movedim(-1, -3) if self.channels_last else x

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}"


class NatureCNN(nn.Module):
    """The Nature-DQN convolutional torso (Mnih et al. 2015): 32 8x8/4, 64 4x4/2, 64 3x3/1, ReLU, flattened.

    ``shape`` is one observation's shape, ``(C, H, W)`` or ``(H, W, C)`` (told apart as in
    :func:`channels_last`). Takes ``uint8`` pixels and scales them here. ``out_dim`` is the
    flattened feature size (``64 * 7 * 7`` for 84x84 frames).
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        shape = tuple(int(d) for d in shape)
        self.channels_last = channels_last(shape)
        channels = shape[-1] if self.channels_last else shape[0]
        # ImageInput holds no parameters, so the state dict keeps DQN's ``conv.*`` names.
        self.input = ImageInput(self.channels_last)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():  # zeros draw no random numbers, so building stays reproducible
            self.out_dim = int(self.forward(torch.zeros(1, *shape, dtype=torch.uint8)).shape[-1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.conv(self.input(obs))


class ICMConvEncoder(nn.Sequential):
    """The ICM paper's image encoder: four 32-channel 3x3 stride-2 convolutions with ELU, then a
    linear layer to ``feature_dim`` (Pathak et al. 2017, section 4.1).

    ``shape`` is one observation's shape, ``(C, H, W)`` or ``(H, W, C)``; ``uint8`` pixels are
    scaled here. A :class:`~torch.nn.Sequential` of ``[ImageInput, convs, Linear]``, so its
    parameters are named ``1.*`` (convolutions) and ``2.*`` (the linear layer).
    """

    def __init__(self, shape: Sequence[int], feature_dim: int) -> None:
        shape = tuple(int(d) for d in shape)
        last_axis = channels_last(shape)
        channels = shape[-1] if last_axis else shape[0]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(channels if i == 0 else 32, 32, 3, stride=2, padding=1), nn.ELU()]
        conv = nn.Sequential(*layers, nn.Flatten())
        image_input = ImageInput(last_axis)
        # The flattened size from a dummy pass (zeros draw no random numbers) rather than a
        # LazyLinear, so the optimiser sees every parameter from the start.
        with torch.no_grad():
            flat = int(conv(image_input(torch.zeros(1, *shape))).shape[-1])
        super().__init__(image_input, conv, nn.Linear(flat, feature_dim))


def _num_stages(shape: Sequence[int], max_stages: int) -> int:
    """How many stride-2 halvings ConvEncoder makes: while the smaller side stays >= 4, at most ``max_stages``."""
    side, stages = min(int(shape[1]), int(shape[2])), 0
    while stages < max_stages and side // 2 >= 4:
        side //= 2
        stages += 1
    return stages


class ConvEncoder(nn.Module):
    """Images ``[B, C, H, W]`` float in [0, 1] -> features ``[B, out_dim]``.

    4x4 stride-2 convolutions (padding 1, so each halves the size, rounding down) with ReLU, one
    per entry of ``channels`` but only while the smaller side stays at least 4: 8x8 digits get
    one, 28x28 MNIST two, 32x32 and larger three with the default ``channels``. Then a linear
    layer to ``out_dim``. Images smaller than 8x8 get no convolution: a linear layer on the
    pixels. :class:`ConvDecoder` with the reversed ``channels`` mirrors it.
    """

    def __init__(self, shape: tuple[int, int, int], out_dim: int, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        self.out_dim = out_dim
        stages = _num_stages(self.shape, len(channels))
        layers: list[nn.Module] = []
        last = self.shape[0]
        for width in channels[:stages]:
            # In place: a convolution's backward does not need its output.
            layers += [nn.Conv2d(last, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            last = width
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():  # zeros draw no random numbers, so building stays reproducible
            flat = int(self.conv(torch.zeros(1, *self.shape)).shape[-1])
        self.head = nn.Linear(flat, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class ConvDecoder(nn.Module):
    """Latents ``[B, in_dim]`` -> logits ``[B, C, H, W]`` of exactly ``shape`` (apply sigmoid for pixel means).

    The mirror of :class:`ConvEncoder` (pass the reversed ``channels``): a linear layer to a
    ``channels[-stages]``-channel map of ``ceil(H / 2^stages) x ceil(W / 2^stages)``, then 4x4
    stride-2 transposed convolutions that double it, with ReLU between, the last one to ``C``
    channels. Doubling overshoots sizes that are not ``2^stages`` times an integer (84 = 8 * 10.5
    becomes 88), so the result is cropped to the centre ``H x W``.
    """

    def __init__(self, in_dim: int, shape: tuple[int, int, int], channels: tuple[int, ...] = (128, 64, 32)) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        self.in_dim = in_dim
        c, h, w = self.shape
        stages = _num_stages(self.shape, len(channels))
        # The encoder's first ``stages`` widths are, reversed, this decoder's last ``stages``.
        widths = tuple(channels[len(channels) - stages:])
        if stages == 0:
            self.start = (c, h, w)
            self.head = nn.Linear(in_dim, c * h * w)
            self.deconv = nn.Sequential()
            return
        self.start = (widths[0], math.ceil(h / 2**stages), math.ceil(w / 2**stages))
        self.head = nn.Sequential(nn.Linear(in_dim, math.prod(self.start)), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            out = widths[i + 1] if i + 1 < stages else c
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
            if i + 1 < stages:
                layers.append(nn.ReLU(inplace=True))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.deconv(self.head(z).reshape(z.shape[0], *self.start))
        _, h, w = self.shape
        if x.shape[-2:] != (h, w):
            top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
            x = x[..., top:top + h, left:left + w]
        return x


class ImpalaResidualBlock(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with two 3x3 convolutions that keep the size and channels
    (Espeholt et al. 2018, figure 3, right)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: the skip connection still needs x.
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaStage(nn.Module):
    """One stage of the IMPALA torso: a 3x3 convolution, a 3x3 stride-2 max-pool (halving the
    size, rounding up) and two :class:`ImpalaResidualBlock` s."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = ImpalaResidualBlock(channels)
        self.res1 = ImpalaResidualBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(nn.Module):
    """The IMPALA "deep" torso (Espeholt et al. 2018, figure 3, right): three
    :class:`ImpalaStage` s of 16, 32 and 32 channels, ReLU, flattened, then a linear layer to
    ``feature_dim`` (the paper's 256) and ReLU. The paper's LSTM on top is left out.

    ``shape`` is one observation's shape, ``(C, H, W)`` or ``(H, W, C)`` (told apart as in
    :func:`channels_last`); ``uint8`` pixels are scaled here. 84x84 frames shrink to 42, 21 and
    11 pixels a side, so the linear layer reads ``32 * 11 * 11`` features.
    """

    def __init__(self, shape: Sequence[int], feature_dim: int = 256, channels: Sequence[int] = (16, 32, 32)) -> None:
        super().__init__()
        shape = tuple(int(d) for d in shape)
        self.channels_last = channels_last(shape)
        last = shape[-1] if self.channels_last else shape[0]
        self.input = ImageInput(self.channels_last)
        stages: list[nn.Module] = []
        for width in channels:
            stages.append(ImpalaStage(last, width))
            last = width
        self.stages = nn.Sequential(*stages)
        with torch.no_grad():  # zeros draw no random numbers, so building stays reproducible
            flat = int(self.stages(self.input(torch.zeros(1, *shape, dtype=torch.uint8))).flatten(1).shape[-1])
        self.head = nn.Linear(flat, feature_dim)
        self.out_dim = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stages(self.input(obs))).flatten(1)
        return torch.relu(self.head(x))
