"""Shared fixtures. Rendering is headless and tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` inside, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tiny networks: on a busy two-core machine two threads mostly
    wait for each other (measured 5-10x slower)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with torch_threads(1):
        yield


@pytest.fixture
def cli():
    """Invoke the `toolkit` CLI in-process; returns Click's Result."""
    from toolkit.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def assert_clean_error(result, *fragments: str) -> None:
    """A CLI result that failed as a user error should: non-zero exit, no traceback, and a
    message containing every fragment."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole test session (2 CPUs, bounded object store, no
    dashboard), shut down at the end; tests that need Ray take this fixture."""
    ray = pytest.importorskip("ray")
    from toolkit.distributed.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
