"""The world-model loop: V on frames, then M on windows of latent sequences (Ha & Schmidhuber 2018).

A world model in the sense of Ha & Schmidhuber (2018, "World Models") has two learned parts:

* **V**, a VAE that compresses each frame ``x_t`` to a small latent ``z_t``;
* **M**, a recurrent model of how latents move under actions,
  ``p(z_{t+1} | z_t, a_t, h_t)``, with ``h_t`` its own hidden state, plus heads for the reward
  ``r_t`` and for whether the episode terminates.

They are trained one after the other, as in the paper: phase 1 trains V on single frames
(minibatches of ``vae_batch_size``), then V is frozen, every frame is encoded once, and phase 2
trains M on ``batch_size`` windows of ``seq_len`` consecutive steps of one episode, feeding it
the posterior mean of each frame or, as the paper does, a fresh sample of the posterior
(``z_source``). Both phases count in the run's steps: ``--steps 10000`` with ``vae_steps=2000``
is 2,000 steps of V and 8,000 of M. A model whose V came trained (``vae_steps == 0``) starts at
phase 2.

Data is a frames file (:mod:`toolkit.data.frames`): row ``t`` holds the frame of ``s_t``, the
action ``a_t`` taken there, the reward ``r_t`` and whether the episode ended at ``s_{t+1}``.
M at row ``t`` therefore predicts row ``t + 1``'s latent, ``r_t`` and ``terminations[t]``; a
row that ends an episode (or the file) has no next latent in its episode, so only its reward
and termination are scored. Episodes are split into a training and a test part by the run's
seed (whole episodes; a file of one unfinished episode is cut at 80 %), and both V and M are
scored on the test episodes only.

M is judged against the simplest forecaster there is, "the world stands still": the
**copy-last-latent** baseline ``N(z_{t+1}; z_t, diag(s^2))`` with ``s_d^2`` the mean of
``(z_{t+1,d} - z_{t,d})^2`` over the training episodes (the maximum-likelihood variance of a
Gaussian centred on ``z_t``). Its negative log-likelihood per latent dimension is

    NLL_copy = 1/D sum_d [ 1/2 log(2 pi s_d^2) + (z_{t+1,d} - z_{t,d})^2 / (2 s_d^2) ],

reported beside M's own NLL per dimension; an M that has learned anything about the dynamics
beats it.

This module also holds what the loop needs of a model (:class:`WorldModel`, the contract a
world-model plugin implements), the sequence data (:class:`FrameSequences`) and the evaluation
that ``toolkit eval`` adds for world models (:func:`world_model_evaluation`). Counters,
logging, checkpoints with exact resume, Ctrl-C and the progress bar come from
:class:`~toolkit.trainer.Trainer`; the one random stream of the data (frame minibatches,
window starts and the posterior samples) is a device generator kept in the checkpoint.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from toolkit.errors import ToolkitError
from toolkit.model import ExampleBatch, GenerativeModel
from toolkit.runs import RunSettings
from toolkit.trainer import GradientStepTrainer

if TYPE_CHECKING:
    from toolkit.data.images import ImageDataset
    from toolkit.session import Session

#: Share of the episodes held out to test V and M.
TEST_FRACTION = 0.2
#: Test frames (V) and test windows (M) measured at each periodic evaluation; all at `toolkit eval`.
EVAL_FRAMES = 1_000
EVAL_WINDOWS = 256
#: Windows per forward pass when evaluating, and frames per pass when encoding the file.
EVAL_BATCH_WINDOWS = 64
ENCODE_BATCH = 1_024
#: Steps dreamt in the real-versus-dreamt strip that `toolkit eval` draws.
STRIP_STEPS = 16
#: Floor of the copy baseline's variance (a latent dimension that never moves would give -inf).
MIN_COPY_VARIANCE = 1e-8
#: How an error ends when the real env cannot give the pictures a world model sees.
SEEING_FAILS = "the world model cannot see it"
#: Datasets a frames file needs for a world model (``toolkit dataset frames`` writes them all).
SEQUENCE_DATASETS = ("frames", "actions", "rewards", "terminations", "truncations")


# --------------------------------------------------------------------------- the frames file


@dataclass
class FramesInfo:
    """Everything about a frames file but its frames: the steps' actions, rewards and episode
    ends, the env that was recorded and how, read in one cheap pass."""

    path: Path
    #: The recorded env's id and the constructor arguments it was recorded with.
    env_id: str
    env_kwargs: dict[str, Any]
    #: Side of the square frames in pixels, and one frame's shape as models see it, (C, H, W).
    size: int
    frame_shape: tuple[int, int, int]
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray

    @property
    def rows(self) -> int:
        """Steps (rows) in the file."""
        return len(self.rewards)

    @property
    def episode_starts(self) -> np.ndarray:
        """The first row of every episode: row 0 and each row after an episode's end."""
        ended = self.terminations | self.truncations
        return np.concatenate([[0], np.flatnonzero(ended[:-1]) + 1]).astype(np.int64)

    @property
    def longest_episode(self) -> int | None:
        """Steps of the longest finished episode, None if no episode in the file ends."""
        ended = np.flatnonzero(self.terminations | self.truncations)
        if len(ended) == 0:
            return None
        return int(np.diff(np.concatenate([[-1], ended])).max())

    def check_length(self, seq_len: int) -> None:
        """Refuse a file too short for one window of ``seq_len`` steps and its next latent."""
        if self.rows < seq_len + 1:
            raise ToolkitError(
                f"{self.path} holds {self.rows} steps, fewer than seq_len + 1 = {seq_len + 1}, so it cannot give one "
                f"training window of the world model; record more steps or lower seq_len."
            )

    def make_real_env(self, render: bool = False) -> Any:
        """The env these frames were recorded from; with ``render``, through the recorder's
        own rendering set-up (:func:`toolkit.rendering.make_render_env`: ``rgb_array``, MuJoCo's
        render size), so that its frames shrunk by :func:`toolkit.rendering.resize_frame`
        match the file's."""
        if not self.env_id:
            raise ToolkitError(f"{self.path} does not name the env it was recorded from (no env_id attribute).")
        from toolkit.envs import check_env_id, make_env

        if render:
            from toolkit.rendering import make_render_env

            check_env_id(self.env_id)
            return make_render_env(self.env_id, self.size, make_env, SEEING_FAILS, **self.env_kwargs)
        return make_env(self.env_id, **self.env_kwargs)

    def read_frames(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Frames ``[N, C, H, W]`` uint8: every row, or the given (sorted, unique) rows."""
        import h5py

        with h5py.File(self.path, "r") as f:
            frames = f["frames"][()] if rows is None else f["frames"][np.asarray(rows, dtype=np.int64)]
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


def read_frames_info(path: str | Path) -> FramesInfo:
    """Read a frames file's metadata and per-step columns, refusing in one sentence a file that
    lacks what a world model learns from."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"No frames file at {path}.")
    if not h5py.is_hdf5(path):
        raise ToolkitError(
            f"{path} is not an HDF5 file; a world model learns from a frames file written by `toolkit dataset frames`."
        )
    try:
        with h5py.File(path, "r") as f:
            for name in SEQUENCE_DATASETS:
                if not isinstance(f.get(name), h5py.Dataset):
                    raise ToolkitError(
                        f"{path} has no '{name}' dataset; a world model learns from a frames file recorded by "
                        "`toolkit dataset frames`, which stores frames, actions, rewards and episode ends."
                    )
            frames = f["frames"]
            if frames.ndim != 4 or frames.dtype != np.uint8:
                raise ToolkitError(
                    f"{path} has 'frames' of shape {frames.shape} and type {frames.dtype}; expected uint8 [N, H, W, C]."
                )
            columns = {name: f[name][()] for name in SEQUENCE_DATASETS[1:]}
            n, h, w, c = (int(d) for d in frames.shape)
            attrs = dict(f.attrs)
    except ToolkitError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise ToolkitError(f"{path} is a damaged HDF5 file ({exc}).") from None
    lengths = {name: len(value) for name, value in columns.items()}
    if any(length != n for length in lengths.values()):
        raise ToolkitError(f"{path} has {n} frames but columns of other lengths ({lengths}); the file is damaged.")
    if n == 0:
        raise ToolkitError(f"{path} holds no steps.")
    env_kwargs = attrs.get("env_kwargs", "")
    try:  # recorders that store their --env-kwargs do so as JSON; older files have none
        kwargs = json.loads(env_kwargs) if isinstance(env_kwargs, str) and env_kwargs else {}
    except json.JSONDecodeError:
        kwargs = {}
    return FramesInfo(
        path=path, env_id=str(attrs.get("env_id", "")), env_kwargs=dict(kwargs),
        size=int(attrs.get("size", h)), frame_shape=(c, h, w), actions=np.asarray(columns["actions"]),
        rewards=np.asarray(columns["rewards"], dtype=np.float32),
        terminations=np.asarray(columns["terminations"], dtype=bool),
        truncations=np.asarray(columns["truncations"], dtype=bool),
    )


# --------------------------------------------------------------------------- the contract


class SequenceBatch(NamedTuple):
    """``B`` windows of ``T`` steps on the learner's device (what M learns from).

    ``z`` holds ``T + 1`` latents so that step ``t``'s input is ``z[:, t]`` and its target
    ``z[:, t + 1]``. Steps past the end of the window's episode (short episodes are padded)
    have ``valid`` False; steps whose next latent is not in the episode (its last step) have
    ``has_next`` False, and their ``z`` target is meaningless.
    """

    #: Latents ``[B, T + 1, D]`` (posterior means, or samples of the posterior).
    z: torch.Tensor
    #: Encoded actions ``[B, T, A]`` (see :meth:`WorldModel.encode_actions`).
    actions: torch.Tensor
    #: Rewards ``[B, T]`` and termination flags ``[B, T]`` (float 0/1) of each step.
    rewards: torch.Tensor
    terminations: torch.Tensor
    #: ``[B, T]`` bool: the step belongs to the window's episode.
    valid: torch.Tensor
    #: ``[B, T]`` bool: ``z[:, t + 1]`` is the next latent of the same episode.
    has_next: torch.Tensor


class DreamStep(NamedTuple):
    """One step of M in a dream, for ``n`` dreams at once."""

    #: The sampled next latents ``[n, D]``.
    z: torch.Tensor
    #: Predicted rewards ``[n]`` and probabilities that the episode terminates ``[n]``.
    reward: torch.Tensor
    termination_probability: torch.Tensor
    #: M's recurrent state after the step (pass it to the next step).
    state: Any


class WorldModel(GenerativeModel):
    """What the world-model loop, its evaluation and the dream environments need of a model.

    A world model is a :class:`~toolkit.model.GenerativeModel` of single frames (its V:
    ``update``/``evaluate`` take frame minibatches, ``encode``/``decode``/``sample``/
    ``importance_nll`` are V's) plus a recurrent model M of latent sequences. Besides the
    members below, the loop reads ``batch_size`` (windows per step of M), ``seq_len``,
    ``vae_batch_size`` and ``z_source`` (``"mean"`` or ``"sample"``) from the model's config.
    Like every model, it draws its own noise from torch's global generator; the dream methods
    instead take their noise as arguments, so a dream is a function of its caller's generator.
    """

    #: Size ``D`` of a latent.
    latent_dim: int
    #: Size ``H`` of M's features ``h`` (the dream observes ``[z, h]``).
    hidden_dim: int
    #: Size ``A`` of an encoded action.
    action_dim: int
    #: Steps of phase 1 (V alone); 0 when V came trained.
    vae_steps: int

    @abstractmethod
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V's ``q(z|x)`` for frames ``[B, C, H, W]`` in ``[0, 1]``: mean and log-variance ``[B, D]``."""

    @abstractmethod
    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions ``[..., *action_shape]`` (as the frames file and the env hold them) as
        float inputs of M ``[..., A]``."""

    @abstractmethod
    def update_sequences(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """One gradient step of M (V stays frozen); scalar metrics as 0-dimensional tensors."""

    @abstractmethod
    def evaluate_sequences(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """Per-step test metrics of M, each ``[B, T]``, NaN where a step does not define it;
        the evaluation averages each over the finite entries. ``mdn_nll`` (the NLL of
        ``z_{t+1}`` per latent dimension, nats), ``reward_mse`` and ``termination_accuracy``
        get labelled rows."""

    @abstractmethod
    def initial_state(self, n: int) -> Any:
        """M's recurrent state at the start of ``n`` episodes."""

    @abstractmethod
    def restart(self, state: Any, done: torch.Tensor) -> Any:
        """``state`` with the dreams where ``done`` (``[n]`` bool) is set back to the start."""

    @abstractmethod
    def features(self, state: Any) -> torch.Tensor:
        """The features ``h`` ``[n, hidden_dim]`` of a recurrent state."""

    @abstractmethod
    def advance(self, z: torch.Tensor, actions: torch.Tensor, state: Any) -> Any:
        """The state after M has seen ``z`` ``[n, D]`` and encoded ``actions`` ``[n, A]``."""

    @abstractmethod
    def dream_step(self, z: torch.Tensor, actions: torch.Tensor, state: Any, temperature: float,
                   uniform: torch.Tensor, normal: torch.Tensor) -> DreamStep:
        """Advance M and sample ``z_{t+1}`` at ``temperature`` from the noise given:
        ``uniform`` ``[n, D]`` in ``[0, 1)`` and standard-normal ``normal`` ``[n, D]``."""


# --------------------------------------------------------------------------- sequences


class FrameSequences:
    """A frames file on the device, split by episodes, cut into windows for M and frames for V.

    Rows are grouped into *segments* (episodes; a file of one unfinished episode is cut in two),
    and a seeded share :data:`TEST_FRACTION` of the segments is held out. Training windows start
    anywhere a whole window fits in its segment, or at the segment's start when it is shorter
    than a window; test windows tile each test segment from its start, so every test step is
    scored exactly once.
    """

    def __init__(self, info: FramesInfo, frames: np.ndarray, seq_len: int, seed: int, device: torch.device | str,
                 encode_actions: Any) -> None:
        info.check_length(seq_len)
        self.info, self.seq_len, self.device = info, seq_len, torch.device(device)
        n = info.rows
        ended = info.terminations | info.truncations
        segment = np.concatenate([[0], np.cumsum(ended[:-1])]).astype(np.int64)
        if segment[-1] == 0:  # one episode: cut it, or nothing would be left to test on
            segment[min(n - 1, max(1, int(round(n * (1 - TEST_FRACTION))))):] = 1
        count = int(segment[-1]) + 1
        bounds = np.searchsorted(segment, np.arange(count + 1))  # segment s holds rows bounds[s]:bounds[s+1]
        n_test = min(count - 1, max(1, int(round(count * TEST_FRACTION))))
        test_ids = np.sort(np.random.default_rng(seed).permutation(count)[:n_test])
        is_test = np.isin(np.arange(count), test_ids)
        train_starts: list[np.ndarray] = []
        test_starts: list[np.ndarray] = []
        for s in range(count):
            start, stop = int(bounds[s]), int(bounds[s + 1])
            if is_test[s]:
                test_starts.append(np.arange(start, stop, seq_len))
            else:
                train_starts.append(np.arange(start, max(start, stop - seq_len) + 1))
        self.frames_np = frames  # [N, C, H, W] uint8; on a CPU device the tensor below shares it
        self.frames = torch.as_tensor(frames, device=self.device)
        self.actions = encode_actions(torch.as_tensor(info.actions, device=self.device)).float()
        self.rewards = torch.as_tensor(info.rewards, device=self.device)
        self.terminations = torch.as_tensor(info.terminations, device=self.device).float()
        self.segment = torch.as_tensor(segment, device=self.device)
        # Row r's next latent is row r + 1 when both lie in one segment.
        next_ok = np.zeros(n, dtype=bool)
        next_ok[:-1] = segment[1:] == segment[:-1]
        self.next_ok = torch.as_tensor(next_ok, device=self.device)
        self.train_rows_np = np.flatnonzero(~is_test[segment])
        self.test_rows_np = np.flatnonzero(is_test[segment])
        self.train_rows = torch.as_tensor(self.train_rows_np, device=self.device)
        self.train_starts = torch.as_tensor(np.concatenate(train_starts), device=self.device)
        self.test_starts = torch.as_tensor(np.concatenate(test_starts), device=self.device)
        # The training pairs (r, r + 1) the copy baseline's variance is fitted on.
        self.train_pairs = torch.as_tensor(self.train_rows_np[next_ok[self.train_rows_np]], device=self.device)
        self._steps = torch.arange(seq_len + 1, device=self.device)

    @classmethod
    def load(cls, path: str | Path, seq_len: int, seed: int, device: torch.device | str,
             encode_actions: Any) -> FrameSequences:
        """Read ``path`` (checked as :func:`read_frames_info` does) onto ``device``."""
        info = read_frames_info(path)
        info.check_length(seq_len)  # before reading every frame
        return cls(info, info.read_frames(), seq_len, seed, device, encode_actions)

    @property
    def source(self) -> str:
        return str(self.info.path)

    def image_dataset(self) -> ImageDataset:
        """The frames of the training and the test episodes, as V's train/test split."""
        from toolkit.data.images import ImageDataset

        return ImageDataset(self.frames_np[self.train_rows_np], self.frames_np[self.test_rows_np], None, None, self.source)

    def windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``[B, T + 1]`` of the windows starting at ``starts`` ``[B]`` (clamped to the
        file), with their ``valid`` and ``has_next`` masks ``[B, T]``."""
        t = self.seq_len
        rows = starts[:, None] + self._steps  # [B, T + 1]
        inside = rows < len(self.segment)
        rows = rows.clamp(max=len(self.segment) - 1)
        valid = (inside & (self.segment[rows] == self.segment[starts][:, None]))[:, :t]
        has_next = valid & self.next_ok[rows[:, :t]]
        return rows, valid, has_next

    def batch(self, starts: torch.Tensor, latents: Latents, noise: torch.Tensor | None) -> SequenceBatch:
        """The windows at ``starts`` with latents: posterior means, or ``mu + sigma * noise``
        with standard-normal ``noise`` ``[B, T + 1, D]``."""
        rows, valid, has_next = self.windows(starts)
        z = latents.mu[rows]
        if noise is not None:
            z = z + torch.exp(0.5 * latents.log_var[rows]) * noise
        steps = rows[:, :-1]
        return SequenceBatch(z, self.actions[steps], self.rewards[steps], self.terminations[steps], valid, has_next)


@dataclass
class Latents:
    """V's posterior for every row of a frames file, and the copy baseline fitted on them."""

    mu: torch.Tensor
    log_var: torch.Tensor
    #: ``s_d^2`` of the copy-last-latent baseline ``N(z_{t+1}; z_t, diag(s^2))``, ``[D]``.
    copy_variance: torch.Tensor


@torch.no_grad()
def encode_latents(model: WorldModel, sequences: FrameSequences, z_source: str) -> Latents:
    """Encode every frame once with the (frozen) V and fit the copy baseline's variance on the
    training episodes: ``s_d^2 = mean (z_{t+1,d} - z_{t,d})^2``, whose expectation for sampled
    latents adds both posterior variances to the squared difference of the means."""
    from toolkit.model_eval import eval_mode

    mus, log_vars = [], []
    with eval_mode(model):
        for chunk in sequences.frames.split(ENCODE_BATCH):
            mu, log_var = model.posterior(chunk.float().div_(255.0))
            mus.append(mu.float())
            log_vars.append(log_var.float())
    mu, log_var = torch.cat(mus), torch.cat(log_vars)
    pairs = sequences.train_pairs
    if len(pairs) == 0:
        raise ToolkitError(f"{sequences.source} has no two consecutive steps of one training episode, so no dynamics to learn.")
    square = (mu[pairs + 1] - mu[pairs]).pow(2)
    if z_source == "sample":
        square = square + log_var[pairs + 1].exp() + log_var[pairs].exp()
    return Latents(mu, log_var, square.mean(0).clamp(min=MIN_COPY_VARIANCE))


def copy_nll(batch: SequenceBatch, variance: torch.Tensor) -> torch.Tensor:
    """The copy-last-latent baseline's NLL of ``z_{t+1}`` per latent dimension, ``[B, T]``, NaN
    where a step has no next latent (the formula in the module docstring)."""
    diff = batch.z[:, 1:] - batch.z[:, :-1]
    nll = 0.5 * (torch.log(2 * math.pi * variance) + diff.pow(2) / variance).mean(-1)
    return nll.masked_fill(~batch.has_next, float("nan"))


class SequenceSampler:
    """Frame minibatches (phase 1) and windows with their posterior samples (phase 2), all drawn
    on the device by one generator of its own, which is part of the checkpoint."""

    def __init__(self, sequences: FrameSequences, device: torch.device, seed: int) -> None:
        self.sequences = sequences
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def frames(self, n: int) -> ExampleBatch:
        """``n`` frames of the training episodes, uniformly, as floats in ``[0, 1]``."""
        s = self.sequences
        pick = torch.randint(len(s.train_rows), (n,), device=s.device, generator=self.generator)
        return ExampleBatch(s.frames[s.train_rows[pick]].float().div_(255.0))

    def windows(self, n: int, latents: Latents, z_source: str) -> SequenceBatch:
        """``n`` training windows, uniformly over their starts, with sampled or mean latents."""
        s = self.sequences
        pick = torch.randint(len(s.train_starts), (n,), device=s.device, generator=self.generator)
        noise = None
        if z_source == "sample":  # the paper's: a fresh posterior sample every time a window is seen
            noise = torch.randn((n, s.seq_len + 1, latents.mu.shape[-1]), device=s.device, generator=self.generator)
        return s.batch(s.train_starts[pick], latents, noise)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())


