"""World model of Ha & Schmidhuber (2018, "World Models", arXiv:1803.10122): V, a VAE of frames,
and M, an MDN-RNN of how V's latents evolve under actions.

**V** is :class:`toolkit_vision.vae.VAE` (or taken trained and frozen from a ``vae`` run,
``vae_run=DIR``). It maps a frame ``x_t`` to its posterior

    q(z_t | x_t) = N(mu(x_t), diag(sigma^2(x_t))),

and is trained first, on single frames, by the ELBO of :mod:`toolkit_vision.vae` with the
paper's "free bits" (its ``kl_tolerance``): the KL term of a minibatch counts only above a floor
of ``kl_tolerance * D`` nats per frame,

    L_V = -E_q[log p(x|z)] + max(KL(q(z|x) || p(z)), kl_tolerance * D),

so V may spend that much information on the frame at no cost. Without the floor, frames where
a small object moves over a large still background (a pendulum) let V collapse onto the mean
frame, KL = 0, with latents that say nothing.

**M** is a mixture density network (Bishop 1994) on top of an LSTM. The LSTM reads
``[z_t, a_t]`` and its output ``h_{t+1}`` gives, for every latent dimension ``d``, a mixture of
``K`` one-dimensional Gaussians (``mixtures``, 5 in the paper):

    p(z_{t+1} | z_t, a_t, h_t) = prod_d sum_k pi_{d,k} N(z_{t+1,d}; mu_{d,k}, sigma_{d,k}^2),
    pi_{d,.} = softmax(logits_{d,.}),   (logits, mu, log sigma) = W h_{t+1} + b,

with two more heads on ``h_{t+1}``: the reward ``r_t`` (trained by squared error) and the logit of
"the episode terminates at s_{t+1}" (Bernoulli cross-entropy; the paper's Doom model predicts
this "done" flag, its CarRacing model does without). M is trained on windows of ``seq_len``
steps from a zero state, minimising, averaged over the steps that define each term,

    L = 1/D * -log p(z_{t+1} | ...)  +  reward_weight * (r^_t - r_t)^2  +  termination_weight * BCE(l_t, d_t).

**Dreaming** at temperature ``tau`` (section 4.5 of the paper; the scaling is the authors'
code's): the component of each dimension is drawn from ``softmax(logits_d / tau)`` and the
Gaussian's standard deviation is multiplied by ``sqrt(tau)`` (its variance by ``tau``),

    k ~ softmax(logits_d / tau),   z_{t+1,d} = mu_{d,k} + sqrt(tau) * sigma_{d,k} * eps,   eps ~ N(0, 1),

so ``tau > 1`` makes the dream more uncertain (and harder for a controller to exploit), and
``tau -> 0`` follows the most likely component's mean. A dream's noise is passed in (a uniform
for the component, a normal for the Gaussian) so that the caller's generator alone decides it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.loops.world_model import DreamStep, FramesInfo, SequenceBatch, WorldModel, read_frames_info
from toolkit.model import DataSpec, ExampleBatch
from toolkit.nn.mlp import fast_adam_options
from toolkit_vision.spec import VAEConfig
from toolkit_vision.vae import VAE, make_vae
from toolkit_world.spec import WorldModelConfig

#: Range of a mixture component's log standard deviation (sigma from about 1e-3 to 7.4), kept
#: by a soft clamp: without a floor a component can collapse onto one training point.
LOG_STD_MIN, LOG_STD_MAX = -7.0, 2.0
#: Recurrent state of M: the LSTM's ``(h, c)``, each ``[1, n, hidden]``.
State = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- the mixture


class Mixture(NamedTuple):
    """A mixture of ``K`` Gaussians per latent dimension: each field ``[..., D, K]``."""

    logits: torch.Tensor
    mean: torch.Tensor
    log_std: torch.Tensor


def soft_clamp(raw: torch.Tensor, low: float = LOG_STD_MIN, high: float = LOG_STD_MAX) -> torch.Tensor:
    """``raw`` squeezed smoothly into ``(low, high)``: the identity well inside, and a gradient
    everywhere (a hard clamp would stop learning at the bounds)."""
    below_high = high - F.softplus(high - raw)
    return low + F.softplus(below_high - low)


def mixture_log_prob(mixture: Mixture, z: torch.Tensor) -> torch.Tensor:
    """``log sum_k pi_k N(z_d; mu_k, sigma_k^2)`` for each dimension: ``z`` ``[..., D]`` -> ``[..., D]``."""
    log_pi = F.log_softmax(mixture.logits, dim=-1)
    scaled = (z.unsqueeze(-1) - mixture.mean) * torch.exp(-mixture.log_std)
    log_normal = -0.5 * scaled.pow(2) - mixture.log_std - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_pi + log_normal, dim=-1)


def sample_mixture(mixture: Mixture, temperature: float, uniform: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """One draw per dimension at ``temperature`` (the module docstring's rule) from the given
    noise: ``uniform`` ``[..., D]`` in ``[0, 1)`` picks the component by inverting the CDF of
    ``softmax(logits / tau)``, ``normal`` ``[..., D]`` is ``eps``."""
    probs = F.softmax(mixture.logits / temperature, dim=-1)
    below = (probs.cumsum(-1) < uniform.unsqueeze(-1)).sum(-1)  # components whose CDF is still below u
    k = below.clamp(max=probs.shape[-1] - 1).unsqueeze(-1)  # rounding can leave the total a hair under 1
    mean = mixture.mean.gather(-1, k).squeeze(-1)
    std = torch.exp(mixture.log_std.gather(-1, k).squeeze(-1))
    return mean + math.sqrt(temperature) * std * normal


class MDNRNN(nn.Module):
    """The LSTM over ``[z_t, a_t]`` and its heads: the mixture over ``z_{t+1}``, the reward and
    the termination logit."""

    def __init__(self, latent_dim: int, action_dim: int, hidden: int, mixtures: int) -> None:
        super().__init__()
        self.latent_dim, self.mixtures = latent_dim, mixtures
        self.lstm = nn.LSTM(latent_dim + action_dim, hidden, batch_first=True)
        # Per dimension: K logits, K means, K log-stds; then the reward and the termination logit.
        self.head = nn.Linear(hidden, 3 * mixtures * latent_dim + 2)

    def forward(self, z: torch.Tensor, actions: torch.Tensor, state: State | None = None
                ) -> tuple[Mixture, torch.Tensor, torch.Tensor, State]:
        """``z`` ``[B, T, D]`` and ``actions`` ``[B, T, A]`` -> the mixture (fields
        ``[B, T, D, K]``), rewards ``[B, T]``, termination logits ``[B, T]`` and the final state."""
        out, state = self.lstm(torch.cat([z, actions], dim=-1), state)
        params = self.head(out)
        b, t = params.shape[:2]
        logits, mean, raw_log_std = params[..., :-2].reshape(b, t, self.latent_dim, 3, self.mixtures).unbind(-2)
        return Mixture(logits, mean, soft_clamp(raw_log_std)), params[..., -2], params[..., -1], state


# --------------------------------------------------------------------------- actions


class ActionEncoder:
    """Env actions as M's inputs: a one-hot vector for a discrete action, the action itself,
    clipped to the space's bounds as the env would, for a box. A model of frames without
    actions (a plain image source, as in the contract tests) has none: size 0."""

    def __init__(self, space: Any, device: str) -> None:
        import gymnasium as gym

        self.kind, self.shape = "none", ()
        self.dim = 0
        if isinstance(space, gym.spaces.Discrete):
            self.kind, self.n, self.start = "discrete", int(space.n), int(space.start)
            self.dim = self.n
        elif isinstance(space, gym.spaces.Box):
            self.kind, self.shape = "box", tuple(int(d) for d in space.shape)
            self.dim = math.prod(self.shape)
            self.low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
            self.high = torch.as_tensor(space.high, dtype=torch.float32, device=device)
        elif space is not None:
            raise ToolkitError(f"A world model takes discrete or box actions, not {space}.")

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        if self.kind == "discrete":
            return F.one_hot((actions.long() - self.start).clamp(0, self.n - 1), self.n).float()
        if self.kind == "box":
            lead = actions.shape[: actions.dim() - len(self.shape)]
            return torch.maximum(torch.minimum(actions.float(), self.high), self.low).reshape(*lead, self.dim)
        return actions.new_zeros((*actions.shape, 0), dtype=torch.float32)


def _action_encoder(info: FramesInfo | None, device: str) -> ActionEncoder:
    """The encoder for the real env's action space, checked against the file's actions."""
    if info is None:
        return ActionEncoder(None, device)
    env = info.make_real_env()
    try:
        space = env.action_space
    finally:
        env.close()
    encoder = ActionEncoder(space, device)
    expected = (info.rows, *encoder.shape)
    if tuple(info.actions.shape) != expected:
        raise ToolkitError(
            f"{info.path} holds actions of shape {tuple(info.actions.shape[1:])}, but {info.env_id} takes {space}; "
            "the file was not recorded from that env."
        )
    return encoder


# --------------------------------------------------------------------------- the model


class MDNRNNWorldModel(WorldModel):
    """V (a :class:`toolkit_vision.vae.VAE`) and M (an :class:`MDNRNN`), trained in two phases
    by :class:`toolkit.loops.world_model.WorldModelLoop`."""

    def __init__(self, config: WorldModelConfig, spec: DataSpec, device: str, vae: VAE, actions: ActionEncoder,
                 vae_steps: int) -> None:
        super().__init__()
        self.config, self.spec, self.device = config, spec, device
        self.vae, self.actions = vae, actions
        self.latent_dim, self.hidden_dim, self.action_dim = vae.latent_dim, config.hidden, actions.dim
        self.vae_steps = vae_steps
        #: Free bits: nats per frame of KL that cost V nothing (0 for a V that came trained).
        self.kl_floor = config.kl_tolerance * self.latent_dim if vae_steps else 0.0
        self.rnn = MDNRNN(self.latent_dim, self.action_dim, config.hidden, config.mixtures).to(device)
        self.rnn_optimizer = torch.optim.Adam(self.rnn.parameters(), lr=config.lr, **fast_adam_options(device))
        # V's own checkpointed objects (encoder, decoder, prior, optimiser) nest under "vae".
        self.checkpointed = {"vae": vae, "mdn_rnn": self.rnn, "mdn_rnn_optimizer": self.rnn_optimizer}

    def train_mode(self, training: bool) -> None:
        self.vae.train_mode(training)
        self.rnn.train(training)

    # --- V: frames ---------------------------------------------------------------------------

    def update(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """One step of V (phase 1) on a minibatch of frames: ``L_V`` of the module docstring."""
        recon, kl, _ = self.vae.elbo_terms(batch.x)
        # Below the floor the KL term is a constant: no gradient pulls the posterior to the prior.
        kl_term = kl.mean().clamp(min=self.kl_floor)
        loss = -recon.mean() + kl_term
        self.vae.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.vae.optimizer.step()
        return {"loss": loss.detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach()}

    @torch.no_grad()
    def evaluate(self, batch: ExampleBatch) -> dict[str, torch.Tensor]:
        """V's per-frame metrics: ``elbo``, ``recon``, ``kl``, ``recon_error``."""
        return self.vae.evaluate(batch)

    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.posterior(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.vae.sample(n)

    @torch.no_grad()
    def importance_nll(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.vae.importance_nll(x, k)

    # --- M: sequences ------------------------------------------------------------------------

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.actions(actions)

    def _terms(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-step NLL of ``z_{t+1}`` per dimension, squared reward error, termination
        cross-entropy and logits, each ``[B, T]``."""
        mixture, reward, termination_logit, _ = self.rnn(batch.z[:, :-1], batch.actions)
        nll = -mixture_log_prob(mixture, batch.z[:, 1:]).mean(-1)
        reward_error = (reward - batch.rewards).pow(2)
        bce = F.binary_cross_entropy_with_logits(termination_logit, batch.terminations, reduction="none")
        return nll, reward_error, bce, termination_logit

    def update_sequences(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """One step of M on a batch of windows; V is not touched (its latents come in ``batch``)."""
        nll, reward_error, bce, _ = self._terms(batch)

        def masked_mean(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            # torch.where, not a product: a masked step's value may be anything, inf included.
            return torch.where(mask, value, 0.0).sum() / mask.sum().clamp(min=1)

        z_loss = masked_mean(nll, batch.has_next)
        reward_loss = masked_mean(reward_error, batch.valid)
        termination_loss = masked_mean(bce, batch.valid)
        loss = z_loss + self.config.reward_weight * reward_loss + self.config.termination_weight * termination_loss
        self.rnn_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.rnn.parameters(), self.config.grad_clip)
        self.rnn_optimizer.step()
        return {"loss": loss.detach(), "mdn_nll": z_loss.detach(), "reward_mse": reward_loss.detach(),
                "termination_bce": termination_loss.detach()}

    @torch.no_grad()
    def evaluate_sequences(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        nll, reward_error, _, termination_logit = self._terms(batch)
        correct = ((termination_logit > 0) == (batch.terminations > 0.5)).float()
        nan = float("nan")
        return {
            "mdn_nll": nll.masked_fill(~batch.has_next, nan),
            "reward_mse": reward_error.masked_fill(~batch.valid, nan),
            "termination_accuracy": correct.masked_fill(~batch.valid, nan),
        }

    # --- M: dreaming -------------------------------------------------------------------------

    def initial_state(self, n: int) -> State:
        zeros = torch.zeros(1, n, self.hidden_dim, device=self.device)
        return zeros, zeros.clone()

    def restart(self, state: State, done: torch.Tensor) -> State:
        keep = (~done).to(state[0].dtype)[None, :, None]
        return state[0] * keep, state[1] * keep

    def features(self, state: State) -> torch.Tensor:
        return state[0][0]

    @torch.no_grad()
    def advance(self, z: torch.Tensor, actions: torch.Tensor, state: State) -> State:
        _, _, _, state = self.rnn(z[:, None], actions[:, None], state)
        return state

    @torch.no_grad()
    def dream_step(self, z: torch.Tensor, actions: torch.Tensor, state: State, temperature: float,
                   uniform: torch.Tensor, normal: torch.Tensor) -> DreamStep:
        mixture, reward, termination_logit, state = self.rnn(z[:, None], actions[:, None], state)
        one_step = Mixture(*(field[:, 0] for field in mixture))
        z_next = sample_mixture(one_step, temperature, uniform, normal)
        return DreamStep(z_next, reward[:, 0], torch.sigmoid(termination_logit[:, 0]), state)


# --------------------------------------------------------------------------- building


def _vae_config(config: WorldModelConfig, spec: DataSpec) -> VAEConfig:
    encoder = config.encoder if config.encoder != "auto" else ("conv" if spec.is_image else "mlp")
    return VAEConfig(encoder=encoder, hidden_sizes=config.hidden_sizes, lr=config.vae_lr,
                     batch_size=config.vae_batch_size, latent_dim=config.latent_dim, likelihood=config.likelihood)


def _trained_vae(run: str, spec: DataSpec, device: str) -> VAE:
    """V from a trained ``vae``/``beta-vae`` run, refused in one sentence if it cannot serve."""
    from toolkit.runs import load_settings
    from toolkit.session import open_trained_run

    path = Path(run).expanduser()
    settings = load_settings(path)
    if not settings.model:
        raise ToolkitError(f"vae_run {run} is an agent run ('{settings.agent}'); world-model needs a trained 'vae' or 'beta-vae' run.")
    if settings.data_shape is not None and tuple(settings.data_shape) != tuple(spec.shape):
        raise ToolkitError(
            f"vae_run {run} was trained on images of shape {tuple(settings.data_shape)}, but {spec.source or 'the data'} "
            f"has frames of shape {tuple(spec.shape)}; train the VAE on frames of the same size and channels."
        )
    # Opening a run seeds torch's generator for its build; keep ours as it was.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        session, _ = open_trained_run(path)
    vae = session.learner
    if not isinstance(vae, VAE):
        raise ToolkitError(f"vae_run {run} is a '{settings.model}' run; world-model needs a trained 'vae' or 'beta-vae' run.")
    for obj in vae.checkpointed.values():
        if isinstance(obj, nn.Module):
            obj.to(device)
    vae.device = device
    return vae


def make_world_model(config: WorldModelConfig, data_spec: DataSpec, device: str) -> MDNRNNWorldModel:
    """The ``world-model`` factory. Its data is a frames file (``data_spec.source``), whose
    actions and env it reads; any other source gives a model without actions (M then models
    the frames alone), which the toolkit refuses to train but the model contract tests build."""
    config.validate()
    source = Path(data_spec.source) if data_spec.source else None
    info = None
    if source is not None and source.is_file():
        info = read_frames_info(source)
        info.check_length(config.seq_len)
    if config.vae_run:
        vae, vae_steps = _trained_vae(config.vae_run, data_spec, device), 0
    else:
        vae, vae_steps = make_vae(_vae_config(config, data_spec), data_spec, device), config.vae_steps
    return MDNRNNWorldModel(config, data_spec, device, vae, _action_encoder(info, device), vae_steps)
