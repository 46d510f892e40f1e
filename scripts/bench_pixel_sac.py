"""Benchmark: pixel SAC, this toolkit against stable-baselines3, side by side in one process.

    python scripts/bench_pixel_sac.py                    # Hopper-v4, 84x84, 1 torch thread, CPU
    python scripts/bench_pixel_sac.py --steps 400 --threads 2 --batch-size 256

Protocol
--------
* **Observations.** Both sides train on ``--env`` built by :func:`toolkit.envs.make_env` with
  ``EnvOptions(pixels=SIZE, frame_stack=3)``: each step renders MuJoCo offscreen at ``4 * SIZE``
  with the toolkit's fast render settings, shrinks the frame to ``SIZE x SIZE`` and stacks the
  last 3 RGB frames, a channels-first uint8 ``(9, SIZE, SIZE)`` observation. stable-baselines3
  gets that same env object type unchanged (its ``CnnPolicy`` takes channels-first uint8 images
  and does not transpose them), so an env step and its rendering cost the same on both sides.
* **Agents.** Same batch size, replay capacity, ``learning_starts``, one gradient step per env
  step, two 256-unit hidden layers, learning rate 3e-4, gamma 0.99, tau 0.005 and automatic
  entropy tuning (both libraries' defaults). Encoders of the same size class: the toolkit's
  ``encoder=nature`` (the Nature-DQN convolutions, 3136 features, one encoder shared by actor
  and critics and trained by the critic loss, with DrQ's random shift of obs and next_obs each
  update: ``toolkit_sac``'s pixel defaults) against sb3's ``CnnPolicy`` (``NatureCNN``: the same
  convolutions plus a 512-unit linear layer, one for the actor and one for the critics, since
  sb3's SAC defaults to ``share_features_extractor=False``).
* **Timing.** Both sides are built first and run their ``learning_starts`` random steps plus
  ``--warm`` learning steps untimed. Then the timed learning steps run in ``--chunks``
  alternating chunks (toolkit, sb3, toolkit, sb3, ...), so a change in the machine's load during
  the run hits both alike; env steps/s is the timed steps over the summed wall time of a side's
  chunks, every one of which must have made exactly one update per env step (checked). Both
  sides run in this process under one ``torch.set_num_threads(--threads)``. Neither writes
  anything while timed: sb3's ``learn`` writes no checkpoint, and the toolkit loop's end-of-run
  checkpoint is switched off here (each chunk is one ``run`` call). CPU seconds per wall second
  are reported too: below the thread count means the process waited for a core.
* **Memory.** Replay bytes per transition of capacity, everything the buffer allocates
  included: the toolkit's from ``bytes_per_transition()`` of the loop's own buffer (a
  :class:`~toolkit.buffers.FrameReplayBuffer`, each frame stored once); sb3's as the bytes of
  every array its ``ReplayBuffer`` allocated over its capacity, in its default mode (obs and
  next_obs both stored). sb3's ``optimize_memory_usage=True`` variant (which needs
  ``handle_timeout_termination=False``, i.e. time-limit truncations treated as terminations) is
  built and trained for a few updates to check that it works with SAC, and reported beside.
* **Targets.** Throughput toolkit/sb3 >= 1.5x and replay memory toolkit/sb3 <= 0.55x per
  transition (against sb3's default), each printed as a PASS or FAIL line, with the load
  average at the start and the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

#: RGB frames stacked into one observation.
FRAME_STACK = 3
#: Hidden layers of actor and critics on both sides.
HIDDEN = (256, 256)
#: What the run must show: toolkit/sb3 env steps per second at least, replay bytes at most.
THROUGHPUT_TARGET = 1.5
MEMORY_TARGET = 0.55


class Side(Protocol):
    """One library's pixel SAC, advanced a given number of env steps at a time."""

    name: str

    def advance(self, steps: int) -> int:
        """Run ``steps`` more env steps (with their updates); returns the updates made."""
        ...

    def replay_bytes(self) -> float:
        """Replay memory per transition of capacity, in bytes."""
        ...


@dataclass
class Timing:
    """The timed chunks of one side, summed."""

    steps: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    chunks: list[float] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu / self.wall


def pixel_env(env_id: str, size: int) -> Any:
    """``env_id`` observing stacks of 3 RGB renderings of ``size x size``, as ``--pixels`` builds it."""
    from toolkit.envs import EnvOptions, make_env

    return make_env(env_id, options=EnvOptions(pixels=size, frame_stack=FRAME_STACK))


