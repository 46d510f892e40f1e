"""Benchmark: gradient steps/s of bc, decision-lstm and decision-transformer on the CPU.

Every learner trains at the Decision Transformer paper's MuJoCo sizes (Chen et al. 2021, the
hyperparameter table of the appendix: context K = 20, width 128, batch 64; bc gets two hidden
layers of width 128) on a
synthetic dataset shaped like D4RL's Hopper (observations 11, actions 3, episodes of up to
1000 steps), so nothing has to be downloaded or collected. A step is what the offline loop
does per gradient step: sample a batch of windows and call ``update`` (evaluation excluded).

Beside them runs a *reference*: the paper's MuJoCo model written plainly below (GPT-2
blocks, 3 layers, 1 head, embed 128, tokens (R, s, a) interleaved, timestep embedding,
dropout 0.1, AdamW lr 1e-4 weight decay 1e-4, gradient norm clipped to 0.25, MSE on actions;
the warm-up schedule is left out, a scalar per step), fed the same batches. The table gives
steps/s (median and best of the timing rounds: the machine may be shared) and the ratio to the
reference, and for each learner the floating-point work of one step (torch's FLOP counter;
LSTM cells, which it skips, counted by hand) against the measured single-thread matmul
throughput of this machine: the "bound" column is the steps/s that throughput would allow
if a step were nothing but its matmuls. ``--eval-episodes N`` also times N full-length
Hopper-v4 evaluation episodes per learner, one at a time and side by side.

    OMP_NUM_THREADS=1 python scripts/bench_offline_speed.py
    OMP_NUM_THREADS=1 python scripts/bench_offline_speed.py --rounds 3 --eval-episodes 10
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym
import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from toolkit.data import OfflineDataset
    from toolkit.offline import OfflineAgent, SequenceBatch

#: Hopper-v4's observation and action sizes (D4RL hopper-*).
OBS_DIM, ACT_DIM = 11, 3
#: Chen et al. 2021, table 8 (MuJoCo): context, width, batch.
CONTEXT, WIDTH, BATCH = 20, 128, 64
LEARNERS = ("bc", "decision-lstm", "decision-transformer")
REFERENCE = "reference DT (Chen et al. 2021)"
#: Settings that put each learner at the paper sizes (dropout and the rest stay the defaults).
PAPER_SETTINGS: dict[str, dict[str, object]] = {
    "bc": {"batch_size": BATCH, "hidden_sizes": (WIDTH, WIDTH)},
    "decision-lstm": {"batch_size": BATCH, "context_length": CONTEXT, "embed_dim": WIDTH},
    "decision-transformer": {"batch_size": BATCH, "context_length": CONTEXT, "embed_dim": WIDTH},
}


# --- data -------------------------------------------------------------------------------------


def hopper_shaped_dataset(transitions: int, seed: int = 0) -> OfflineDataset:
    """Random episodes of 20 to 1000 steps, Hopper-sized observations, actions in [-1, 1]."""
    from toolkit.data import OfflineDataset

    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < transitions:
        lengths.append(int(rng.integers(20, 1001)))
    lengths[-1] -= sum(lengths) - transitions
    ends = np.cumsum(lengths) - 1
    timeouts = np.zeros(transitions, bool)
    timeouts[ends] = True
    return OfflineDataset(
        observations=rng.standard_normal((transitions, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (transitions, ACT_DIM)).astype(np.float32),
        rewards=rng.uniform(0, 4, transitions).astype(np.float32),
        terminals=np.zeros(transitions, bool), timeouts=timeouts,
    )


def hopper_spaces() -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Hopper-v4's spaces, without constructing MuJoCo."""
    return (gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64),
            gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32))


# --- the reference: Chen et al. 2021's MuJoCo model, written plainly ---------------------------


