"""Observation encoders (toolkit/nn/encoders.py) and the agents that read observations through them:
shapes in both image layouts, the IMPALA torso, pretrained autoencoder runs (frozen and
fine-tuned), DrQ's shift augmentation and encoder gradients in SAC, and every online agent
building and learning on image observations."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toolkit.agent import Batch, Rollout
from toolkit.config import from_dict, to_dict
from toolkit.configs import CuriosityConfig
from toolkit.curiosity import CuriousAgent
from toolkit.envs import check_agent_fits
from toolkit.errors import ToolkitError
from toolkit.nn.conv import ImpalaCNN, ImpalaResidualBlock, ImpalaStage, channels_last
from toolkit.nn.encoders import PretrainedEncoder, make_encoder, random_shift
from toolkit.registry import registry
from toolkit_sac.sac import SAC
from toolkit_sac.spec import SACConfig

LAST, FIRST = (84, 84, 9), (9, 84, 84)  # three stacked RGB frames, channels-last and channels-first
WIDTHS = {"mlp": 84 * 84 * 9, "nature": 64 * 7 * 7, "impala": 256, "auto": 64 * 7 * 7}
BOX_ACTIONS = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _pixels(shape: tuple[int, ...]) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, shape, np.uint8)


def _frames(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _image_batch(shape: tuple[int, ...], actions: gym.Space, n: int = 8) -> Batch:
    act = torch.randint(0, int(actions.n), (n,)) if isinstance(actions, gym.spaces.Discrete) else torch.rand(n, 2) * 2 - 1
    obs = _frames(n, shape, 1)
    return Batch(obs, act, torch.randn(n, 1), _frames(n, shape, 2), torch.zeros(n, 1), obs.unsqueeze(1))


# --- shapes and layouts -----------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["mlp", "nature", "impala", "auto"])
def test_each_encoder_reads_stacked_frames_in_either_layout(choice: str) -> None:
    frames = _frames(2, LAST)
    features = {}
    for shape, obs in ((LAST, frames), (FIRST, frames.permute(0, 3, 1, 2))):
        torch.manual_seed(0)  # the same weights for both layouts
        encoder = make_encoder(choice, _pixels(shape))
        assert encoder.out_dim == WIDTHS[choice] and encoder.image
        assert encoder.channels_last == (shape == LAST)
        features[shape] = encoder(obs)
        assert features[shape].shape == (2, WIDTHS[choice]) and features[shape].dtype == torch.float32
        # Any leading dimensions (an on-policy rollout's [T, N]) are folded in and back out.
        assert encoder(obs.reshape(1, 2, *shape)).shape == (1, 2, WIDTHS[choice])
    # Bytes are scaled inside, and the layout is only a layout: the same frames give the same features.
    torch.testing.assert_close(features[LAST], features[FIRST])
    torch.testing.assert_close(encoder(frames.permute(0, 3, 1, 2).float() / 255.0), features[FIRST])


def test_layouts_are_told_apart_by_the_smaller_outer_dimension() -> None:
    for shape in [(9, 84, 84), (4, 84, 84), (3, 64, 64), (1, 8, 8), (12, 96, 96)]:
        assert not channels_last(shape), shape
    for shape in [(84, 84, 9), (84, 84, 4), (64, 64, 3), (210, 160, 3), (16, 16, 12)]:
        assert channels_last(shape), shape


def test_vectors_pass_through_unchanged() -> None:
    encoder = make_encoder("auto", gym.spaces.Box(-1, 1, (5,), np.float32))
    x = torch.randn(3, 5)
    assert encoder.kind == "mlp" and encoder.out_dim == 5 and not list(encoder.parameters())
    assert torch.equal(encoder(x), x)
    ram = make_encoder("mlp", gym.spaces.Box(0, 255, (128,), np.uint8))  # byte vectors are not pixels
    bytes_ = torch.randint(0, 256, (2, 128), dtype=torch.uint8)
    assert torch.equal(ram(bytes_), bytes_.float())


def test_unfit_choices_are_one_sentence() -> None:
    with pytest.raises(ToolkitError, match="encoder=nature needs image observations.*use encoder=mlp"):
        make_encoder("nature", gym.spaces.Box(-1, 1, (5,), np.float32))
    with pytest.raises(ToolkitError, match="at least 36x36 pixels.*use encoder=impala"):
        make_encoder("nature", _pixels((32, 32, 9)))
    # auto gives small frames the torso that takes them.
    assert make_encoder("auto", _pixels((32, 32, 9))).kind == "impala"
    with pytest.raises(ValueError, match="must be one of auto, mlp, nature, impala.*Did you mean 'nature'"):
        SACConfig(encoder="natur").validate()


# --- IMPALA -----------------------------------------------------------------------------------


def test_impala_cnn_has_three_residual_stages() -> None:
    torch.manual_seed(0)
    net = ImpalaCNN(FIRST)
    stages = list(net.stages)
    assert [s.conv.out_channels for s in stages] == [16, 32, 32]
    assert stages[0].conv.in_channels == 9
    for stage in stages:
        assert isinstance(stage, ImpalaStage)
        assert (stage.pool.kernel_size, stage.pool.stride) == (3, 2)
        assert isinstance(stage.res0, ImpalaResidualBlock) and isinstance(stage.res1, ImpalaResidualBlock)
    # Each stage halves the side, rounding up: 84 -> 42 -> 21 -> 11; then one linear layer.
    x = net.input(_frames(2, FIRST))
    sides = []
    for stage in stages:
        x = stage(x)
        sides.append(x.shape[-1])
    assert sides == [42, 21, 11] and net.head.in_features == 32 * 11 * 11 and net.out_dim == 256

    # A residual block adds conv(relu(conv(relu(x)))) to its input ...
    block = stages[1].res0
    h = torch.randn(2, 32, 21, 21)
    torch.testing.assert_close(block(h), h + block.conv1(torch.relu(block.conv0(torch.relu(h)))))
    # ... so with its last convolution at zero it is the identity.
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv1.bias.zero_()
    assert torch.equal(block(h), h)


# --- DrQ's random shift -----------------------------------------------------------------------


@pytest.mark.parametrize("last", [True, False])
def test_random_shift_moves_content_at_most_four_pixels(last: bool) -> None:
    torch.manual_seed(0)
    n, side = 64, 20
    # Every pixel holds its own (row, column) code, so each output pixel says where it came from.
    codes = torch.arange(side * side).reshape(side, side)
    images = torch.stack([codes // side, codes % side], 0).expand(n, 2, side, side)  # [n, C=2, H, W]
    images = images.permute(0, 2, 3, 1) if last else images
    shifted = random_shift(images.to(torch.uint8), 4, channels_last=last)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    chw = (shifted.permute(0, 3, 1, 2) if last else shifted).long()
    dy, dx = chw[:, 0, 10, 10] - 10, chw[:, 1, 10, 10] - 10  # the centre's source
    assert dy.abs().max() <= 4 and dx.abs().max() <= 4
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 10  # each image draws its own shift
    # It is exactly "replicate-pad by 4, crop back at a random offset".
    original = (images.permute(0, 3, 1, 2) if last else images).float()
    padded = F.pad(original, (4, 4, 4, 4), mode="replicate")
    for i in range(n):
        top, left = 4 + int(dy[i]), 4 + int(dx[i])
        assert torch.equal(chw[i].float(), padded[i, :, top:top + side, left:left + side])


def test_shift_leaves_batch_dimensions_alone() -> None:
    x = _frames(6, (12, 12, 6)).reshape(2, 3, 12, 12, 6)
    assert random_shift(x, 4, channels_last=True).shape == x.shape


# --- SAC on pixels (DrQ) ----------------------------------------------------------------------


def _sac(shape: tuple[int, ...], **settings) -> SAC:
    torch.manual_seed(0)
    return SAC(SACConfig(hidden_sizes=(32,), **settings), _pixels(shape), BOX_ACTIONS)


def test_sac_actor_loss_leaves_the_shared_encoder_alone() -> None:
    agent = _sac((16, 16, 9), encoder="impala")
    critic_loss, actor_loss, _, _ = agent.losses(_image_batch((16, 16, 9), BOX_ACTIONS))
    encoder = list(agent.encoder.parameters())
    actor_loss.backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in encoder), "the actor's loss reached the encoder"
    assert any(p.grad is not None and p.grad.any() for p in agent.actor.parameters())
    critic_loss.backward()
    assert all(p.grad is not None for p in encoder) and any(p.grad.any() for p in encoder)


def test_sac_target_encoder_follows_by_polyak_averaging() -> None:
    agent = _sac((16, 16, 9), encoder="impala", tau=0.1)
    assert agent.target_encoder is not agent.encoder and agent.augment
    online0 = [p.detach().clone() for p in agent.encoder.parameters()]
    target0 = [p.detach().clone() for p in agent.target_encoder.parameters()]
    agent.update(_image_batch((16, 16, 9), BOX_ACTIONS))
    for before, target, online in zip(target0, agent.target_encoder.parameters(), agent.encoder.parameters()):
        torch.testing.assert_close(target, 0.9 * before + 0.1 * online)
    assert any(not torch.equal(a, b) for a, b in zip(online0, agent.encoder.parameters()))
    assert {"encoder", "target_encoder"} <= set(agent.state_dict())


def test_sac_on_vectors_has_no_encoder_state() -> None:
    agent = SAC(SACConfig(), gym.spaces.Box(-1, 1, (3,), np.float32), BOX_ACTIONS)
    assert agent.target_encoder is agent.encoder and not agent.augment
    assert set(agent.state_dict()) == {"actor", "critic", "target_critic", "log_alpha", "optimizer"}


# --- pretrained autoencoder runs --------------------------------------------------------------


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """An ae trained for a few steps on 40 16x16 Pendulum frames, through the CLI."""
    from typer.testing import CliRunner

    from toolkit.cli import app
    from toolkit.data.frames import record_frames

    root = tmp_path_factory.mktemp("encoder")
    frames = root / "pendulum.h5"
    record_frames("Pendulum-v1", 40, 16, frames, progress=False)
    run_dir = root / "ae"
    args = ["train", "ae", "--dataset", str(frames), "--steps", "20", "--run-dir", str(run_dir), "--no-progress",
            "--set", "hidden_sizes=32", "--set", "batch_size=16", "--set", "latent_dim=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run_dir


def test_pretrained_encoder_encodes_each_stacked_frame(ae_run: Path) -> None:
    state = torch.get_rng_state()
    encoder = make_encoder(str(ae_run), _pixels((16, 16, 9)))
    assert torch.equal(state, torch.get_rng_state()), "opening the run must not reseed the agent's stream"
    assert isinstance(encoder, PretrainedEncoder) and encoder.frames == 3 and encoder.out_dim == 3 * 8
    obs = _frames(4, (16, 16, 9))
    frames = obs.permute(0, 3, 1, 2).float().div(255.0).reshape(12, 3, 16, 16)
    torch.testing.assert_close(encoder(obs), encoder.model.encode(frames).reshape(4, 24))
    first = make_encoder(str(ae_run), _pixels((9, 16, 16)))  # the channels-first stack reads the same
    torch.testing.assert_close(first(obs.permute(0, 3, 1, 2)), encoder(obs))


@pytest.mark.parametrize("trainable", [False, True])
def test_frozen_encoders_stay_fixed_and_trainable_ones_learn(ae_run: Path, trainable: bool) -> None:
    agent = _sac((16, 16, 9), encoder=str(ae_run), encoder_trainable=trainable)
    before = {k: v.clone() for k, v in agent.encoder.state_dict().items()}
    assert agent.encoder.training == trainable
    assert all(p.requires_grad == trainable for p in agent.encoder.parameters())
    agent.update(_image_batch((16, 16, 9), BOX_ACTIONS))
    changed = [not torch.equal(before[k], v) for k, v in agent.encoder.state_dict().items()]
    assert any(changed) if trainable else not any(changed)
    assert "encoder" in agent.state_dict()  # saved either way: the run's weights, or fine-tuned ones
    agent.encoder.train()  # a frozen encoder stays in evaluation mode
    assert agent.encoder.training == trainable


def test_an_encoder_of_another_frame_size_is_refused_in_one_sentence(ae_run: Path) -> None:
    with pytest.raises(ToolkitError) as info:
        make_encoder(str(ae_run), _pixels((32, 32, 9)))
    message = str(info.value)
    assert message == (
        f"encoder run {ae_run} was trained on images of shape (3, 16, 16), but this environment observes "
        "(3, 32, 32) frames (observations of shape (32, 32, 9)); train an encoder on frames of that size."
    )
    with pytest.raises(ToolkitError, match="encodes images, but this environment observes vectors"):
        make_encoder(str(ae_run), gym.spaces.Box(-1, 1, (3,), np.float32))
    SACConfig(encoder=str(ae_run)).validate()  # a run directory is a valid choice


@pytest.mark.parametrize("name", ["dqn", "ppo"])
def test_dqn_and_ppo_read_a_frozen_pretrained_encoder(ae_run: Path, name: str) -> None:
    spec = registry.agent(name)
    config = dataclasses.replace(_small(spec.config()), encoder=str(ae_run), encoder_trainable=False)
    actions = gym.spaces.Discrete(3)
    torch.manual_seed(0)
    agent = spec.build(config, _pixels((16, 16, 9)), actions, "cpu")
    encoder = agent.q.encoder if name == "dqn" else agent.policy.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _learn_once(agent, spec.kind, (16, 16, 9), actions)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


# --- every online agent on images -------------------------------------------------------------

ONLINE = ["sac", "sac-icm", "dqn", "dqn-icm", "ppo", "ppo-icm", "a2c", "reinforce"]


def _small(config):
    """A config small enough for a rollout of 2 envs x 4 steps in one minibatch."""
    sizes = {"num_envs": 2, "rollout_steps": 4, "minibatch_size": 8, "epochs": 1, "hidden_sizes": (16,)}
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in sizes.items() if k in names})


def _learn_once(agent, kind: str, shape: tuple[int, ...], actions: gym.Space) -> dict[str, torch.Tensor]:
    if kind == "off-policy":
        return agent.update(_image_batch(shape, actions))
    steps, envs = 4, 2
    obs = _frames(steps * envs, shape, 3).reshape(steps, envs, *shape)
    acted = agent.act(obs.reshape(-1, *shape)).reshape(steps, envs, *agent.act(obs[0]).shape[1:])
    zeros = torch.zeros(steps, envs)
    rollout = Rollout(obs, acted, torch.randn(steps, envs), zeros, zeros.clone(), _frames(steps * envs, shape, 4).reshape(obs.shape),
                      torch.ones(steps, envs))
    return agent.update(rollout)


@pytest.mark.parametrize("name", ONLINE)
@pytest.mark.parametrize("shape", [(40, 40, 6), (6, 40, 40)])
def test_online_agents_learn_on_image_observations(name: str, shape: tuple[int, ...]) -> None:
    spec = registry.agent(name)
    actions = BOX_ACTIONS if "discrete" not in spec.action_spaces else gym.spaces.Discrete(3)
    env = SimpleNamespace(observation_space=_pixels(shape), action_space=actions)
    check_agent_fits(spec, "PixelsFake-v0", env)  # images are accepted
    torch.manual_seed(0)
    agent = spec.build(_small(spec.config()), env.observation_space, actions, "cpu")
    acted = agent.act(_frames(3, shape))
    assert acted.shape[0] == 3
    metrics = _learn_once(agent, spec.kind, shape, actions)
    assert metrics and all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())


def test_offline_agents_still_refuse_images() -> None:
    env = SimpleNamespace(observation_space=_pixels(LAST), action_space=BOX_ACTIONS)
    offline = [s for s in registry.agents() if s.kind == "offline"]
    assert offline
    for spec in offline:
        with pytest.raises(ToolkitError, match="observations"):
            check_agent_fits(spec, "PixelsFake-v0", env)


@pytest.mark.parametrize("choice", ["mlp", "impala"])
def test_curiosity_takes_its_own_encoder(choice: str) -> None:
    shape = (16, 16, 6)
    inner = SAC(SACConfig(hidden_sizes=(16,), encoder="mlp"), _pixels(shape), BOX_ACTIONS)
    config = CuriosityConfig(encoder=choice, encoder_trainable=False, feature_dim=8, hidden_size=16)
    agent = CuriousAgent(inner, _pixels(shape), BOX_ACTIONS, config)
    encoder = agent.icm.encoder[0]
    assert encoder.kind == choice and agent.icm.encoder[1][-1].out_features == 8
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    metrics = agent.update(_image_batch(shape, BOX_ACTIONS))
    assert torch.isfinite(metrics["intrinsic_reward"])
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # frozen: random features
    optimised = {id(p) for group in agent.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in encoder.parameters())


@pytest.mark.parametrize("name", ONLINE)
def test_saved_configs_without_encoder_keys_still_load(name: str) -> None:
    spec = registry.agent(name)
    saved = to_dict(spec.config())
    for key in ("encoder", "encoder_trainable", "augment"):
        saved.pop(key, None)
    if "curiosity" in saved:
        saved["curiosity"] = {k: v for k, v in saved["curiosity"].items() if not k.startswith("encoder")}
    config = from_dict(spec.config, saved)
    assert config.encoder == "auto" and config.encoder_trainable


def test_an_encoder_run_is_recorded_by_absolute_path(ae_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.registry import registry
    from toolkit.session import build_config

    monkeypatch.chdir(ae_run.parent)
    config = build_config(registry.agent("sac"), set_items=[f"encoder={ae_run.name}"])
    assert config.encoder == str(ae_run.resolve())