class ToolkitSide:
    """``toolkit_sac`` with ``encoder=nature`` in the toolkit's :class:`OffPolicyLoop`."""

    name = "toolkit"

    def __init__(self, args: argparse.Namespace) -> None:
        from toolkit.loops.off_policy import OffPolicyLoop
        from toolkit.registry import registry
        from toolkit.runs import RunSettings
        from toolkit.session import build_config

        class UncheckpointedLoop(OffPolicyLoop):
            """The loop without the checkpoint ``run`` writes as it returns (sb3 writes none)."""

            def save(self) -> None:
                pass

        spec = registry.agent("sac")
        config = build_config(spec, set_items=[
            f"learning_starts={args.learning_starts}", f"batch_size={args.batch_size}",
            f"buffer_size={args.buffer_size}", "hidden_sizes=" + ",".join(map(str, HIDDEN)), "encoder=nature",
        ])
        env = pixel_env(args.env, args.size)
        torch.manual_seed(args.seed)
        agent = spec.build(config, env.observation_space, env.action_space, args.device)
        env.close()
        settings = RunSettings(agent="sac", env=args.env, seed=args.seed, steps=10**9, device=args.device,
                               checkpoint_every=0, log_every=10**9, pixels=args.size, frame_stack=FRAME_STACK)
        self._run_dir = tempfile.TemporaryDirectory(prefix="bench_pixel_sac_")
        self.loop = UncheckpointedLoop(agent, config, settings, lambda: pixel_env(args.env, args.size),
                                       Path(self._run_dir.name), torch.device(args.device), progress=False)

    def advance(self, steps: int) -> int:
        before = self.loop.updates
        self.loop.run(self.loop.step + steps)
        return self.loop.updates - before

    def replay_bytes(self) -> float:
        return float(self.loop.buffer.bytes_per_transition())

    def close(self) -> None:
        self.loop.env.env.close()
        self._run_dir.cleanup()


def sb3_sac(args: argparse.Namespace, learning_starts: int, **kwargs: Any) -> Any:
    """stable-baselines3's SAC with ``CnnPolicy`` on the pixel env, set up as the toolkit side."""
    from stable_baselines3 import SAC

    return SAC("CnnPolicy", pixel_env(args.env, args.size), buffer_size=args.buffer_size,
               learning_starts=learning_starts, batch_size=args.batch_size, train_freq=1, gradient_steps=1,
               policy_kwargs={"net_arch": list(HIDDEN)}, device=args.device, seed=args.seed, verbose=0, **kwargs)


def sb3_replay_bytes(buffer: Any) -> float:
    """Bytes of every array an sb3 replay buffer allocated, over its capacity in transitions."""
    allocated = sum(value.nbytes for value in vars(buffer).values() if isinstance(value, np.ndarray))
    return allocated / (buffer.buffer_size * buffer.n_envs)


class SB3Side:
    """stable-baselines3's SAC with ``CnnPolicy``, default replay buffer."""

    name = "sb3"

    def __init__(self, args: argparse.Namespace) -> None:
        self.model = sb3_sac(args, args.learning_starts)

    def advance(self, steps: int) -> int:
        before = self.model._n_updates
        # Not resetting continues the same episode and step count, as the toolkit's run() does.
        self.model.learn(steps, reset_num_timesteps=False)
        return self.model._n_updates - before

    def replay_bytes(self) -> float:
        return sb3_replay_bytes(self.model.replay_buffer)

    def close(self) -> None:
        self.model.env.close()


