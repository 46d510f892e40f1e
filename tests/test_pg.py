"""Policy-gradient plugins (reinforce, a2c, ppo, ppo-icm): returns and advantages against
hand-computed values, PPO's clipping, the policy heads against torch.distributions, the
minibatch check at the command line, and updates on real rollouts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from toolkit.agent import Rollout
from toolkit.envs import make_env
from toolkit.loops.on_policy import OnPolicyLoop
from toolkit.registry import registry
from toolkit.runs import MetricsLogger, RunSettings
from toolkit.session import build_config
from toolkit_pg.policies import (
    ActorCritic,
    categorical_entropy,
    categorical_log_prob,
    categorical_log_prob_and_entropy,
    clip_to_norm,
    gaussian_entropy,
    gaussian_log_prob,
    global_norm,
)
from toolkit_pg.ppo import Samples, clipped_surrogate, shuffled_minibatches
from toolkit_pg.returns import discounted_returns, gae, masked_mean, real_count, standardize
from toolkit_pg.spec import PPOConfig

torch.set_num_threads(1)


# --- returns and advantages -----------------------------------------------------------------

def _episodes() -> dict[str, torch.Tensor]:
    """T = 4 steps of N = 3 environments, every way a step can end.

    env 0: terminated at t=1, then a new episode still running at the rollout's end (t=3);
    env 1: truncated by a time limit at t=2, then a new episode running at the end;
    env 2: terminated at t=1, then padding (mask 0) whose rewards must be ignored.
    """
    rewards = torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0], [1.0, 2.0, 9.0], [1.0, 2.0, 9.0]])
    terminated = torch.zeros(4, 3)
    terminated[1, 0] = terminated[1, 2] = 1.0
    truncated = torch.zeros(4, 3)
    truncated[2, 1] = 1.0
    mask = torch.ones(4, 3)
    mask[2:, 2] = 0.0
    next_values = torch.tensor([[10.0, 20.0, 30.0], [11.0, 21.0, 31.0], [12.0, 22.0, 32.0], [13.0, 23.0, 33.0]])
    values = torch.full((4, 3), 2.0)
    return dict(rewards=rewards, terminated=terminated, truncated=truncated, mask=mask,
                next_values=next_values, values=values)


def test_discounted_returns_by_hand() -> None:
    e = _episodes()
    got = discounted_returns(e["rewards"], e["next_values"], e["terminated"], e["truncated"], e["mask"], gamma=0.5)
    expected = torch.tensor([
        # env 0: G1 = 1 (terminal, no bootstrap), G0 = 1 + .5*1; G3 = 1 + .5*V(s4)=1+.5*13, G2 = 1 + .5*7.5
        # env 1: G2 = 2 + .5*22 (truncated: bootstrap), G1 = 2 + .5*13, G0 = 2 + .5*8.5; G3 = 2 + .5*23
        # env 2: G1 = 1, G0 = 1.5, padding 0
        [1.5, 6.25, 1.5],
        [1.0, 8.5, 1.0],
        [4.75, 13.0, 0.0],
        [7.5, 13.5, 0.0],
    ])
    torch.testing.assert_close(got, expected)


def test_gae_by_hand() -> None:
    e = _episodes()
    got = gae(e["rewards"], e["values"], e["next_values"], e["terminated"], e["truncated"], e["mask"],
              gamma=0.5, lam=0.5)
    # delta_t = r_t + .5 (1 - term_t) V(s_{t+1}) - 2;  A_t = delta_t + .25 A_{t+1} within an episode.
    expected = torch.tensor([
        # env 0: d = 4, -1 (terminal), 5, 5.5  ->  A1 = -1, A0 = 4 - .25; A3 = 5.5, A2 = 5 + .25*5.5
        # env 1: d = 10, 10.5, 11 (truncated: bootstrapped, no carry), 11.5
        #        ->  A2 = 11, A1 = 10.5 + .25*11, A0 = 10 + .25*13.25; A3 = 11.5
        # env 2: d = 14, -1  ->  A1 = -1, A0 = 14 - .25; padding 0
        [3.75, 13.3125, 13.75],
        [-1.0, 13.25, -1.0],
        [6.375, 11.0, 0.0],
        [5.5, 11.5, 0.0],
    ])
    torch.testing.assert_close(got, expected)


def test_gae_limits() -> None:
    """lambda = 1: returns minus values; lambda = 0: one-step TD errors."""
    e = _episodes()
    # Within an episode V(s_{t+1}) is the next step's V(s_t); the telescoping sum needs that.
    e["values"] = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    e["next_values"][:-1] = torch.where(e["mask"][1:] * (1 - e["terminated"][:-1] - e["truncated"][:-1]) > 0,
                                        e["values"][1:], e["next_values"][:-1])
    args = (e["rewards"], e["values"], e["next_values"], e["terminated"], e["truncated"], e["mask"])
    returns = discounted_returns(e["rewards"], e["next_values"], e["terminated"], e["truncated"], e["mask"], gamma=0.9)
    torch.testing.assert_close(gae(*args, gamma=0.9, lam=1.0), e["mask"] * (returns - e["values"]))
    td = e["rewards"] + 0.9 * (1 - e["terminated"]) * e["next_values"] - e["values"]
    torch.testing.assert_close(gae(*args, gamma=0.9, lam=0.0), e["mask"] * td)


def test_standardize_ignores_padding() -> None:
    x = torch.tensor([[1.0, 100.0], [3.0, -50.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(standardize(x, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6, rtol=0)


def test_a_shared_count_changes_no_mean() -> None:
    """PPO sums a minibatch's mask once and hands the count to every mean: bitwise the same."""
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(6, 5, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    count = real_count(mask)
    assert torch.equal(masked_mean(x, mask, count), masked_mean(x, mask))
    assert torch.equal(standardize(x, mask, count=count), standardize(x, mask))
    assert torch.equal(masked_mean(x, torch.zeros_like(mask)), torch.tensor(0.0)), "padding alone averages to 0"


# --- PPO's clipped surrogate ----------------------------------------------------------------

def test_clipped_surrogate() -> None:
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    surrogate, rho = clipped_surrogate(ratio.log(), torch.zeros(5), advantages, clip_range=0.2)
    torch.testing.assert_close(rho, ratio.detach())
    # A > 0: no gain beyond 1 + eps; A < 0: no gain below 1 - eps; otherwise the plain ratio * A,
    # and the unclipped (pessimistic) value wherever it is the smaller one.
    torch.testing.assert_close(surrogate.detach(), torch.tensor([1.2, -1.5, 0.5, -0.8, 2.2]))
    surrogate.sum().backward()
    # Where the clip is active the objective is flat: no gradient pushes the ratio further.
    torch.testing.assert_close(ratio.grad, torch.tensor([0.0, -1.0, 1.0, 0.0, 2.0]))


# --- the policy heads -----------------------------------------------------------------------

def test_categorical_head_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 4)
    actions = torch.randint(0, 4, (5, 7))
    reference = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(categorical_log_prob(logits, actions), reference.log_prob(actions))
    torch.testing.assert_close(categorical_entropy(logits), reference.entropy())


