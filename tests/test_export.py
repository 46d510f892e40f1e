"""`toolkit export`: a standalone policy file takes the same actions as the agent's
deterministic act, loaded with plain torch (TorchScript) or onnxruntime (ONNX)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_clean_error
from toolkit.errors import ToolkitError
from toolkit.export import example_observations, export_run, load_policy

FAST = ["--set", "learning_starts=50", "--set", "batch_size=16", "--set", "hidden_sizes=16,16",
        "--no-progress", "--log-every", "50", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread_module):
    """A tiny sac (continuous actions) and a tiny dqn (discrete actions) run."""
    from typer.testing import CliRunner

    from toolkit.cli import app

    root = tmp_path_factory.mktemp("export")
    out = {}
    for agent, env in (("sac", "Pendulum-v1"), ("dqn", "CartPole-v1")):
        run_dir = root / agent
        result = CliRunner().invoke(app, ["train", agent, "--env", env, "--steps", "120", "--run-dir", str(run_dir), *FAST])
        assert result.exit_code == 0, result.output
        out[agent] = run_dir
    return out


def _reference(run_dir, batch=32):
    agent, session = load_policy(run_dir)
    obs = example_observations(session, batch=batch, seed=123)
    return obs, agent.act(obs, deterministic=True)


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_torchscript_acts_like_the_agent(runs, agent, tmp_path) -> None:
    path = export_run(runs[agent], "torchscript", tmp_path / "policy.pt")
    obs, expected = _reference(runs[agent])  # a batch size the trace never saw
    extra = {"policy.json": ""}
    policy = torch.jit.load(str(path), _extra_files=extra)
    actions = policy(obs)
    assert actions.dtype == expected.dtype and actions.shape == expected.shape
    torch.testing.assert_close(actions, expected, atol=1e-5, rtol=1e-5)
    assert b'"observation_shape"' in extra["policy.json"]


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_onnx_acts_like_the_agent(runs, agent, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = export_run(runs[agent], "onnx", tmp_path / "policy.onnx")
    obs, expected = _reference(runs[agent])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actions,) = session.run(["actions"], {"obs": obs.numpy()})
    assert actions.shape == tuple(expected.shape)
    np.testing.assert_allclose(actions, expected.numpy(), atol=1e-5, rtol=1e-5)
    assert "observation_shape" in session.get_modelmeta().custom_metadata_map


def test_the_cli_writes_the_default_file(runs, cli) -> None:
    result = cli("export", runs["dqn"], "--format", "torchscript")
    assert result.exit_code == 0, result.output
    assert (runs["dqn"] / "policy.pt").is_file()


def test_export_errors_are_one_sentence(runs, cli, tmp_path) -> None:
    assert_clean_error(cli("export", runs["sac"], "--format", "tflite"), "Unknown export format 'tflite'")
    assert_clean_error(cli("export", tmp_path, "--format", "onnx"), "is not a toolkit run")
    with pytest.raises(ToolkitError, match="torchscript or onnx"):
        export_run(runs["sac"], "keras")
