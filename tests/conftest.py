"""Shared fixtures. Rendering is headless and tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402


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