def test_categorical_log_prob_and_entropy_from_one_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 4)
    actions = torch.randint(0, 4, (5, 7))
    log_prob, entropy = categorical_log_prob_and_entropy(logits, actions)
    assert torch.equal(log_prob, categorical_log_prob(logits, actions))
    assert torch.equal(entropy, categorical_entropy(logits))


def test_gaussian_head_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mean = torch.randn(5, 7, 3)
    log_std = torch.randn(3)
    actions = torch.randn(5, 7, 3) * 2.0
    reference = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(gaussian_entropy(log_std, torch.Size([5, 7])), reference.entropy().sum(-1))


def test_sampling_follows_the_policy() -> None:
    """Categorical samples (Gumbel-max) match softmax(logits); Gaussian ones mean and std."""
    torch.manual_seed(0)
    policy = ActorCritic(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3), PPOConfig())
    with torch.no_grad():
        policy.policy_head.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
        policy.policy_head.weight.zero_()
    actions = policy.sample(torch.zeros(50_000, 2))
    frequencies = torch.bincount(actions, minlength=3).float() / actions.numel()
    torch.testing.assert_close(frequencies, torch.tensor([0.0, 1.0, 2.0]).softmax(-1), atol=0.01, rtol=0)

    policy = ActorCritic(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-2, 2, (1,)), PPOConfig(init_log_std=-0.5))
    actions = policy.sample(torch.zeros(50_000, 2))
    mean = policy.distribution(torch.zeros(1, 2))[0]
    torch.testing.assert_close(actions.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(actions.std(0), torch.tensor([0.5]).exp() ** -1, atol=0.01, rtol=0)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("shared", [False, True])
def test_actor_critic_evaluate_matches_its_distribution(env_id: str, shared: bool) -> None:
    env = make_env(env_id)
    torch.manual_seed(0)
    agent = registry.agent("a2c").build(build_config(registry.agent("a2c"), set_items=[f"shared_network={shared}"]),
                                        env.observation_space, env.action_space, "cpu")
    policy = agent.policy
    obs = torch.randn(6, *env.observation_space.shape)
    actions = agent.act(obs)
    log_prob, entropy, value = policy.evaluate(obs, actions)
    params = policy.distribution(obs)
    if policy.discrete:
        dist = torch.distributions.Categorical(logits=params)
        torch.testing.assert_close(log_prob, dist.log_prob(actions))
    else:
        dist = torch.distributions.Independent(torch.distributions.Normal(params, policy.log_std.exp()), 1)
        torch.testing.assert_close(log_prob, dist.log_prob(actions))
        # the deterministic action stays inside the bounds even where the mean does not
        far = policy.mode(obs * 1e3)
        assert (far <= policy.action_high).all() and (far >= policy.action_low).all()
    torch.testing.assert_close(entropy, dist.entropy())
    torch.testing.assert_close(value, policy.value(obs))
    assert (policy.critic_torso is policy.actor_torso) == shared


# --- the PPO update's building blocks --------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_gradient_clipping_is_torchs_bitwise(max_norm: float) -> None:
    """The agents' clipping skips clip_grad_norm_'s per-call grouping, nothing else."""
    torch.manual_seed(0)
    grads = [torch.randn(64, 8) * 3, torch.randn(64), torch.randn(2, 64), torch.randn(2)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    ours = [g.clone() for g in grads]
    norm = global_norm(ours)
    clip_to_norm(ours, norm, max_norm)
    assert torch.equal(norm, expected_norm)
    assert all(torch.equal(a, p.grad) for a, p in zip(ours, params))


@pytest.mark.parametrize("size, count", [(64, 4), (23, 3)])  # equal minibatches, and complete_episodes' unequal ones
def test_shuffled_minibatches_index_each_sample_once(size: int, count: int) -> None:
    """An epoch gathers every column once in a random order and splits it: the minibatches are
    those of indexing each column with ``randperm(size).tensor_split(count)`` (the same draw)."""
    columns = [torch.arange(size).float() * (k + 1) for k in range(len(Samples._fields))]
    columns[0] = torch.randn(size, 3, 2)  # observations keep their shape
    samples = Samples(*columns)
    torch.manual_seed(5)
    got = list(shuffled_minibatches(samples, count))
    torch.manual_seed(5)
    expected = [Samples(*(c[idx] for c in samples)) for idx in torch.randperm(size).tensor_split(count)]
    assert len(got) == count
    for batch, reference in zip(got, expected, strict=True):
        for a, b in zip(batch, reference, strict=True):
            assert torch.equal(a, b)
    assert torch.equal(torch.cat([b.mask for b in got]).sort().values, samples.mask)


def test_a_zero_entropy_weight_leaves_the_loss_and_gradient_unchanged() -> None:
    """With ent_coef = 0 the entropy term is left out of the graph rather than weighted by 0."""
    env = make_env("CartPole-v1")
    spec = registry.agent("ppo")
    torch.manual_seed(0)
    agent = spec.build(build_config(spec), env.observation_space, env.action_space, "cpu")
    obs = torch.randn(16, 4)
    actions = agent.act(obs)

    def loss_and_grads(weighted_by_zero: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        agent.optimizer.zero_grad(set_to_none=True)
        log_prob, entropy, values = agent.policy.evaluate(obs, actions)
        policy_loss, value_loss, entropy_mean = -log_prob.mean(), values.pow(2).mean(), entropy.mean()
        if weighted_by_zero:  # the loss as written before: the entropy term in the graph, times 0
            loss = policy_loss + agent.config.vf_coef * value_loss - 0.0 * entropy_mean
        else:
            loss = agent.actor_critic_loss(policy_loss, value_loss, entropy_mean)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in agent.policy.parameters() if p.grad is not None]

    assert agent.config.ent_coef == 0.0
    loss, grads = loss_and_grads(weighted_by_zero=False)
    reference_loss, reference_grads = loss_and_grads(weighted_by_zero=True)
    assert torch.equal(loss, reference_loss)
    assert len(grads) == len(reference_grads)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads))