class ReferenceBlock(nn.Module):
    """A GPT-2 block: pre-norm causal self-attention and a 4x GELU MLP, residual dropout."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))
        self.attn_drop, self.resid_drop = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=-1)
        q, k, v = (z.view(b, n, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(w // self.heads)
        weights = self.attn_drop(scores.masked_fill(~causal[:n, :n], float("-inf")).softmax(-1))
        attended = (weights @ v).transpose(1, 2).reshape(b, n, w)
        x = x + self.resid_drop(self.proj(attended))
        return x + self.mlp(self.ln2(x))


class ReferenceDecisionTransformer(nn.Module):
    """Embeddings of R, s, a and t; LayerNorm; GPT-2 blocks; action from each s token."""

    def __init__(self, layers: int = 3, heads: int = 1, width: int = WIDTH, dropout: float = 0.1,
                 max_timestep: int = 1000) -> None:
        super().__init__()
        self.embed_t = nn.Embedding(max_timestep, width)
        self.embed_r, self.embed_s, self.embed_a = nn.Linear(1, width), nn.Linear(OBS_DIM, width), nn.Linear(ACT_DIM, width)
        self.embed_ln, self.drop = nn.LayerNorm(width), nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ReferenceBlock(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, ACT_DIM)
        self.register_buffer("causal", torch.ones(3 * CONTEXT, 3 * CONTEXT, dtype=torch.bool).tril(), persistent=False)

    def forward(self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        b, k = timesteps.shape
        t = self.embed_t(timesteps)
        tokens = torch.stack([self.embed_r(returns) + t, self.embed_s(states) + t, self.embed_a(actions) + t], dim=2)
        x = self.drop(self.embed_ln(tokens.reshape(b, 3 * k, -1)))
        for block in self.blocks:
            x = block(x, self.causal)
        return torch.tanh(self.head(self.ln_f(x).reshape(b, k, 3, -1)[:, :, 1]))


class ReferenceLearner:
    """The reference model's training step: MSE on the real steps' actions, AdamW, clip 0.25."""

    def __init__(self) -> None:
        self.model = ReferenceDecisionTransformer()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4)

    def update(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        self.model.train()
        # Returns-to-go divided by 1000, the paper's MuJoCo scale.
        predicted = self.model(batch.returns_to_go.unsqueeze(-1) / 1000.0, batch.observations, batch.actions,
                               batch.timesteps)
        mask = batch.mask.unsqueeze(-1)
        loss = ((predicted - batch.actions) ** 2 * mask).sum() / (mask.sum() * ACT_DIM)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.optimizer.step()
        return {"loss": loss.detach()}


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Speed:
    """One learner's measured throughput (one rate per timing round) and the work of one step."""

    learner: str
    rates: list[float]
    gflop_per_step: float

    @property
    def steps_per_second(self) -> float:
        return statistics.median(self.rates)


def build_learner(name: str, dataset: OfflineDataset) -> OfflineAgent:
    """A toolkit offline learner at the paper sizes, with the dataset's statistics set."""
    from toolkit.offline import DatasetStatistics
    from toolkit.registry import registry

    spec = registry.agent(name)
    observation_space, action_space = hopper_spaces()
    agent = spec.build(spec.config(**PAPER_SETTINGS[name]), observation_space, action_space, "cpu")
    agent.set_dataset_statistics(DatasetStatistics.of(dataset))
    return agent


def training_step(learner: OfflineAgent | ReferenceLearner, dataset: OfflineDataset, seed: int) -> Callable[[], object]:
    """What the offline loop does per gradient step: sample a batch of windows, ``update``."""
    from toolkit.offline import SequenceSampler

    sampler = SequenceSampler(dataset, getattr(learner, "context_length", CONTEXT), "cpu", seed=seed)
    return lambda: learner.update(sampler.sample(BATCH))


def lstm_gflop(model: nn.Module, tokens: int) -> float:
    """Forward + backward FLOPs of the model's LSTMs, which torch's FLOP counter skips:
    per layer and token 2 * 4H(I + H) forward, twice that backward (Hochreiter & Schmidhuber 1997)."""
    flops = 0
    for lstm in (m for m in model.modules() if isinstance(m, nn.LSTM)):
        for layer in range(lstm.num_layers):
            inputs = lstm.input_size if layer == 0 else lstm.hidden_size
            flops += 3 * 2 * 4 * lstm.hidden_size * (inputs + lstm.hidden_size) * tokens
    return flops / 1e9


