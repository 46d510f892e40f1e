"""Demonstration: World Models (Ha & Schmidhuber 2018) at a small scale, with its controls.

The paper's recipe, as this script runs it for every seed (``--seeds``):

1. **Collect.** ``--frames`` steps of uniformly random actions in ``--env``, each state
   rendered and shrunk to ``--size`` x ``--size`` (``toolkit.data.frames.record_frames``, the
   code behind ``toolkit dataset frames``). These are the only real steps the dream-trained
   controller ever depends on.
2. **World model.** ``toolkit train world-model`` on that file: V (a conv VAE, ``--vae-steps``
   gradient steps) and then M (an MDN-RNN over V's latents and the actions, with reward and
   termination heads), ``--wm-steps`` steps in all. It is trained as two runs: the first
   stops at the end of V's phase (``--steps = vae_steps``) and a copy of it is resumed up to
   ``--wm-steps`` (resuming is exact, so the copy continues as one unbroken run would). The
   first run is therefore *the same world model with an MDN-RNN that never took a gradient
   step*: V identical, M at its random initialisation. That is the ablation below.
3. **Controller in the dream.** PPO (``--controller-steps`` steps) only inside
   ``toolkit/Dream-v0``: it observes ``[z, h]`` (V's latent and M's hidden state), M samples
   the next latent at ``--temperature`` (1.15, the paper's best for its Doom dream), reward
   and termination are M's predictions. Dreams start from real first frames of the file and
   are cut at the real env's own time limit (500 for CartPole).
4. **Transfer.** The dream-trained controller is evaluated (deterministic actions, the same
   ``--episodes`` evaluation episodes for every row of a seed) in
   ``toolkit/WorldModelReal-v0``: the real env, rendered the way the frames were recorded and
   observed through the same V and M, so its observation is the same ``[z, h]``.

Rows of the table, each from the same seeds and evaluation episodes:

* **random policy**: uniform random actions, in the real env (and in the trained dream: a
  faithful dream gives it about the same return);
* **PPO in the dream** of the trained world model: real return (the result) and its return in
  its own dream (the **dream-vs-real gap**: how much of its dream score was an exploit of M);
* **PPO in the real env** through ``toolkit/WorldModelReal-v0`` (the same ``[z, h]``, the same
  PPO settings), trained for the **same wall-clock time** as the dream controller took (it is
  stopped through the run's ``STOP`` file once that time has passed, at the end of the rollout
  under way, so it gets up to one rollout more, about 10 s: a bias in its favour; it never runs
  more steps than the dream controller did). Both times are in the table. The world model's
  own cost (recording and training, a few minutes) is not in either: the question here is
  what the same controller-training time buys in the dream and in the real env;
* **ablation, PPO in the dream of an untrained M**: same V, same PPO, same steps, but M at
  initialisation, evaluated in the real env (through that untrained M, the features it
  trained on). Its dream has no knowledge of the dynamics, reward or termination.

Why CartPole-v1 at 32x32 and not the paper's CarRacing at 64x64
-------------------------------------------------------------
The default run must take about 20 minutes on two shared CPU cores. Measured here with one
torch thread: CarRacing-v3 renders and shrinks 23-45 steps/s, so 10,000 random frames alone
would take 4-7 minutes and the real-env rows (1,000-step episodes through V and M) would get
almost no steps; a conv VAE step on a batch of 32 frames costs about 0.14 s at 64x64 against
0.05 s at 32x32. CartPole renders about 200 steps/s at 32x32 and, like the paper's Doom
experiment (VizDoom TakeCover, the one it trained entirely in the dream), it is a survival
task: +1 per step until the pole falls, so the dream must predict *termination* from pixels.
Pendulum-v1 was tried too: at 32x32 its VAE stayed on the mean frame after 1,500 steps.

What the settings are for (all measured on this machine's frames, seed 0):

* V: 16 latents, free bits ``kl_tolerance=2.0`` (32 nats per frame for free, where the default
  0.5 left V at its floor of 8 nats with a blurred pole), 3,000 steps of 32 frames: a linear
  probe of V's means reads the pole angle with R^2 0.88 (0.79 after 1,500 steps).
* M: 128 LSTM units, ``seq_len=64``, 3,000 steps. Random CartPole episodes last 22 steps on
  average (99 % under 60), so a 64-step window holds a whole episode and its final,
  terminating step is weighted like any other; with 16-step windows that step is seen about
  16 times less often than the others. A dream ends only where M's termination probability
  passes 0.5, so this matters: with V at 1,500 steps and 16-step windows no terminal step
  passed 0.5 and random-action dreams all ran the full 500 steps; 64-step windows (M 2,000
  steps) lifted that to 9 % of terminal steps and dreams of 292 steps; with V and M at 3,000
  steps each, 76 % and dreams of 23 steps on average, as long as the real random episodes.
  These settings were chosen on seed 0's frames; seed 1 is a fresh check.
* ``torch.set_num_threads(1)``: on this shared machine two intra-op threads made shrinking one
  600x400 CartPole frame take 34 ms instead of 1 ms.

Outputs under ``--out`` (default ``runs/demo-world-model-<time>``, which git ignores): every run
directory (``seed<N>/``), ``results.json`` and ``results.md`` (the table). The real-vs-dreamt
strip of seed 0's world model is copied to ``docs/figures/world-model-dream.png``.

    python scripts/demo_world_model.py                       # 2 seeds, ~20 min on 2 cores
    python scripts/demo_world_model.py --seeds 1 --frames 3000 --wm-steps 1200 --vae-steps 600 \\
        --controller-steps 8192 --episodes 3 --no-figure     # a smoke run of the pipeline, ~2 min
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import torch

from toolkit.data.frames import record_frames
from toolkit.envs import EnvOptions, make_env
from toolkit.evaluation import evaluate
from toolkit.runs import read_metrics
from toolkit.trainer import STOP_FILE
from toolkit.training import evaluate_model_run, evaluate_run, resume_training, start_training

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "figures" / "world-model-dream.png"
DREAM_ENV = "toolkit/Dream-v0"
REAL_ENV = "toolkit/WorldModelReal-v0"
#: The world model's settings besides its step counts (see the module docstring for why).
WORLD_MODEL_SETTINGS = ("latent_dim=16", "kl_tolerance=2.0", "vae_batch_size=32", "hidden=128", "seq_len=64",
                        "batch_size=32")
#: PPO's settings, the same for every controller (the toolkit's defaults, written out).
CONTROLLER = "ppo"
CONTROLLER_SETTINGS = ("num_envs=8", "rollout_steps=256")
#: Rows of the table, by key.
ROW_ORDER = ("random", "dream", "real", "ablation")
#: Evaluation episodes of seed ``s`` are seeded from ``EVAL_SEED + 1000 * s`` on.
EVAL_SEED = 50_000
#: Ha & Schmidhuber's CarRacing-v0 score (100 trials, V+M+C with CMA-ES, in the real env).
PAPER_ANCHOR = "906 +/- 21 on CarRacing-v0 (full scale: 10,000 rollouts, 64x64 frames, CMA-ES, trained in the real env)"


# --------------------------------------------------------------------------- results


@dataclass
class Controller:
    """One row of one seed: how a controller was trained and what it scored."""

    #: "random", "dream", "real" or "ablation".
    key: str
    name: str
    trained_in: str
    #: Steps of the env it trained in (dream or real), and how long that training took.
    train_steps: int = 0
    train_seconds: float = 0.0
    #: Real env steps it depended on: the random frames of the world model, or its own.
    real_steps_used: int = 0
    real_returns: list[float] = field(default_factory=list)
    dream_returns: list[float] = field(default_factory=list)


@dataclass
class SeedResult:
    seed: int
    controllers: list[Controller]
    #: Seconds of each stage of this seed.
    seconds: dict[str, float]
    #: M's test metrics (last evaluation record) with a trained and an untrained M.
    world_model: dict[str, float]
    untrained_world_model: dict[str, float]
    #: Share of recorded steps that did not end an episode: the score of always answering "no".
    no_termination_rate: float
    frames_episodes: int

    def row(self, key: str) -> Controller:
        return next(c for c in self.controllers if c.key == key)


# --------------------------------------------------------------------------- pieces


class RandomPolicy:
    """Uniform random actions through the evaluation interface (``act`` on a batch of one)."""

    def __init__(self, space: gym.Space, seed: int) -> None:
        self.space = space
        self.space.seed(seed)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.space.sample()))[None]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def last_eval(run_dir: Path) -> dict[str, float]:
    """The last evaluation record of a run, without its step and kind."""
    records = read_metrics(run_dir, "eval")
    return {k: v for k, v in records[-1].items() if k not in ("step", "kind")} if records else {}


def train_world_models(frames: Path, seed_dir: Path, seed: int, vae_steps: int, wm_steps: int,
                       device: str) -> tuple[Path, Path]:
    """V alone (the untrained-M world model), then a copy of it resumed through M's phase."""
    settings = [*WORLD_MODEL_SETTINGS, f"vae_steps={vae_steps}"]
    untrained = seed_dir / "world-model-untrained-m"
    start_training("world-model", None, steps=vae_steps, seed=seed, device=device, set_items=settings,
                   run_dir=untrained, progress=False, dataset=frames)
    trained = seed_dir / "world-model"
    shutil.copytree(untrained, trained)
    resume_training(trained, steps=wm_steps, progress=False)
    return untrained, trained