# --------------------------------------------------------------------------- evaluation

#: Display names of M's metrics in `toolkit eval`'s table.
SEQUENCE_LABELS: dict[str, str] = {
    "mdn_nll": "M: NLL of z(t+1) per latent dim (nats)",
    "copy_nll": "copy-last-latent NLL per latent dim (nats, baseline)",
    "reward_mse": "M: reward MSE",
    "termination_accuracy": "M: termination accuracy",
}


def sequence_metrics(model: WorldModel, sequences: FrameSequences, latents: Latents, z_source: str,
                     limit: int | None = None) -> dict[str, float]:
    """M's test metrics averaged over every step that defines them, in the first ``limit``
    test windows (default: all), with the copy baseline's NLL beside M's. Sampled latents come
    from torch's global generator: call it under :func:`toolkit.model_eval.seeded`."""
    from toolkit.model_eval import eval_mode

    starts = sequences.test_starts if limit is None else sequences.test_starts[:limit]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for chunk in starts.split(EVAL_BATCH_WINDOWS):
            noise = None
            if z_source == "sample":
                noise = torch.randn((len(chunk), sequences.seq_len + 1, latents.mu.shape[-1]), device=sequences.device)
            batch = sequences.batch(chunk, latents, noise)
            out = dict(model.evaluate_sequences(batch))
            out["copy_nll"] = copy_nll(batch, latents.copy_variance)
            for name, value in out.items():
                value = value.detach().double()
                total, count = torch.nansum(value), (~torch.isnan(value)).sum()
                sums[name] = sums[name] + total if name in sums else total
                counts[name] = counts[name] + count if name in counts else count
    means = {name: float(sums[name] / counts[name]) if int(counts[name]) else float("nan") for name in sums}
    # M's NLL and its baseline side by side, then the rest in the model's order.
    order = [k for k in ("mdn_nll", "copy_nll") if k in means] + [k for k in means if k not in ("mdn_nll", "copy_nll")]
    return {k: means[k] for k in order}


