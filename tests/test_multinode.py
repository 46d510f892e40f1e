"""A real two-node Ray cluster on this machine: `toolkit train --address` spreads its env runners
over both nodes, and killing the second node mid-run does not fail the run.

Everything runs in subprocesses, each node in its own process group started with
``ray start --block``, so the test stops exactly the nodes it started (``ray stop`` would stop
every Ray on the machine, including the test session's) and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.multinode

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
TOOLKIT = shutil.which("toolkit") or str(Path(sys.executable).with_name("toolkit"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process in a new session (its own process group), output to ``log``."""
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill ``process`` and everything in its process group (a node's raylet and workers)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(condition: Any, timeout: float, what: str, processes: list[subprocess.Popen]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for p in processes:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode} while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cluster_nodes(address: str, env: dict[str, str]) -> int:
    """Alive nodes of the cluster at ``address`` (0 if it does not answer yet)."""
    code = ("import ray; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def test_training_spans_two_nodes_and_survives_losing_one(tmp_path: Path) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # `ray start` clusters require Ray's auth token (~/.ray/auth_token); every client must send it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats", "--object-store-memory", str(128 * 1024**2)]
    processes: list[subprocess.Popen] = []
    try:
        head = _start([RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
                       "--num-cpus", "2", "--include-dashboard=false", *common], tmp_path / "head.log", env)
        processes.append(head)
        _wait_for(lambda: _cluster_nodes(address, env) >= 1, 90, "the head node", processes)
        # The second node has one CPU: the runners (one CPU each, spread) land one per node,
        # and the head has a CPU left for the runner that replaces the lost one.
        second = _start([RAY, "start", "--block", "--address", address, "--node-ip-address", "127.0.0.1",
                         "--num-cpus", "1", *common], tmp_path / "node2.log", env)
        processes.append(second)
        _wait_for(lambda: _cluster_nodes(address, env) >= 2, 90, "the second node", processes)

        run_dir = tmp_path / "run"
        train = _start([TOOLKIT, "train", "ppo", "--env", "CartPole-v1", "--workers", "2", "--envs-per-worker", "2",
                        "--address", address, "--steps", "10000000", "--device", "cpu", "--no-progress",
                        "--run-dir", str(run_dir), "--log-every", "512", "--checkpoint-every", "2048",
                        "--set", "rollout_steps=64", "--set", "minibatch_size=64", "--set", "epochs=1"],
                       tmp_path / "train.log", env)
        processes.append(train)

        def two_nodes() -> set[str]:
            nodes = {r["node"] for r in _records(run_dir) if r["kind"] == "worker" and r["event"] == "started"}
            return nodes if len(nodes) == 2 else set()

        _wait_for(two_nodes, 90, "runners on both nodes", processes)
        _wait_for(lambda: any(r["kind"] == "train" for r in _records(run_dir)), 60, "training", processes)

        _stop(second)  # the second node is gone, with its runner
        processes.remove(second)
        restarted = _wait_for(
            lambda: [r for r in _records(run_dir) if r["kind"] == "worker" and r["event"] == "restarted"],
            120, "the lost runner's restart", processes)
        _wait_for(lambda: any(r["kind"] == "train" and r["step"] > restarted[0]["step"] + 1024 for r in _records(run_dir)),
                  60, "training after the restart", processes)

        train.send_signal(signal.SIGINT)  # Ctrl-C: stop cleanly with a checkpoint
        assert train.wait(timeout=60) == 130, (tmp_path / "train.log").read_text()[-3000:]  # interrupted, saved
        output = (tmp_path / "train.log").read_text()
        assert "died" in output and "checkpoint saved" in output, output[-3000:]
        assert (run_dir / "checkpoints" / "latest.pt").is_file()
    finally:
        for process in reversed(processes):
            _stop(process)