def train_controller(env_id: str, env_kwargs: dict[str, Any], run_dir: Path, seed: int, steps: int, device: str,
                     stop_after: float | None = None) -> tuple[int, float]:
    """PPO in ``env_id`` for ``steps`` steps, or until ``stop_after`` seconds have passed (then
    it stops at the end of the rollout under way). Returns the steps it ran and its seconds."""
    timer = None
    if stop_after is not None:
        # The loop looks for this file between rollouts and stops there with a checkpoint.
        timer = threading.Timer(stop_after, lambda: (run_dir / STOP_FILE).touch() if run_dir.is_dir() else None)
    start = time.perf_counter()
    if timer is not None:
        timer.start()
    try:
        _, result = start_training(CONTROLLER, env_id, steps=steps, seed=seed, device=device,
                                   set_items=list(CONTROLLER_SETTINGS), run_dir=run_dir, progress=False,
                                   env_kwargs=env_kwargs)
    finally:
        if timer is not None:
            timer.cancel()
    seconds = time.perf_counter() - start
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    return int(result.step), seconds


def random_returns(env_id: str, env_kwargs: dict[str, Any], episodes: int, eval_seed: int) -> list[float]:
    """Returns of uniform random actions on the evaluation episodes of ``eval_seed``."""
    env = make_env(env_id, options=EnvOptions(kwargs=env_kwargs))
    try:
        policy = RandomPolicy(env.action_space, eval_seed)
        return evaluate(policy, env_id, episodes, eval_seed, env=env).returns
    finally:
        env.close()


