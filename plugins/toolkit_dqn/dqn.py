"""Deep Q-Network (Mnih et al. 2015, "Human-level control through deep reinforcement learning").

DQN learns the optimal action-value function ``Q*(s, a)`` from replayed transitions by
regressing ``Q_theta(s, a)`` on the one-step Bellman target

    y = r + gamma (1 - done) max_a' Q_theta'(s', a')

computed with a *target network* ``theta'`` that follows the online network slowly (a hard copy
every ``target_update_interval`` gradient steps, or Polyak averaging), under the Huber loss.
It acts epsilon-greedily, with epsilon decaying linearly from ``exploration_initial_eps`` to
``exploration_final_eps``.

Refinements, each a config option:

* Double DQN (van Hasselt et al. 2016, on by default): the online network *chooses* the next
  action and the target network *values* it, ``y = r + gamma (1 - done) Q_theta'(s', argmax_a'
  Q_theta(s', a'))``, which removes most of max's overestimation bias.
* Dueling head (Wang et al. 2016): ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')``.
* n-step returns (Sutton 1988; Hessel et al. 2018): ``y = sum_{i<k} gamma^i r_{t+i} +
  gamma^k (1 - done) Q'(s_{t+k}, .)`` with ``k <= n`` cut short at an episode's end. The agent
  sets :attr:`~toolkit.agent.Agent.n_step` and the framework's replay buffer hands it the
  window (``Batch.window_*``). The window's later steps were chosen by an older policy; like
  Rainbow, DQN does not correct for that.

Observations go through the encoder ``encoder=...`` names (:func:`toolkit.nn.encoders.make_encoder`):
by default vectors straight into the MLP, and images (``uint8``, channels first as Atari frame
stacks are, or channels last) through the Nature-DQN convolutional encoder, scaled by 1/255
inside the network so the replay buffer keeps compact bytes; ``impala`` or a pretrained
autoencoder run instead. The encoder is part of the Q-network, so the target network has its
own copy, updated with the rest.

Speed notes (``docs/speed.md``): :meth:`DQN.update` is pure tensor code with no read-back to the
host (``tests/test_sync_free.py`` counts them); even the periodic hard target update is
branch-free (a lerp whose weight is 0 or ``tau``), so the update can be wrapped in
``torch.compile`` or captured in a CUDA graph (``--compile``).
"""

from __future__ import annotations

import copy
import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.agent import Agent, Batch
from toolkit.curiosity import CuriousAgent
from toolkit.errors import ToolkitError
from toolkit.nn import fast_adam_options, mlp
from toolkit.nn.encoders import make_encoder
from toolkit_dqn.spec import DQNConfig, DQNICMConfig


# --- networks ---------------------------------------------------------------------------------


def _hidden_layers(in_dim: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Linear + ReLU for each width (no output layer)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers)


