"""Neural building blocks shared by agents and models: fully connected networks
(:mod:`toolkit.nn.mlp`), convolutional encoders and decoders (:mod:`toolkit.nn.conv`), and
distributions (:mod:`toolkit.nn.distributions`)."""

from toolkit.nn.conv import ConvDecoder, ConvEncoder, ICMConvEncoder, ImageInput, NatureCNN
from toolkit.nn.distributions import (
    TanhGaussian,
    categorical_kl_uniform,
    gaussian_kl_standard,
    gaussian_log_prob,
    gumbel_softmax,
)
from toolkit.nn.mlp import EnsembleMLP, fast_adam_options, mlp

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "EnsembleMLP",
    "ICMConvEncoder",
    "ImageInput",
    "NatureCNN",
    "TanhGaussian",
    "categorical_kl_uniform",
    "fast_adam_options",
    "gaussian_kl_standard",
    "gaussian_log_prob",
    "gumbel_softmax",
    "mlp",
]
