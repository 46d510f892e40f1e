"""Classifiers: ``vgg11``, ``cnn`` and ``mlp``, a body network and an output head each.

Every classifier is one :class:`ClassifierNetwork`: a body (convolutions and/or fully connected
layers) that maps an example to a feature vector, and an output head from
:mod:`toolkit.nn.heads` (``--set head=softmax|gumbel|hierarchical|adaptive``) that turns the
features into normalised class log-probabilities, a training loss and the exact negative
log-likelihood. The body's layers are direct children of the network, named ``conv1``,
``bn1``, ``relu1``, ``pool1``, ..., ``fc1``, ``relu_fc1``, ..., and the head is ``head``, so a
pruning tool reads the prunable layers as ``conv1``, ``fc1``, ``head.linear``.

* ``vgg11``: VGG's configuration A (Simonyan & Zisserman 2015, table 1: 64, M, 128, M, 256,
  256, M, 512, 512, M, 512, 512, M; every convolution 3x3 with stride 1 and padding 1), with
  batch norm after each convolution (Ioffe & Szegedy 2015), scaled to small images: the
  channels are ``width`` times VGG's ratios (1, 2, 4, 4, 8, 8, 8, 8) and pools that would act
  on a 1x1 map are left out (:func:`vgg11_layers`). Then flatten, one hidden layer with ReLU
  and dropout (VGG's classifier had two of 4,096 units; one suffices for 10 classes), head.
* ``cnn``: a few 3x3 convolutions with ReLU and 2x2 max-pooling, then one hidden layer.
* ``mlp``: the flattened input through hidden layers with ReLU; takes vectors too.

Training minimises the head's loss (cross-entropy for the softmax head) with Adam (Kingma &
Ba 2015). Evaluation reports, per example, ``accuracy`` (1.0 when the most likely class is
right) and ``loss``, the head's exact ``-log p(y|x)`` in nats, always with batch norm's
running statistics and without dropout.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model import ClassifierModel, DataSpec, ExampleBatch
from toolkit.nn.heads import OutputHead, make_head
from toolkit.nn.mlp import fast_adam_options
from toolkit_vision.spec import ClassifierConfig, CNNConfig, MLPClassifierConfig, VGG11Config

#: VGG configuration A (Simonyan & Zisserman 2015, table 1) as multiples of the first layer's
#: channels (64 in the paper); "M" is a 2x2 max-pool with stride 2.
VGG11_LAYOUT: tuple[int | str, ...] = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


class ClassifierNetwork(nn.Module):
    """A body network followed by an output head, as one module.

    ``layers`` become direct children under their own names, applied in order by
    :meth:`features`; ``head`` is the :class:`~toolkit.nn.heads.OutputHead` on the features.
    Calling the network gives the head's log-probabilities ``[B, num_classes]``.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], head: OutputHead) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.body_names: tuple[str, ...] = tuple(layers)
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output ``[B, head.in_features]`` for examples ``[B, *shape]``."""
        for name in self.body_names:
            x = self._modules[name](x)  # type: ignore[misc]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-probabilities ``[B, num_classes]``."""
        return self.head.log_probs(self.features(x))


# --------------------------------------------------------------------------- bodies


def _pool(h: int, w: int) -> tuple[nn.Module | None, int, int]:
    """A 2x2 stride-2 max-pool for an ``h x w`` map, and the size after it.

    Sides are halved rounding up (``ceil_mode``), so no row or column is dropped: 28 px go
    14, 7, 4, 2, 1 through VGG's five pools, 32 px 16, 8, 4, 2, 1, and 8 px 4, 2, 1. A side that
    is already 1 is left as it is (a window of 1 along it), and once the whole map is 1x1 the
    pool is left out altogether (None): it would only copy its input.
    """
    if h == 1 and w == 1:
        return None, h, w
    kernel = (2 if h > 1 else 1, 2 if w > 1 else 1)
    return nn.MaxPool2d(kernel, stride=kernel, ceil_mode=True), math.ceil(h / kernel[0]), math.ceil(w / kernel[1])


def vgg11_width(side: int) -> int:
    """The first layer's channels ``width=0`` stands for, from the smaller image side.

    VGG's 64 is kept for CIFAR-sized images (32 px and up). Smaller images get 16, a
    sixteenth of the multiply-adds: at width 32, 28x28 MNIST trained at 1.1 steps/s (batch 64,
    2 CPU cores), a 1,000-step run a quarter of an hour; at 16 it trains at 6.8 steps/s.
    """
    return 64 if side >= 32 else 16