def run_seed(args: argparse.Namespace, seed: int, dream_max_steps: int) -> SeedResult:
    seed_dir = args.out / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    eval_seed = EVAL_SEED + 1000 * seed

    log(f"seed {seed}: recording {args.frames} random steps of {args.env} at {args.size}x{args.size}")
    start = time.perf_counter()
    frames = record_frames(args.env, args.frames, args.size, seed_dir / "frames.hdf5", seed=seed, progress=False)
    seconds["record"] = time.perf_counter() - start
    with h5py.File(frames.path, "r") as f:
        no_termination_rate = float(1.0 - np.mean(f["terminations"][()]))
    log(f"  {frames.frames} steps, {frames.episodes} episodes in {seconds['record']:.0f} s")

    log(f"seed {seed}: world model: V {args.vae_steps} steps, then M {args.wm_steps - args.vae_steps} steps")
    start = time.perf_counter()
    untrained, trained = train_world_models(frames.path, seed_dir, seed, args.vae_steps, args.wm_steps, args.device)
    seconds["world_model"] = time.perf_counter() - start
    wm_metrics, untrained_metrics = last_eval(trained), last_eval(untrained)
    log(f"  done in {seconds['world_model']:.0f} s: M's test NLL/dim {wm_metrics.get('mdn_nll', float('nan')):.3f} "
        f"(copy-last-latent {wm_metrics.get('copy_nll', float('nan')):.3f}), termination accuracy "
        f"{wm_metrics.get('termination_accuracy', float('nan')):.3f}")
    if seed == args.seed_base and args.figure:
        start = time.perf_counter()
        _, _, paths = evaluate_model_run(trained, is_samples=10, is_limit=100, seed=seed)
        strip = next(p for p in paths if p.name == "dream.png")
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(strip, FIGURE)
        seconds["figures"] = time.perf_counter() - start
        log(f"  dream strip copied to {FIGURE.relative_to(REPO)}")

    def dream_kwargs(world: Path) -> dict[str, Any]:
        return {"run": str(world), "temperature": args.temperature, "max_steps": dream_max_steps}

    random_row = Controller("random", "random policy", "-", real_steps_used=0)
    random_row.real_returns = random_returns(REAL_ENV, {"run": str(trained)}, args.episodes, eval_seed)
    random_row.dream_returns = random_returns(DREAM_ENV, dream_kwargs(trained), args.episodes, eval_seed)
    rows = {"random": random_row}

    dreams = [("dream", "PPO in the dream", "dream of the trained world model", trained),
              ("ablation", "ablation: PPO in an untrained M's dream", "dream of the world model before M trained",
               untrained)]
    for key, name, where, world in dreams:
        log(f"seed {seed}: {name}: {args.controller_steps} steps in {DREAM_ENV}")
        row = Controller(key, name, where, real_steps_used=frames.frames)
        run_dir = seed_dir / f"ppo-{key}"
        row.train_steps, row.train_seconds = train_controller(DREAM_ENV, dream_kwargs(world), run_dir, seed,
                                                              args.controller_steps, args.device)
        start = time.perf_counter()
        row.real_returns = evaluate_run(run_dir, args.episodes, env=REAL_ENV, env_kwargs={"run": str(world)},
                                        seed=eval_seed)[0].returns
        row.dream_returns = evaluate_run(run_dir, args.episodes, seed=eval_seed)[0].returns
        seconds[f"ppo-{key}"] = row.train_seconds
        seconds[f"eval ppo-{key}"] = time.perf_counter() - start
        log(f"  trained in {row.train_seconds:.0f} s; real return {statistics.fmean(row.real_returns):.1f}, "
            f"dream return {statistics.fmean(row.dream_returns):.1f}")
        rows[key] = row

    dream_seconds = rows["dream"].train_seconds
    log(f"seed {seed}: PPO in the real env ({REAL_ENV}) for the dream controller's {dream_seconds:.0f} s")
    real_row = Controller("real", "PPO in the real env, same wall-clock", "real env through V and M (same [z, h])")
    run_dir = seed_dir / "ppo-real"
    real_row.train_steps, real_row.train_seconds = train_controller(
        REAL_ENV, {"run": str(trained)}, run_dir, seed, args.controller_steps, args.device, stop_after=dream_seconds)
    real_row.real_steps_used = frames.frames + real_row.train_steps
    seconds["ppo-real"] = real_row.train_seconds
    real_row.real_returns = evaluate_run(run_dir, args.episodes, seed=eval_seed)[0].returns
    log(f"  {real_row.train_steps} real steps in {real_row.train_seconds:.0f} s; "
        f"real return {statistics.fmean(real_row.real_returns):.1f}")
    rows["real"] = real_row

    controllers = [rows[key] for key in ROW_ORDER]
    return SeedResult(seed, controllers, seconds, wm_metrics, untrained_metrics, no_termination_rate, frames.episodes)