class QNetwork(nn.Module):
    """``Q(s, .)`` for every action at once: an encoder, then a plain or dueling head.

    The dueling head splits the last hidden layer into a value stream ``V(s)`` and an
    advantage stream ``A(s, a)``, combined as ``V + A - mean_a A`` (Wang et al. 2016, eq. 9):
    subtracting the mean makes ``V`` and ``A`` identifiable without changing ``argmax Q``.
    """

    def __init__(
        self, observation_space: gym.spaces.Box, n_actions: int, config: DQNConfig, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        # Pixels reach the encoder as bytes (it scales them); vectors, even byte-valued ones such
        # as Atari RAM, leave it as floats.
        self.encoder = make_encoder(config.encoder, observation_space, device, config.encoder_trainable)
        in_dim = self.encoder.out_dim
        hidden = tuple(config.cnn_hidden_sizes if self.encoder.convolutional else config.hidden_sizes)
        self.dueling = config.dueling
        if self.dueling:
            self.trunk = _hidden_layers(in_dim, hidden[:-1])
            trunk_dim = hidden[-2] if len(hidden) > 1 else in_dim
            self.value = mlp(trunk_dim, hidden[-1:], 1)
            self.advantage = mlp(trunk_dim, hidden[-1:], n_actions)
        else:
            self.head = mlp(in_dim, hidden, n_actions)
        # Start the output layers without a bias, so a fresh network has no built-in preference
        # among actions: its greedy choice then depends on the observation, not on the init.
        for layer in (self.value[-1], self.advantage[-1]) if self.dueling else (self.head[-1],):
            nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.encoder(obs)
        if not self.dueling:
            return self.head(features)
        h = self.trunk(features)
        advantage = self.advantage(h)
        return self.value(h) + advantage - advantage.mean(-1, keepdim=True)


# --- the agent --------------------------------------------------------------------------------


class DQN(Agent):
    """Deep Q-Network for discrete actions, with vector or image observations."""

    def __init__(
        self,
        config: DQNConfig,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Discrete,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ToolkitError(f"dqn needs a discrete action space, got {action_space}; try sac for continuous actions.")
        if not isinstance(observation_space, gym.spaces.Box):
            raise ToolkitError(f"dqn needs Box (vector or image) observations, got {observation_space}.")
        self.config = config
        self.device = torch.device(device)
        self.n_actions = int(action_space.n)
        self.action_start = int(action_space.start)  # Discrete(n, start=s) acts in s..s+n-1
        # The replay buffer attaches an n-step window to each batch when this is above 1.
        self.n_step = config.n_step

        self.q = QNetwork(observation_space, self.n_actions, config, self.device).to(self.device)
        self.q_target = copy.deepcopy(self.q)
        self.q_target.requires_grad_(False)
        # A frozen encoder's parameters stay out of the optimiser and the gradient clipping.
        trained = [p for p in self.q.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trained, lr=config.lr, **fast_adam_options(self.device))
        # Optional linear learning-rate decay: late in training a smaller step keeps a good
        # Q-function from being knocked over by the noise of its own bootstrapped targets.
        final_factor = 1.0 if config.lr_final is None else config.lr_final / config.lr
        self.lr_schedule = torch.optim.lr_scheduler.LinearLR(
            self.optimizer, start_factor=1.0, end_factor=final_factor, total_iters=config.lr_decay_updates
        )
        self._trained_params = trained
        self._online_params = list(self.q.parameters())
        self._target_params = list(self.q_target.parameters())

        # Counters live on the device as tensors: the epsilon schedule and the target-update
        # period read them without a host sync, and checkpoints restore them exactly.
        self.acting_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self.updates = torch.zeros((), dtype=torch.int64, device=self.device)

        self.checkpointed = {
            "q": self.q,
            "q_target": self.q_target,
            "optimizer": self.optimizer,
            "lr_schedule": self.lr_schedule,
            "acting_steps": self.acting_steps,
            "updates": self.updates,
        }
        # Acting needs the online network and the epsilon schedule's counter.
        self.policy_keys = ("q", "acting_steps")

    # --- acting -------------------------------------------------------------------------------

    def epsilon(self) -> torch.Tensor:
        """The linear schedule: ``eps_0 + (eps_final - eps_0) * min(1, steps / exploration_steps)``."""
        cfg = self.config
        if cfg.exploration_steps == 0:
            progress = torch.ones((), device=self.device)
        else:
            progress = (self.acting_steps.float() / cfg.exploration_steps).clamp(max=1.0)
        return cfg.exploration_initial_eps + (cfg.exploration_final_eps - cfg.exploration_initial_eps) * progress

    def prunable_modules(self) -> dict[str, torch.nn.Module]:
        """The online Q-network, which acts greedily (the target copy follows it)."""
        return {"q": self.q}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The greedy action ``argmax_a Q(s, a)``; epsilon-greedy unless ``deterministic``."""
        greedy = self.q(obs).argmax(-1)
        if not deterministic:
            b = greedy.shape[0]
            # Drawn from torch's global CPU generator, which the framework seeds and checkpoints,
            # so a resumed run explores exactly as an uninterrupted one (on a GPU too).
            explore = torch.rand(b).to(self.device) < self.epsilon()
            random_action = torch.randint(self.n_actions, (b,)).to(self.device)
            greedy = torch.where(explore, random_action, greedy)
            self.acting_steps += b
        return greedy + self.action_start

    def record_acting(self, steps: int) -> None:
        """Advance the epsilon schedule by ``steps`` actions a Ray env runner's copy took."""
        self.acting_steps += steps

    # --- learning -----------------------------------------------------------------------------

    @torch.no_grad()
    def td_target(self, batch: Batch) -> torch.Tensor:
        """The bootstrapped target ``y = R + gamma^k (1 - done) Q_theta'(s_{t+k}, a*)``, ``[B, 1]``.

        ``a* = argmax_a Q_theta(s_{t+k}, a)`` with Double DQN, ``argmax_a Q_theta'(s_{t+k}, a)``
        (so ``max_a Q_theta'``) without; ``k = 1`` and ``R = r_t`` for a 1-step :class:`Batch`.
        """
        cfg = self.config
        rewards = batch.rewards.clamp(-1.0, 1.0) if cfg.clip_rewards else batch.rewards

        # What to bootstrap from: (s', gamma, done) for 1-step, (s_{t+k}, gamma^k, done_k) for n-step.
        window = batch.window_rewards
        if window is None:
            returns, bootstrap_obs, dones = rewards, batch.next_obs, batch.dones
            discount = torch.full_like(rewards, cfg.gamma)
        else:
            # R = r_t + gamma r_{t+1} + ... + gamma^{k-1} r_{t+k-1}. The first reward is taken from
            # `rewards`, so a wrapper that relabels it (curiosity) or clipping reaches it too.
            later = window[:, 1:].clamp(-1.0, 1.0) if cfg.clip_rewards else window[:, 1:]
            window = torch.cat([rewards, later], dim=-1)
            powers = torch.arange(window.shape[-1], device=window.device, dtype=window.dtype)
            returns = (window * cfg.gamma**powers).sum(-1, keepdim=True)
            bootstrap_obs, dones = batch.window_next_obs, batch.window_dones
            discount = cfg.gamma**batch.window_length

        next_q_target = self.q_target(bootstrap_obs)
        if cfg.double_q:  # Double DQN: the online network picks a*, the target network values it
            next_action = self.q(bootstrap_obs).argmax(-1, keepdim=True)
        else:  # Nature DQN: max_a Q_theta'(s', a)
            next_action = next_q_target.argmax(-1, keepdim=True)
        next_value = next_q_target.gather(-1, next_action)
        return returns + discount * (1.0 - dones) * next_value

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on the Huber loss to the (Double, n-step) Bellman target."""
        cfg = self.config
        actions = (batch.actions.long() - self.action_start).reshape(-1, 1)
        target = self.td_target(batch)

        # Huber loss (Nature DQN clips the TD error's gradient to [-1, 1], which is this loss).
        q = self.q(batch.obs).gather(-1, actions)
        loss = F.smooth_l1_loss(q, target)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._trained_params, cfg.max_grad_norm, foreach=True)
        self.optimizer.step()
        if self.config.lr_final is not None:
            self.lr_schedule.step()  # plain Python arithmetic on the step count, no device read

        # Target network: theta' <- (1 - tau) theta' + tau theta every target_update_interval
        # gradient steps. The period is a lerp weight of 0 or tau, not a Python branch on the
        # counter (lerp with weight 0 leaves theta' exact, with weight 1 copies theta exactly).
        # The weight goes in as one view of it per parameter: a 0-dim tensor passed as the
        # weight would bind to lerp's number overload and be read back to the host every update.
        self.updates += 1
        if cfg.target_update_interval == 1:
            torch._foreach_lerp_(self._target_params, self._online_params, cfg.tau)
        else:
            weight = (self.updates % cfg.target_update_interval == 0).float() * cfg.tau
            torch._foreach_lerp_(self._target_params, self._online_params,
                                 [weight.expand_as(p) for p in self._target_params])

        return {
            "loss": loss.detach(),
            "q_mean": q.detach().mean(),
            "target_mean": target.mean(),
            "epsilon": self.epsilon(),
        }


def make_dqn(config: DQNConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> DQN:
    """Factory named by the ``dqn`` entry point."""
    return DQN(config, observation_space, action_space, device)


def make_dqn_icm(config: DQNICMConfig, observation_space: gym.Space, action_space: gym.Space, device: str) -> Agent:
    """Factory named by the ``dqn-icm`` entry point: DQN wrapped in the curiosity module."""
    return CuriousAgent(DQN(config, observation_space, action_space, device), observation_space, action_space, config.curiosity, device)