def vgg11_layers(shape: tuple[int, int, int], width: int) -> tuple[OrderedDict[str, nn.Module], int]:
    """VGG11's convolutional part for images of ``shape``; returns the layers and the size of
    their flattened output.

    Each entry of :data:`VGG11_LAYOUT` that is a number is ``convN`` (3x3, padding 1, no bias:
    batch norm's shift replaces it), ``bnN`` and ``reluN``; each "M" is ``poolK`` (K counts
    VGG's pools, 1 to 5), left out once the map is 1x1 (see :func:`_pool`): 8x8 digits keep
    the first three pools and 28x28 or 32x32 images all five. The convolutions after the map
    reaches 1x1 still run, on their centre taps only (padding supplies the rest): a linear
    layer on the channels, so every input size gets VGG's eight layers.
    """
    channels, h, w = shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    conv_index = pool_index = 0
    for entry in VGG11_LAYOUT:
        if entry == "M":
            pool_index += 1
            pool, h, w = _pool(h, w)
            if pool is not None:
                layers[f"pool{pool_index}"] = pool
            continue
        conv_index += 1
        out = int(entry) * width
        conv = nn.Conv2d(channels, out, 3, padding=1, bias=False)
        # He et al. 2015 initialisation (fan-out, ReLU gain), as torchvision's VGG does.
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        layers[f"conv{conv_index}"] = conv
        layers[f"bn{conv_index}"] = nn.BatchNorm2d(out)
        # In place: batch norm's backward does not need its output.
        layers[f"relu{conv_index}"] = nn.ReLU(inplace=True)
        channels = out
    layers["flatten"] = nn.Flatten()
    return layers, channels * h * w


def cnn_layers(shape: tuple[int, int, int], widths: tuple[int, ...]) -> tuple[OrderedDict[str, nn.Module], int]:
    """``convN`` (3x3, padding 1), ``reluN`` and ``poolN`` (2x2, as in :func:`_pool`) per width,
    then ``flatten``; returns the layers and the flattened size."""
    channels, h, w = shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, out in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1)
        # In place: a convolution's backward does not need its output.
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        pool, h, w = _pool(h, w)
        if pool is not None:
            layers[f"pool{i}"] = pool
        channels = out
    layers["flatten"] = nn.Flatten()
    return layers, channels * h * w


def fc_layers(
    layers: OrderedDict[str, nn.Module], in_features: int, widths: tuple[int, ...], dropout: float
) -> int:
    """Append ``fcK`` + ``relu_fcK`` (+ ``dropout_fcK``) to ``layers`` per width; returns the
    output size (``in_features`` when ``widths`` is empty)."""
    last = in_features
    for k, width in enumerate(widths, start=1):
        layers[f"fc{k}"] = nn.Linear(last, width)
        layers[f"relu_fc{k}"] = nn.ReLU(inplace=True)
        if dropout > 0:
            layers[f"dropout_fc{k}"] = nn.Dropout(dropout)
        last = width
    return last


# --------------------------------------------------------------------------- the model