# --- configuration and the command line -----------------------------------------------------

def test_spec_module_does_not_import_torch() -> None:
    code = "import sys, toolkit_pg.spec; assert 'torch' not in sys.modules, 'spec imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minibatch_advice_suggests_sizes_that_work() -> None:
    with pytest.raises(ValueError) as info:
        PPOConfig(num_envs=8, rollout_steps=100, minibatch_size=64).validate()
    message = str(info.value)
    assert "800" in message and "minibatch_size" in message
    for size in (32, 40, 50, 80):
        assert f"{size} ({800 // size} minibatches)" in message
        PPOConfig(num_envs=8, rollout_steps=100, minibatch_size=size).validate()
    assert "multiple of 8 (the next one is 104)" in message
    PPOConfig(num_envs=8, rollout_steps=104, minibatch_size=64).validate()


def test_minibatch_error_at_the_command_line(cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli("train", "ppo", "--env", "CartPole-v1", "--set", "num_envs=8", "--set", "rollout_steps=100",
                 "--run-dir", run_dir, "--no-progress")
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "Invalid config" in text and "minibatch_size=64" in text and "800" in text
    assert text.count(". ") == 0 and text.endswith("."), "one sentence"
    assert not run_dir.exists()


# --- updates on real rollouts ---------------------------------------------------------------

def _rollout(name: str, env_id: str, tmp_path: Path, set_items: list[str]) -> tuple[object, Rollout]:
    """An agent built from its (overridden) defaults and one rollout from the framework's loop."""
    spec = registry.agent(name)
    config = build_config(spec, set_items=set_items)
    env = make_env(env_id)
    torch.manual_seed(0)
    agent = spec.build(config, env.observation_space, env.action_space, "cpu")
    loop = OnPolicyLoop(agent, config, RunSettings(agent=name, env=env_id), lambda: make_env(env_id),
                        tmp_path, torch.device("cpu"), progress=False)
    loop.logger = MetricsLogger(tmp_path, tensorboard=False)
    try:
        return agent, loop.collect()
    finally:
        loop.logger.close()


SMALL = {
    "reinforce": ["num_envs=2", "hidden_sizes=16"],
    "a2c": ["num_envs=2", "hidden_sizes=16", "advantage=gae", "lr_schedule=linear", "lr_decay_steps=30"],
    "ppo": ["num_envs=2", "rollout_steps=32", "minibatch_size=16", "epochs=2", "hidden_sizes=16",
            "clip_range_vf=0.2", "normalize_obs=true"],
    "ppo-icm": ["num_envs=2", "rollout_steps=32", "minibatch_size=16", "epochs=2", "hidden_sizes=16",
                "curiosity.hidden_size=16", "curiosity.feature_dim=8"],
}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("name", list(SMALL))
def test_update_on_a_rollout_and_resume_exactly(name: str, env_id: str, tmp_path: Path) -> None:
    """Finite 0-dim metrics, the parameters move, and a checkpointed copy updates identically."""
    agent, rollout = _rollout(name, env_id, tmp_path, SMALL[name])
    if name == "reinforce":  # whole episodes: each env's last real step ends its episode
        last = rollout.mask.sum(0).long() - 1
        ended = (rollout.terminated + rollout.truncated)[last, torch.arange(rollout.mask.shape[1])]
        assert (ended == 1).all()
    before = [p.detach().clone() for p in agent.policy.parameters()] if name != "ppo-icm" else None

    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    spec = registry.agent(name)
    env = make_env(env_id)
    torch.manual_seed(1)
    twin = spec.build(agent.config if name != "ppo-icm" else agent.agent.config, env.observation_space, env.action_space, "cpu")
    twin.load_state_dict(torch.load(buffer, weights_only=True))

    for _ in range(2):  # the second update also checks the optimiser and normaliser states
        torch.manual_seed(7)
        metrics = agent.update(rollout)
        torch.manual_seed(7)
        twin_metrics = twin.update(rollout)
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert torch.isfinite(value), key
        torch.testing.assert_close(value, twin_metrics[key], msg=key)
    if before is not None:
        assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
    if name == "a2c":  # linear decay over 30 env steps, 2 updates of 2 envs x 5 steps done
        assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(7e-4 * (1 - 20 / 30))
        assert twin.optimizer.param_groups[0]["lr"] == agent.optimizer.param_groups[0]["lr"]
    obs = torch.randn(4, *env.observation_space.shape)
    assert torch.equal(agent.act(obs, deterministic=True), twin.act(obs, deterministic=True))


def test_ppo_icm_reports_intrinsic_and_extrinsic_rewards(tmp_path: Path) -> None:
    agent, rollout = _rollout("ppo-icm", "CartPole-v1", tmp_path, SMALL["ppo-icm"])
    metrics = agent.update(rollout)
    for key in ("intrinsic_reward", "extrinsic_reward", "icm_loss", "policy_loss", "approx_kl"):
        assert key in metrics and metrics[key].dim() == 0 and torch.isfinite(metrics[key]), key
    torch.testing.assert_close(metrics["extrinsic_reward"], rollout.rewards.mean())  # CartPole pays 1 per step
    assert metrics["intrinsic_reward"] > 0


def test_observation_statistics_are_checkpointed(tmp_path: Path) -> None:
    agent, rollout = _rollout("ppo", "Pendulum-v1", tmp_path, SMALL["ppo"])
    agent.update(rollout)
    state = agent.state_dict()["policy"]
    real = rollout.obs.reshape(-1, 3)
    torch.testing.assert_close(state["obs_norm.mean"], real.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state["obs_norm.var"], real.var(0, unbiased=False), atol=1e-3, rtol=1e-3)


def test_ppo_handles_complete_episodes_with_padding(tmp_path: Path) -> None:
    agent, rollout = _rollout("ppo", "CartPole-v1", tmp_path,
                              ["num_envs=3", "rollout_steps=5", "minibatch_size=7", "complete_episodes=true"])
    assert (rollout.mask == 0).any()
    metrics = agent.update(rollout)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_lunar_lander_trains_evaluates_and_resumes_from_the_command_line(cli, tmp_path: Path) -> None:
    """Box2D's LunarLander-v3 works out of the box with the box2d extra (issue: it must)."""
    run = tmp_path / "lunar"
    small = ["--set", "num_envs=2", "--set", "rollout_steps=64", "--set", "minibatch_size=32", "--set", "hidden_sizes=16"]
    trained = cli("train", "ppo", "--env", "LunarLander-v3", "--steps", "256", "--run-dir", run, "--no-progress", *small)
    assert trained.exit_code == 0, trained.output
    assert (run / "checkpoints").is_dir() and (run / "metrics.jsonl").exists()
    evaluated = cli("eval", run, "--episodes", "1")
    assert evaluated.exit_code == 0, evaluated.output
    assert "return" in evaluated.output.lower()
    resumed = cli("resume", run, "--steps", "512", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["counters"]["step"] == 512
    assert any(json.loads(line)["kind"] == "episode" for line in (run / "metrics.jsonl").read_text().splitlines())