def time_chunk(side: Side, steps: int, timing: Timing) -> None:
    """Run one timed chunk of ``steps`` learning steps on ``side`` and add it to ``timing``."""
    gc.collect()  # garbage left by the other side is not this chunk's to collect
    wall, cpu = time.perf_counter(), time.process_time()
    updates = side.advance(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if updates != steps:
        raise RuntimeError(f"{side.name} made {updates} updates in {steps} timed env steps; expected one per step")
    timing.steps += steps
    timing.wall += wall
    timing.cpu += cpu
    timing.chunks.append(steps / wall)


def sb3_optimized_variant(args: argparse.Namespace) -> tuple[float, str]:
    """sb3's ``optimize_memory_usage=True`` buffer: its bytes per transition, and whether SAC
    trained with it (a few updates after a short random phase)."""
    random_steps, updates = 16, 4
    try:
        model = sb3_sac(args, random_steps, optimize_memory_usage=True,
                        replay_buffer_kwargs={"handle_timeout_termination": False})
    except Exception as exc:  # reported, not fatal: the main comparison is against the default
        return float("nan"), f"cannot be built: {type(exc).__name__}: {exc}"
    try:
        bytes_per_transition = sb3_replay_bytes(model.replay_buffer)
        model.learn(random_steps + updates)
        return bytes_per_transition, f"SAC trained with it ({model._n_updates} updates)"
    except Exception as exc:
        return bytes_per_transition, f"SAC fails with it: {type(exc).__name__}: {exc}"
    finally:
        model.env.close()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v4", help="a MuJoCo env that renders rgb_array")
    parser.add_argument("--size", type=int, default=84, help="side of the square pixel observations")
    parser.add_argument("--steps", type=int, default=160, help="timed learning env steps per side")
    parser.add_argument("--learning-starts", type=int, default=500, help="random env steps before learning")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--buffer-size", type=int, default=100_000, help="replay capacity in transitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--warm", type=int, default=10, help="untimed learning steps per side before timing")
    parser.add_argument("--chunks", type=int, default=4, help="alternating timed chunks per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device for both sides")
    args = parser.parse_args()
    if args.steps < args.chunks or args.chunks < 1:
        parser.error("--steps must be at least --chunks, and --chunks at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import stable_baselines3

    load_at_start = load_average()
    print(f"Pixel SAC on {args.env}: {FRAME_STACK} stacked RGB {args.size}x{args.size} frames, "
          f"batch {args.batch_size}, buffer {args.buffer_size:,}, learning_starts {args.learning_starts}, "
          f"1 update per env step, {args.steps} timed steps per side in {args.chunks} alternating chunks, "
          f"device {args.device}, {torch.get_num_threads()} torch thread(s) on both sides; torch {torch.__version__}, "
          f"stable-baselines3 {stable_baselines3.__version__}")
    print(f"load average at start: {load_at_start}", flush=True)

    sides: list[ToolkitSide | SB3Side] = [ToolkitSide(args), SB3Side(args)]
    timings = {side.name: Timing() for side in sides}
    for side in sides:  # random phase and warm-up, untimed
        start = time.perf_counter()
        side.advance(args.learning_starts + args.warm)
        print(f"  {side.name}: {args.learning_starts} random + {args.warm} learning steps untimed in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    per_chunk = [args.steps // args.chunks + (i < args.steps % args.chunks) for i in range(args.chunks)]
    for i, steps in enumerate(per_chunk):
        # Alternate which side goes first, so neither always follows the other's garbage or cache state.
        for side in sides if i % 2 == 0 else sides[::-1]:
            time_chunk(side, steps, timings[side.name])
            print(f"  chunk {i + 1}/{args.chunks} {side.name}: {timings[side.name].chunks[-1]:.2f} steps/s", flush=True)
    memory = {side.name: side.replay_bytes() for side in sides}
    for side in sides:
        side.close()
    del sides
    gc.collect()
    optimized_bytes, optimized_note = sb3_optimized_variant(args)
    load_at_end = load_average()

    ours, theirs = timings["toolkit"], timings["sb3"]
    speed_ratio = ours.steps_per_second / theirs.steps_per_second
    memory_ratio = memory["toolkit"] / memory["sb3"]
    print()
    print(f"{'':<34}{'toolkit':>12}{'sb3':>12}{'toolkit/sb3':>14}")
    print(f"{'env steps/s while learning':<34}{ours.steps_per_second:>12.2f}{theirs.steps_per_second:>12.2f}"
          f"{speed_ratio:>13.2f}x")
    print(f"{'  per chunk':<34}{' '.join(f'{x:.2f}' for x in ours.chunks):>12}"
          f"  {' '.join(f'{x:.2f}' for x in theirs.chunks)}")
    print(f"{'timed wall seconds':<34}{ours.wall:>12.1f}{theirs.wall:>12.1f}")
    print(f"{'CPU seconds per wall second':<34}{ours.cpu_per_wall:>12.2f}{theirs.cpu_per_wall:>12.2f}")
    print(f"{'replay bytes per transition':<34}{memory['toolkit']:>12,.0f}{memory['sb3']:>12,.0f}"
          f"{memory_ratio:>13.2f}x")
    print(f"{'replay GiB at capacity':<34}{memory['toolkit'] * args.buffer_size / 2**30:>12.2f}"
          f"{memory['sb3'] * args.buffer_size / 2**30:>12.2f}")
    print(f"sb3 with optimize_memory_usage=True (handle_timeout_termination=False): {optimized_bytes:,.0f} bytes per "
          f"transition (toolkit/that {memory['toolkit'] / optimized_bytes:.2f}x); {optimized_note}")
    print()
    print(f"{verdict(speed_ratio >= THROUGHPUT_TARGET)} throughput: toolkit/sb3 = {speed_ratio:.2f}x "
          f"(target >= {THROUGHPUT_TARGET}x)")
    print(f"{verdict(memory_ratio <= MEMORY_TARGET)} replay memory: toolkit/sb3 = {memory_ratio:.2f}x per transition "
          f"(target <= {MEMORY_TARGET}x, against sb3's default buffer)")
    print(f"load average at start: {load_at_start}")
    print(f"load average at end:   {load_at_end}")


if __name__ == "__main__":
    main()