class Classifier(ClassifierModel):
    """A :class:`ClassifierNetwork` trained with Adam on its head's loss.

    ``checkpointed`` holds exactly the whole network under ``"network"`` and its optimiser
    under ``"optimizer"``.
    """

    def __init__(self, config: ClassifierConfig, network: ClassifierNetwork, spec: DataSpec, device: str) -> None:
        super().__init__()
        self.config, self.spec, self.device = config, spec, device
        self.num_classes = int(network.head.num_classes)
        self.network = network.to(device)
        # torch's Adam adds weight_decay * w to the gradient: L2 regularisation, off by default.
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fast_adam_options(device)
        )
        self.checkpointed = {"network": self.network, "optimizer": self.optimizer}

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Evaluation behaviour (batch norm's running statistics, no dropout) and no gradients,
        whatever mode the model is in; the mode is put back after. Without it, measuring a
        model in training mode would move batch norm's running statistics."""
        training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.network.train(training)

    def _labels(self, batch: ExampleBatch) -> torch.Tensor:
        if batch.y is None:
            raise ToolkitError(f"A classifier needs class labels, and this batch of {self.spec.source or 'data'} has none.")
        return batch.y

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """One Adam step on the mean of the head's training loss; returns the loss and the
        training-batch accuracy (of the network before the step), as 0-d tensors."""
        y = self._labels(batch)
        features = self.network.features(batch.x)
        loss = self.network.head.loss(features, y).mean()
        with torch.no_grad():
            accuracy = (self.network.head.predict(features.detach()) == y).float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "accuracy": accuracy}

    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """Per example: ``accuracy`` (1.0 or 0.0) and ``loss``, the exact ``-log p(y|x)`` in nats."""
        y = self._labels(batch)
        with self._inference():
            features = self.network.features(batch.x)
            head = self.network.head
            return {"accuracy": (head.predict(features) == y).float(), "loss": head.nll(features, y)}

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-probabilities ``[B, num_classes]``, in evaluation behaviour."""
        with self._inference():
            return self.network(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class ``[B]`` (the head's own argmax, which can skip normalising)."""
        with self._inference():
            return self.network.head.predict(self.network.features(x))


# --------------------------------------------------------------------------- factories


def check_labelled(name: str, spec: DataSpec) -> int:
    """The number of classes of ``spec``; refuse unlabelled data as one sentence."""
    source = spec.source or "the data"
    if spec.num_classes is None:
        raise ToolkitError(
            f"{name} is a classifier and needs labelled data, but {source} has no labels; "
            "train it on digits, mnist-5k, mnist1d or an MNIST or CIFAR-10 directory."
        )
    if spec.num_classes < 2:
        raise ToolkitError(f"{name} needs at least two classes, but {source} has {spec.num_classes}.")
    return int(spec.num_classes)


def check_images(name: str, spec: DataSpec) -> tuple[int, int, int]:
    """``spec.shape`` as ``(C, H, W)``; refuse vectors for a convolutional network as one sentence."""
    if not spec.is_image:
        raise ToolkitError(
            f"{name} is convolutional and needs images (C, H, W); {spec.source or 'the data'} gives vectors of "
            f"shape {tuple(spec.shape)}; use mlp."
        )
    c, h, w = (int(d) for d in spec.shape)
    return c, h, w


def _head(config: ClassifierConfig, in_features: int, num_classes: int, spec: DataSpec) -> OutputHead:
    return make_head(
        config.head,
        in_features,
        num_classes,
        spec.class_counts,
        tau0=config.tau0,
        tau_min=config.tau_min,
        anneal_rate=config.anneal_rate,
        straight_through=config.straight_through,
        cutoffs=tuple(config.cutoffs) or None,
        div_value=config.div_value,
    )


def make_vgg11(config: VGG11Config, data_spec: DataSpec, device: str) -> Classifier:
    """The ``vgg11`` factory."""
    config.validate()
    num_classes = check_labelled("vgg11", data_spec)
    shape = check_images("vgg11", data_spec)
    width = config.width or vgg11_width(min(shape[1], shape[2]))
    layers, flat = vgg11_layers(shape, width)
    out = fc_layers(layers, flat, (config.hidden,), config.dropout)
    network = ClassifierNetwork(layers, _head(config, out, num_classes, data_spec))
    return Classifier(config, network, data_spec, device)


def make_cnn(config: CNNConfig, data_spec: DataSpec, device: str) -> Classifier:
    """The ``cnn`` factory."""
    config.validate()
    num_classes = check_labelled("cnn", data_spec)
    shape = check_images("cnn", data_spec)
    layers, flat = cnn_layers(shape, tuple(config.channels))
    out = fc_layers(layers, flat, (config.hidden,), config.dropout)
    network = ClassifierNetwork(layers, _head(config, out, num_classes, data_spec))
    return Classifier(config, network, data_spec, device)


def make_mlp(config: MLPClassifierConfig, data_spec: DataSpec, device: str) -> Classifier:
    """The ``mlp`` factory."""
    config.validate()
    num_classes = check_labelled("mlp", data_spec)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    out = fc_layers(layers, math.prod(data_spec.shape), tuple(config.hidden_sizes), config.dropout)
    network = ClassifierNetwork(layers, _head(config, out, num_classes, data_spec))
    return Classifier(config, network, data_spec, device)
