"""The shared building blocks of toolkit.nn: convolutional encoders/decoders and distributions."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.nn import (
    ConvDecoder,
    ConvEncoder,
    ICMConvEncoder,
    ImageInput,
    NatureCNN,
    TanhGaussian,
    categorical_kl_uniform,
    gaussian_kl_standard,
    gaussian_log_prob,
    gumbel_softmax,
)

# --- convolutional blocks ---------------------------------------------------------------------

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 84, 84)]


@pytest.mark.parametrize("shape", IMAGE_SHAPES + [(2, 20, 36), (4, 5, 5)])
def test_conv_encoder_and_decoder_round_trip_shapes(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    encoder, decoder = ConvEncoder(shape, 10), ConvDecoder(10, shape)
    x = torch.rand(3, *shape)
    z = encoder(x)
    assert z.shape == (3, 10) and encoder.out_dim == 10
    logits = decoder(z)
    assert logits.shape == (3, *shape)
    # Every parameter of both halves takes part in the reconstruction.
    torch.nn.functional.binary_cross_entropy_with_logits(logits, x).backward()
    for p in [*encoder.parameters(), *decoder.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def _convs(module: torch.nn.Module) -> int:
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in module.modules())


def test_small_images_get_fewer_downsamplings() -> None:
    stages = {shape: _convs(ConvEncoder(shape, 4)) for shape in IMAGE_SHAPES}
    assert stages == {(1, 8, 8): 1, (1, 28, 28): 2, (3, 32, 32): 3, (3, 64, 64): 3, (3, 84, 84): 3}
    for shape, n in stages.items():
        assert _convs(ConvDecoder(4, shape)) == n  # the decoder mirrors the encoder
    # More channel entries allow more halvings where the image is large enough.
    assert _convs(ConvEncoder((3, 64, 64), 4, channels=(8, 8, 8, 8, 8))) == 4
    assert _convs(ConvEncoder((1, 8, 8), 4, channels=(8, 8, 8, 8, 8))) == 1


def test_image_input_scales_bytes_and_moves_channels_first() -> None:
    pixels = torch.randint(0, 256, (2, 6, 5, 3), dtype=torch.uint8)
    out = ImageInput(channels_last=True)(pixels)
    assert out.shape == (2, 3, 6, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, pixels.float().permute(0, 3, 1, 2) / 255.0)
    floats = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(ImageInput(channels_last=False)(floats), floats.float())


@pytest.mark.parametrize("shape", [(4, 84, 84), (84, 84, 4)])
def test_nature_cnn_output_size(shape: tuple[int, int, int]) -> None:
    net = NatureCNN(shape)
    assert net.out_dim == 64 * 7 * 7  # 84 -> 20 -> 9 -> 7
    frames = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    features = net(frames)
    assert features.shape == (2, net.out_dim)
    torch.testing.assert_close(features, net(frames.float() / 255.0))


def test_icm_conv_encoder() -> None:
    encoder = ICMConvEncoder((42, 42, 3), 16)
    frames = torch.randint(0, 256, (2, 42, 42, 3), dtype=torch.uint8)
    assert encoder(frames).shape == (2, 16)
    torch.testing.assert_close(encoder(frames), encoder(frames.float() / 255.0))
    # 42 -> 21 -> 11 -> 6 -> 3 after four stride-2 convolutions; no lazy parameters.
    assert encoder[2].in_features == 32 * 3 * 3
    assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in encoder.parameters())


# --- Gumbel-softmax ---------------------------------------------------------------------------


def test_gumbel_softmax_soft_samples_are_distributions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(64, 5, 7)
    for temperature in (0.1, 1.0, torch.tensor(3.0)):
        y = gumbel_softmax(logits, temperature)
        assert y.shape == logits.shape and (y >= 0).all()
        torch.testing.assert_close(y.sum(-1), torch.ones(64, 5))


def test_gumbel_softmax_hard_samples_are_one_hot_with_soft_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(32, 4, 6, requires_grad=True)
    weights = torch.randn(6)
    torch.manual_seed(1)
    y = gumbel_softmax(logits, 0.5, hard=True)
    assert ((y == 0) | (y == 1)).all()  # exactly, not approximately
    assert (y.sum(-1) == 1).all()
    (y * weights).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # The gradient is the soft sample's: the same noise without ``hard`` gives the same gradient.
    torch.manual_seed(1)
    soft_logits = logits.detach().clone().requires_grad_(True)
    soft = gumbel_softmax(soft_logits, 0.5)
    (soft * weights).sum().backward()
    torch.testing.assert_close(logits.grad, soft_logits.grad)
    assert torch.equal(y.argmax(-1), soft.argmax(-1))


def test_gumbel_softmax_argmax_frequencies_match_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    n = 40_000
    for temperature in (1.0, 0.3):  # the Gumbel-max argmax does not depend on the temperature
        samples = gumbel_softmax(logits.expand(n, 4), temperature, hard=True)
        frequencies = samples.mean(0)
        torch.testing.assert_close(frequencies, torch.softmax(logits, -1), atol=0.01, rtol=0.0)
    # Compared with torch's own implementation, on the same statistic.
    theirs = torch.nn.functional.gumbel_softmax(logits.expand(n, 4), tau=1.0, hard=True).mean(0)
    torch.testing.assert_close(frequencies, theirs, atol=0.015, rtol=0.0)


def test_categorical_kl_uniform() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=logits), torch.distributions.Categorical(logits=torch.zeros(4))
    ).sum(-1)
    torch.testing.assert_close(categorical_kl_uniform(logits), expected)
    assert categorical_kl_uniform(logits).shape == (3,)
    torch.testing.assert_close(categorical_kl_uniform(torch.zeros(2, 5, 4)), torch.zeros(2))
    # Near one-hot variables approach the maximum, log K each.
    peaked = torch.full((2, 5, 4), -50.0)
    peaked[..., 0] = 50.0
    torch.testing.assert_close(categorical_kl_uniform(peaked), torch.full((2,), 5 * math.log(4)))
    assert categorical_kl_uniform(torch.randn(6, 4)).shape == (6,)


# --- Gaussians --------------------------------------------------------------------------------


def test_gaussian_log_prob_and_kl_match_torch_distributions() -> None:
    torch.manual_seed(0)
    x, mean, log_var = torch.randn(3, 8, 5), torch.randn(3, 8, 5), torch.randn(3, 8, 5)
    normal = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_var), normal.log_prob(x).sum(-1))
    torch.testing.assert_close(
        gaussian_log_prob(x, mean, 0.0), torch.distributions.Normal(mean, 1.0).log_prob(x).sum(-1)
    )
    standard = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    expected_kl = torch.distributions.kl_divergence(normal, standard).sum(-1)
    torch.testing.assert_close(gaussian_kl_standard(mean, log_var), expected_kl)


def _tanh_gaussian() -> TanhGaussian:
    mean = torch.tensor([[0.3, -1.2, 2.5], [-0.7, 0.0, 0.9]], dtype=torch.float64)
    log_std = torch.tensor([[-0.5, 0.4, 0.1], [0.2, -1.0, 0.6]], dtype=torch.float64)
    scale = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    bias = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    return TanhGaussian(mean, log_std, scale, bias)


def test_tanh_gaussian_log_prob_is_a_change_of_variables() -> None:
    torch.manual_seed(0)
    dist = _tanh_gaussian()
    action, log_prob = dist.rsample()
    assert action.shape == (2, 3) and log_prob.shape == (2, 1)
    assert ((action > dist.bias - dist.scale) & (action < dist.bias + dist.scale)).all()
    # Independently: log p(a) = log N(u) - log |da/du|, with u = atanh((a - bias) / scale) and the
    # derivative of the squash by central differences rather than its closed form.
    u = torch.atanh((action - dist.bias) / dist.scale)
    h = 1e-6
    derivative = (dist.squash(u + h) - dist.squash(u - h)) / (2 * h)
    reference = torch.distributions.Normal(dist.mean, dist.log_std.exp()).log_prob(u) - derivative.log()
    torch.testing.assert_close(log_prob, reference.sum(-1, keepdim=True), rtol=1e-6, atol=1e-6)
    # Evaluating the sampled action gives the sample's own log-probability.
    torch.testing.assert_close(dist.log_prob(action), log_prob)


def test_tanh_gaussian_density_integrates_to_one() -> None:
    dist = TanhGaussian(torch.tensor([[0.4]], dtype=torch.float64), torch.tensor([[-0.3]], dtype=torch.float64), 2.0, 1.0)
    grid = torch.linspace(-1.0, 3.0, 200_001, dtype=torch.float64)[1:-1].reshape(-1, 1)
    density = dist.log_prob(grid).exp().squeeze(-1)
    assert abs(float(torch.trapezoid(density, grid.squeeze(-1))) - 1.0) < 1e-3


def test_tanh_gaussian_sample_and_rsample_make_the_same_draw() -> None:
    dist = _tanh_gaussian()
    torch.manual_seed(3)
    action, _ = dist.rsample()
    torch.manual_seed(3)
    torch.testing.assert_close(dist.sample(), action)
    torch.testing.assert_close(dist.mode(), torch.tanh(dist.mean) * dist.scale + dist.bias)
    # Gradients reach the Gaussian's parameters through the sample (reparameterisation).
    mean = dist.mean.clone().requires_grad_(True)
    log_std = dist.log_std.clone().requires_grad_(True)
    a, lp = TanhGaussian(mean, log_std, dist.scale, dist.bias).rsample()
    (a.sum() + lp.sum()).backward()
    assert mean.grad is not None and log_std.grad is not None
