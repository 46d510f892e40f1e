"""Configs and specs of the vision models (torch-free: ``toolkit list`` imports this).

The models themselves are in :mod:`toolkit_vision.ae`, :mod:`~toolkit_vision.dae`,
:mod:`~toolkit_vision.mae`, :mod:`~toolkit_vision.vae` and
:mod:`~toolkit_vision.categorical_vae`, and the classifiers (``vgg11``, ``cnn``, ``mlp``) in
:mod:`~toolkit_vision.classifiers`, imported only when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolkit.config import check_fields, option
from toolkit.registry import ModelSpec


@dataclass(frozen=True)
class VisionConfig:
    """What every model here shares: the encoder/decoder family and the optimiser."""

    encoder: Literal["mlp", "conv"] = option(
        "mlp", "Encoder and decoder family: 'mlp' (flattened inputs) or 'conv' (images only; ConvEncoder/ConvDecoder)."
    )
    hidden_sizes: tuple[int, ...] = option(
        (512, 256), "Hidden widths of the MLP encoder; the decoder mirrors them. Unused with encoder=conv.", ge=1, nonempty=True
    )
    lr: float = option(1e-3, "Adam learning rate.", gt=0)
    batch_size: int = option(128, "Examples per gradient step.", ge=1)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        check_fields(self)


@dataclass(frozen=True)
class AEConfig(VisionConfig):
    """Autoencoder: a deterministic code of ``latent_dim`` numbers, trained to reconstruct."""

    latent_dim: int = option(16, "Size of the latent code.", ge=1)


@dataclass(frozen=True)
class DAEConfig(AEConfig):
    """Denoising autoencoder (Vincent et al. 2008): reconstruct clean inputs from corrupted ones."""

    noise: Literal["gaussian", "masking"] = option(
        "masking", "Corruption: 'masking' zeroes each input value with probability noise_level (the paper's); "
        "'gaussian' adds N(0, noise_level^2) and clips to [0, 1]."
    )
    noise_level: float = option(0.3, "Drop probability (masking) or noise standard deviation (gaussian).", gt=0)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        super().validate()
        if self.noise == "masking" and not self.noise_level < 1.0:
            raise ValueError(f"noise_level is a drop probability with noise=masking and must lie in (0, 1), got {self.noise_level}")


@dataclass(frozen=True)
class MAEConfig(AEConfig):
    """Masked autoencoder (He et al. 2022), scaled down: reconstruct hidden patches from visible ones."""

    patch_size: int = option(
        2, "Side of the square patches (it must divide the image height and width); for vectors, the chunk length.", ge=1
    )
    mask_ratio: float = option(0.5, "Fraction of patches hidden in each training example (paper: 0.75 on ImageNet).", gt=0, lt=1)


@dataclass(frozen=True)
class VAEConfig(AEConfig):
    """Variational autoencoder (Kingma & Welling 2014) with a pluggable prior."""

    likelihood: Literal["bernoulli", "gaussian"] = option(
        "bernoulli", "p(x|z): 'bernoulli' on [0, 1] values, or 'gaussian' with a learned per-value standard "
        "deviation (shared by all examples, floored at 0.01)."
    )
    beta: float = option(1.0, "Weight of the KL term in the training loss (1 is the ELBO; beta-VAE uses more).", ge=0)
    prior: str = option("normal:0,1", "Prior over latents, NAME:ARGS: normal:M,S (mean, std) or mixture:K (learned).")
    kl_samples: int = option(1, "Posterior samples per example for Monte-Carlo KL (priors without a closed form).", ge=1)

    def validate(self) -> None:
        """Raise ValueError for a prior that cannot be built (each field's bounds are declared on it)."""
        super().validate()
        from toolkit.nn.priors import check_prior  # imports torch: only when validating

        check_prior(self.prior)


@dataclass(frozen=True)
class BetaVAEConfig(VAEConfig):
    """beta-VAE (Higgins et al. 2017): the VAE with the KL term weighted up, for disentangling."""

    beta: float = option(
        4.0, "Weight of the KL term in the training loss; beta > 1 trades reconstruction for a more factorised code.", ge=0
    )


@dataclass(frozen=True)
class CategoricalVAEConfig(VisionConfig):
    """VAE with discrete latents relaxed by Gumbel-softmax (Jang et al. 2017)."""

    latent_vars: int = option(20, "Number N of categorical latent variables.", ge=1)
    categories: int = option(10, "Categories K of each variable; probes see N*K softmax probabilities.", ge=2)
    tau0: float = option(1.0, "Initial Gumbel-softmax temperature (paper: 1.0).", gt=0)
    tau_min: float = option(0.5, "Floor of the annealed temperature (paper: 0.5).", gt=0)
    anneal_rate: float = option(
        1e-4, "Temperature schedule tau = max(tau_min, tau0 * exp(-anneal_rate * step)); paper: 3e-5 over ~100k steps.", ge=0
    )
    straight_through: bool = option(
        True,
        "Straight-through Gumbel-softmax: exact one-hot codes forward, relaxed gradients backward, so the decoder "
        "trains on the codes that evaluation, sampling and the NLL use; false trains it on the relaxed samples.",
    )

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        super().validate()
        if self.tau_min > self.tau0:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau0 ({self.tau0})")


AE = ModelSpec(
    name="ae",
    config=AEConfig,
    factory="toolkit_vision.ae:make_ae",
    kind="autoencoder",
    description="Autoencoder: deterministic encoder and decoder trained to reconstruct (Bernoulli cross-entropy).",
    api_version=1,
)

DAE = ModelSpec(
    name="dae",
    config=DAEConfig,
    factory="toolkit_vision.dae:make_dae",
    kind="autoencoder",
    description="Denoising autoencoder (Vincent et al. 2008): reconstructs clean inputs from corrupted ones.",
    api_version=1,
)

MAE = ModelSpec(
    name="mae",
    config=MAEConfig,
    factory="toolkit_vision.mae:make_mae",
    kind="autoencoder",
    description="Masked autoencoder (He et al. 2022), MLP-sized: reconstructs randomly masked patches.",
    api_version=1,
)

VAE = ModelSpec(
    name="vae",
    config=VAEConfig,
    factory="toolkit_vision.vae:make_vae",
    kind="generative",
    description="Variational autoencoder (Kingma & Welling 2014) with a pluggable prior (normal:M,S, mixture:K).",
    api_version=1,
)

BETA_VAE = ModelSpec(
    name="beta-vae",
    config=BetaVAEConfig,
    factory="toolkit_vision.vae:make_vae",
    kind="generative",
    description="beta-VAE (Higgins et al. 2017): the VAE with its KL term weighted by beta = 4.",
    api_version=1,
)

CATEGORICAL_VAE = ModelSpec(
    name="categorical-vae",
    config=CategoricalVAEConfig,
    factory="toolkit_vision.categorical_vae:make_categorical_vae",
    kind="generative",
    description="Categorical VAE (Jang et al. 2017): discrete latents through an annealed Gumbel-softmax.",
    api_version=1,
)


# --------------------------------------------------------------------------- classifiers
# The networks are in :mod:`toolkit_vision.classifiers`, the output heads in :mod:`toolkit.nn.heads`.


@dataclass(frozen=True)
class ClassifierConfig:
    """What every classifier shares: the output head, its options, and the optimiser."""

    head: Literal["softmax", "gumbel", "hierarchical", "adaptive"] = option(
        "softmax",
        "Output head: 'softmax' (a linear layer and cross-entropy), 'gumbel' (trained through an annealed "
        "Gumbel-softmax sample, Jang et al. 2017), 'hierarchical' (a binary Huffman tree over the classes, "
        "Morin & Bengio 2005; Mikolov et al. 2013) or 'adaptive' (frequent classes in a head cluster, rare ones "
        "in smaller tail clusters, Grave et al. 2017). Evaluation always scores the exact, normalised probabilities.",
    )
    tau0: float = option(1.0, "head=gumbel: initial Gumbel-softmax temperature.", gt=0)
    tau_min: float = option(0.5, "head=gumbel: floor of the annealed temperature.", gt=0)
    anneal_rate: float = option(
        1e-4, "head=gumbel: temperature schedule tau = max(tau_min, tau0 * exp(-anneal_rate * step)).", ge=0
    )
    straight_through: bool = option(
        True, "head=gumbel: one-hot samples forward and relaxed gradients backward (false: train on the relaxed sample)."
    )
    cutoffs: tuple[int, ...] = option(
        (), "head=adaptive: increasing class-rank cut-offs between the clusters; empty chooses them from the class counts.", ge=1
    )
    div_value: float = option(4.0, "head=adaptive: each tail cluster's projection is this many times narrower than the last.", ge=1)
    lr: float = option(1e-3, "Adam learning rate.", gt=0)
    batch_size: int = option(128, "Examples per gradient step.", ge=1)
    weight_decay: float = option(0.0, "L2 penalty on every weight, added to the gradient by Adam (0 turns it off).", ge=0)
    dropout: float = option(0.0, "Dropout probability after each hidden fully connected layer (0 turns it off).", ge=0, lt=1)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work together (each field's bounds are declared on it)."""
        check_fields(self)
        if self.tau_min > self.tau0:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau0 ({self.tau0})")
        if list(self.cutoffs) != sorted(set(self.cutoffs)):
            raise ValueError(f"cutoffs must be strictly increasing, got {self.cutoffs}")


@dataclass(frozen=True)
class VGG11Config(ClassifierConfig):
    """VGG11 (Simonyan & Zisserman 2015, configuration A) with batch norm, sized to the input."""

    width: int = option(
        0, "Channels of the first convolution; the later ones keep VGG's ratios (x1, 2, 4, 4, 8, 8, 8, 8). "
        "0 chooses from the image size: 64 (VGG's) for 32 px and more, 16 below (CPU-sized for MNIST and digits).", ge=0
    )
    hidden: int = option(256, "Width of the hidden fully connected layer between the convolutions and the head.", ge=1)
    dropout: float = option(0.5, "Dropout probability after the hidden fully connected layer (VGG's 0.5).", ge=0, lt=1)
    batch_size: int = option(64, "Examples per gradient step (at least 2: batch norm needs a batch).", ge=2,
                             reason="batch norm needs a batch of at least 2")


@dataclass(frozen=True)
class CNNConfig(ClassifierConfig):
    """A small convolutional classifier: 3x3 convolutions with ReLU and 2x2 max-pooling, then one hidden layer."""

    channels: tuple[int, ...] = option((32, 64), "Output channels of each 3x3 convolution (each followed by ReLU and a 2x2 max-pool).", ge=1, nonempty=True)
    hidden: int = option(128, "Width of the hidden fully connected layer between the convolutions and the head.", ge=1)


@dataclass(frozen=True)
class MLPClassifierConfig(ClassifierConfig):
    """A multilayer perceptron on the flattened input: images or vectors."""

    hidden_sizes: tuple[int, ...] = option(
        (256, 128), "Widths of the hidden fully connected layers (ReLU after each); empty is a linear classifier.", ge=1
    )


VGG11 = ModelSpec(
    name="vgg11",
    config=VGG11Config,
    factory="toolkit_vision.classifiers:make_vgg11",
    kind="classifier",
    description="VGG11 classifier (Simonyan & Zisserman 2015) with batch norm, its width and pooling fitted to the image size.",
    default_steps=2_000,
    api_version=1,
)

CNN = ModelSpec(
    name="cnn",
    config=CNNConfig,
    factory="toolkit_vision.classifiers:make_cnn",
    kind="classifier",
    description="Small convolutional classifier: 3x3 convolutions, ReLU and max-pooling, one hidden layer.",
    default_steps=2_000,
    api_version=1,
)

MLP = ModelSpec(
    name="mlp",
    config=MLPClassifierConfig,
    factory="toolkit_vision.classifiers:make_mlp",
    kind="classifier",
    description="Multilayer perceptron classifier on the flattened input (images or vectors).",
    default_steps=2_000,
    api_version=1,
)