@torch.no_grad()
def dream_strip(model: WorldModel, sequences: FrameSequences, steps: int = STRIP_STEPS,
                temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Real frames of the longest test episode and the frames M dreams from its first frame
    under the same actions: two ``[T + 1, C, H, W]`` arrays in ``[0, 1]``. Noise comes from
    torch's global generator: call it under :func:`toolkit.model_eval.seeded`."""
    from toolkit.model_eval import eval_mode

    lengths = torch.bincount(sequences.segment)[sequences.segment[sequences.test_starts]]
    # Test windows tile each segment in order and argmax takes the first maximum, so this is
    # the start of the (first) longest test episode.
    longest = int(torch.argmax(lengths))
    first = sequences.test_starts[longest]
    t = int(min(steps, int(lengths[longest]) - 1))
    rows = first + torch.arange(t + 1, device=sequences.device)
    real = sequences.frames[rows].float().div_(255.0)
    with eval_mode(model):
        z = model.posterior(real[:1])[0]
        state = model.initial_state(1)
        latents = [z]
        for k in range(t):
            d = model.latent_dim
            out = model.dream_step(z, sequences.actions[rows[k]][None], state, temperature,
                                   torch.rand((1, d), device=z.device), torch.randn((1, d), device=z.device))
            z, state = out.z, out.state
            latents.append(z)
        dreamt = model.decode(torch.cat(latents))
    return real.cpu().numpy(), dreamt.float().cpu().numpy()


@dataclass
class WorldModelReport:
    """What `toolkit eval` adds for a world model: M's metrics and the data V is judged on."""

    metrics: dict[str, float]
    labels: dict[str, str]
    #: The frames of the training and test episodes (V's split; its figures use it).
    frames: ImageDataset
    #: The real and dreamt frames of :func:`dream_strip`.
    real: np.ndarray
    dreamt: np.ndarray


def world_model_evaluation(model: WorldModel, config: Any, settings: RunSettings, device: torch.device | str,
                           seed: int = 0) -> WorldModelReport:
    """M's metrics over every test window and the dream strip, both on a stream seeded with
    ``seed`` (the test episodes are those the run trained beside: the split uses its seed)."""
    from toolkit.model_eval import seeded

    assert settings.dataset is not None
    z_source = str(getattr(config, "z_source", "mean"))
    sequences = FrameSequences.load(settings.dataset, int(config.seq_len), settings.seed, device, model.encode_actions)
    latents = encode_latents(model, sequences, z_source)
    with seeded(seed, device):
        metrics = sequence_metrics(model, sequences, latents, z_source)
        real, dreamt = dream_strip(model, sequences)
    labels = {k: SEQUENCE_LABELS[k] for k in metrics if k in SEQUENCE_LABELS}
    return WorldModelReport(metrics, labels, sequences.image_dataset(), real, dreamt)


# --------------------------------------------------------------------------- the loop


class WorldModelLoop(GradientStepTrainer):
    """Trains a world model on one frames file: V for ``model.vae_steps`` steps, then M."""

    def __init__(self, model: WorldModel, config: Any, settings: RunSettings, run_dir: Path, device: torch.device,
                 progress: bool = True) -> None:
        super().__init__(model, settings, run_dir, device, progress)
        if not isinstance(model, WorldModel):
            raise ToolkitError(
                f"Model '{settings.model}' has kind world-model but is not a toolkit.loops.world_model.WorldModel, "
                "so the world-model loop cannot train it."
            )
        assert settings.dataset is not None
        self.model, self.config = model, config
        self.batch_size, self.vae_batch_size = int(config.batch_size), int(config.vae_batch_size)
        self.z_source = str(config.z_source)
        self.sequences = FrameSequences.load(settings.dataset, int(config.seq_len), settings.seed, device,
                                             model.encode_actions)
        self.sampler = SequenceSampler(self.sequences, device, seed=settings.seed)
        self.test_frames = self.sequences.image_dataset()
        #: V's posterior of every frame, encoded once V is frozen (recomputed after a resume).
        self.latents: Latents | None = None

    @classmethod
    def from_session(cls, session: Session, run_dir: Path, progress: bool) -> WorldModelLoop:
        """The loop for a built session (how :mod:`toolkit.training` makes every loop)."""
        return cls(session.learner, session.config, session.settings, run_dir, session.device, progress=progress)

    def extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    @property
    def in_phase_two(self) -> bool:
        """Whether V is done and M trains."""
        return self.step >= self.model.vae_steps

    def _latents(self) -> Latents:
        if self.latents is None:
            # V no longer changes: encode once. The encoder is deterministic, so a resumed run
            # gets exactly the latents the unbroken one had.
            self.latents = encode_latents(self.model, self.sequences, self.z_source)
        return self.latents

    def gradient_step(self) -> dict[str, torch.Tensor]:
        if not self.in_phase_two:
            return self.model.update(self.sampler.frames(self.vae_batch_size))
        if self.step == self.model.vae_steps and self._metric_count:
            self.flush_metrics()  # V's averages end here; M's metrics have other names
        batch = self.sampler.windows(self.batch_size, self._latents(), self.z_source)
        return self.model.update_sequences(batch)

    def evaluate(self) -> None:
        """V's test metrics (the first test frames) and, once M trains, M's (the first test
        windows, beside the copy baseline), logged as ``eval``; a reconstruction grid in TensorBoard."""
        from toolkit.model_eval import seeded, test_metrics

        assert self.logger is not None
        with seeded(self.settings.seed + 1_000_000, self.device):
            metrics = test_metrics(self.model, self.test_frames, self.device, limit=EVAL_FRAMES)
            if self.in_phase_two:
                metrics.update(sequence_metrics(self.model, self.sequences, self._latents(), self.z_source,
                                                limit=EVAL_WINDOWS))
        self.record_evaluation(metrics)
        if self.logger.tb is not None:
            from toolkit.figures import reconstruction_grid

            grid_inputs = torch.as_tensor(self.test_frames.to_float(self.test_frames.x_test[:8]), device=self.device)
            self.logger.tb.add_image("eval/reconstructions", reconstruction_grid(self.model, grid_inputs), self.step,
                                     dataformats="HWC")

    def note(self) -> str:
        """The latest logged loss and test metric for the bar (no per-step device read)."""
        parts = [super().note()]
        if "mdn_nll" in self.latest_eval and "copy_nll" in self.latest_eval:
            parts.append(f"test NLL/dim {self.latest_eval['mdn_nll']:.3g} (copy {self.latest_eval['copy_nll']:.3g})")
        elif "elbo" in self.latest_eval:
            parts.append(f"test elbo {self.latest_eval['elbo']:.4g}")
        return "  ".join(p for p in parts if p)