# --------------------------------------------------------------------------- the table


def cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.pstdev(values):.1f}" if values else "-"


def table(results: list[SeedResult], args: argparse.Namespace) -> list[str]:
    """Markdown table: one row per controller, pooled over seeds (per-seed means beside)."""
    multi = len(results) > 1
    header = ["controller", "trained in", "real env steps used", "training steps", "training s",
              f"real return ({args.episodes} ep. x {len(results)} seed{'s' if multi else ''})",
              "real return per seed", "dream return (own dream)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in ROW_ORDER:
        rows = [r.row(key) for r in results]
        first = rows[0]
        real = [x for row in rows for x in row.real_returns]
        dream = [x for row in rows for x in row.dream_returns]
        per_seed = " / ".join(f"{statistics.fmean(row.real_returns):.1f}" for row in rows)
        if multi:
            means = [statistics.fmean(row.real_returns) for row in rows]
            per_seed += f" (sd {statistics.stdev(means):.1f})"
        steps = statistics.fmean(row.train_steps for row in rows)
        secs = statistics.fmean(row.train_seconds for row in rows)
        used = statistics.fmean(row.real_steps_used for row in rows)
        lines.append("| " + " | ".join([
            first.name, first.trained_in, f"{used:,.0f}", f"{steps:,.0f}" if steps else "-",
            f"{secs:.0f}" if secs else "-", cell(real), per_seed, cell(dream),
        ]) + " |")
    return lines


def summary(results: list[SeedResult]) -> list[str]:
    """The comparisons the table is for, as numbers (pooled over seeds and episodes)."""
    def pooled(key: str, attr: str = "real_returns") -> float:
        return statistics.fmean(x for r in results for x in getattr(r.row(key), attr))

    random_real, dream_real, real_real, ablation_real = (pooled(key) for key in ROW_ORDER)
    lines = [
        f"dream-trained - random (real env): {dream_real - random_real:+.1f}",
        f"dream-trained - real-trained at equal wall-clock (real env): {dream_real - real_real:+.1f}",
        f"dream-vs-real gap of the dream-trained controller: {pooled('dream', 'dream_returns'):.1f} in its dream "
        f"vs {dream_real:.1f} real ({dream_real - pooled('dream', 'dream_returns'):+.1f})",
        f"ablation (untrained M) - random (real env): {ablation_real - random_real:+.1f}; "
        f"dream-trained - ablation: {dream_real - ablation_real:+.1f}",
        f"dream fidelity: random policy {pooled('random', 'dream_returns'):.1f} in the trained dream vs "
        f"{random_real:.1f} real",
    ]
    for r in results:
        wm, um = r.world_model, r.untrained_world_model
        lines.append(
            f"seed {r.seed} world model (test episodes): M NLL/dim {wm.get('mdn_nll', float('nan')):.3f} trained, "
            f"{um.get('mdn_nll', float('nan')):.3f} untrained, copy-last-latent "
            f"{wm.get('copy_nll', float('nan')):.3f}; "
            f"termination accuracy {wm.get('termination_accuracy', float('nan')):.3f} trained, "
            f"{um.get('termination_accuracy', float('nan')):.3f} untrained, always-'no' "
            f"{r.no_termination_rate:.3f} (whole file); V KL {wm.get('kl', float('nan')):.1f} nats/frame"
        )
    lines.append(f"paper anchor: {PAPER_ANCHOR}; not comparable in env or scale.")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", help="A Gymnasium env that renders rgb_array (default CartPole-v1).")
    p.add_argument("--size", type=int, default=32, help="Side of the recorded frames in pixels (default 32).")
    p.add_argument("--frames", type=int, default=10_000, help="Random-action steps recorded per seed (default 10,000).")
    p.add_argument("--wm-steps", type=int, default=6_000,
                   help="World-model gradient steps in all, V's included, as `toolkit train --steps` counts "
                        "(default 6,000).")
    p.add_argument("--vae-steps", type=int, default=3_000, help="Of --wm-steps, those of V (default 3,000).")
    p.add_argument("--controller-steps", type=int, default=61_440,
                   help="PPO steps in each dream (default 61,440: 30 rollouts of 8 x 256).")
    p.add_argument("--temperature", type=float, default=1.15, help="Temperature of the dream (default 1.15).")
    p.add_argument("--seeds", type=int, default=2, help="Seeds, each a whole pipeline from recording on (default 2).")
    p.add_argument("--seed-base", type=int, default=0, help="First seed (default 0).")
    p.add_argument("--episodes", type=int, default=10, help="Evaluation episodes per controller and seed (default 10).")
    p.add_argument("--device", default="cpu", help="Device of every run (default cpu).")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; see the docstring).")
    p.add_argument("--no-figure", dest="figure", action="store_false", help=f"Do not write {FIGURE.relative_to(REPO)}.")
    p.add_argument("--out", type=Path, default=None, help="Output directory (default runs/demo-world-model-<time>).")
    args = p.parse_args(argv)
    if not 0 < args.vae_steps < args.wm_steps:
        p.error(f"--vae-steps must be positive and below --wm-steps, got {args.vae_steps} and {args.wm_steps}")
    for name in ("size", "frames", "controller_steps", "seeds", "episodes", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.out is None:
        args.out = REPO / "runs" / f"demo-world-model-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} exists and is not empty; choose another --out")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    # Dreams are cut where the real env's episodes are (CartPole: 500 steps).
    spec = gym.spec(args.env)
    dream_max_steps = int(spec.max_episode_steps or 1_000)
    start = time.perf_counter()
    last_seed = args.seed_base + args.seeds - 1
    log(f"World Models demo: {args.env}, {args.size}x{args.size} frames, seeds {args.seed_base}..{last_seed}, "
        f"out {args.out}")
    results = [run_seed(args, args.seed_base + i, dream_max_steps) for i in range(args.seeds)]
    wall = time.perf_counter() - start

    lines = [
        f"World Models demo on {args.env} ({args.size}x{args.size} frames, {args.frames:,} random steps per seed, "
        f"world model {args.wm_steps:,} steps (V {args.vae_steps:,}), PPO {args.controller_steps:,} dream steps, "
        f"dream temperature {args.temperature}, dreams cut at {dream_max_steps} steps); returns are mean ± std over "
        f"all evaluation episodes of all seeds, deterministic actions.",
        "",
        *table(results, args),
        "",
        *summary(results),
        f"wall time: {wall / 60:.1f} min",
    ]
    print("\n" + "\n".join(lines), flush=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "wall_seconds": wall,
         "command": " ".join(sys.argv), "seeds": [asdict(r) for r in results]}, indent=2))


if __name__ == "__main__":
    main()