def gflop_per_step(learner: OfflineAgent | ReferenceLearner, step: Callable[[], object]) -> float:
    """Floating-point operations of one step: torch's count of its matmuls, plus its LSTMs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    tokens = BATCH * getattr(learner, "context_length", CONTEXT)
    return counter.get_total_flops() / 1e9 + lstm_gflop(learner.model, tokens)


def timed_rounds(steps: dict[str, Callable[[], object]], seconds: float, rounds: int) -> dict[str, list[float]]:
    """Steps/s of each step function over ``rounds`` rounds of about ``seconds`` each, the
    functions taking turns: on a shared machine a burst of load then slows every learner's
    round alike, and the median over rounds shrugs it off."""
    for step in steps.values():  # warm-up: allocator, lazy initialisation, first optimiser step
        for _ in range(3):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started, done = time.perf_counter(), 0
            while (elapsed := time.perf_counter() - started) < seconds or done == 0:
                step()
                done += 1
            rates[name].append(done / elapsed)
    return rates


def measure_all(learners: dict[str, OfflineAgent | ReferenceLearner], dataset: OfflineDataset, seconds: float, rounds: int, seed: int) -> list[Speed]:
    """Throughput of every learner, and its FLOPs counted on one extra step."""
    steps = {name: training_step(learner, dataset, seed) for name, learner in learners.items()}
    rates = timed_rounds(steps, seconds, rounds)
    return [Speed(name, rates[name], gflop_per_step(learner, steps[name])) for name, learner in learners.items()]


def matmul_gflops(trials: int = 10, repeats: int = 5) -> float:
    """This machine's float32 matmul throughput on a transformer MLP layer's three products
    (forward, and the two of backward) at the paper's batch of tokens, GFLOP/s: the best of
    ``trials``, as the bound is what the core can do, not what a shared machine let it."""
    tokens = BATCH * 3 * CONTEXT
    x, w, g = torch.randn(tokens, WIDTH), torch.randn(WIDTH, 4 * WIDTH), torch.randn(tokens, 4 * WIDTH)
    products = (lambda: x @ w, lambda: g @ w.T, lambda: x.T @ g)
    flops = 3 * 2 * tokens * WIDTH * 4 * WIDTH * repeats
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            for product in products:
                product()
        best = max(best, flops / (time.perf_counter() - started) / 1e9)
    return best


def evaluation_seconds(learner: OfflineAgent, episodes: int, seed: int, together: bool) -> float:
    """Wall time of ``episodes`` full-length (1000-step) Hopper-v4 evaluation episodes, run
    side by side or one at a time. The hopper may not fall (an untrained policy would within
    some 50 steps), so the episodes are as long as a good policy's."""
    from toolkit.envs import EnvOptions
    from toolkit.evaluation import evaluate

    learner.evaluates_episodes_together = together  # on the instance: the class keeps its own
    started = time.perf_counter()
    evaluate(learner, "Hopper-v4", episodes, seed=seed, options=EnvOptions(kwargs={"terminate_when_unhealthy": False}))
    return time.perf_counter() - started


def print_table(speeds: list[Speed], reference: str, gflops: float) -> None:
    """learner, steps/s (median and best round), ratio to the reference (medians), GFLOP per
    step and the steps/s the measured matmul throughput would allow for that work alone."""
    base = next(s.steps_per_second for s in speeds if s.learner == reference)
    print(f"{'learner':34s} {'steps/s':>8s} {'best':>7s} {'x ref':>6s} {'GFLOP/step':>11s} {'bound steps/s':>14s}")
    for s in speeds:
        print(f"{s.learner:34s} {s.steps_per_second:8.1f} {max(s.rates):7.1f} {s.steps_per_second / base:6.2f} "
              f"{s.gflop_per_step:11.3f} {gflops / max(s.gflop_per_step, 1e-9):14.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one timing round per learner")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (the median is printed)")
    parser.add_argument("--transitions", type=int, default=100_000, help="size of the synthetic dataset")
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    parser.add_argument("--eval-episodes", type=int, default=0,
                        help="also time this many Hopper-v4 evaluation episodes per learner (needs mujoco)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(args.seed)
    dataset = hopper_shaped_dataset(args.transitions, args.seed)
    learners = {name: build_learner(name, dataset) for name in args.learners}
    learners[REFERENCE] = ReferenceLearner()
    speeds = measure_all(learners, dataset, args.seconds, args.rounds, args.seed)
    gflops = matmul_gflops()
    print(f"synthetic Hopper-shaped data ({args.transitions} transitions); K={CONTEXT}, width {WIDTH}, batch {BATCH}; "
          f"{torch.get_num_threads()} thread(s); matmul {gflops:.1f} GFLOP/s; median of {args.rounds} rounds")
    print_table(speeds, REFERENCE, gflops)
    for name in args.learners if args.eval_episodes else ():
        alone, together = (evaluation_seconds(learners[name], args.eval_episodes, args.seed, t) for t in (False, True))
        print(f"evaluation {name:22s} {args.eval_episodes} x 1000 Hopper-v4 steps: one at a time {alone:6.1f} s, "
              f"side by side {together:6.1f} s")


if __name__ == "__main__":
    main()
