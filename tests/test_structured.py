"""Structured pruning (`toolkit prune RUN --structured R`): channels really removed, the network
still a classifier, the report complete, the source run untouched, and every refusal one
sentence, including the one for a missing torch-pruning (which CI's `test` extra leaves out).

Tests that prune need torch-pruning and skip without it; the refusals run everywhere."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error, torch_threads


def _digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _train(run_dir: Path, *args: str) -> Path:
    from typer.testing import CliRunner

    from toolkit.cli import app

    # One thread: these runs are tiny, and on a busy two-core machine two threads mostly wait
    # for each other (measured: 100 steps of the cnn in 8 s on one thread, 40 s on two).
    with torch_threads(1):
        result = CliRunner().invoke(app, ["train", *args, "--run-dir", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    """A small cnn (conv 32, conv 64, fc 128, softmax head) trained 100 steps on digits."""
    return _train(tmp_path_factory.mktemp("structured") / "C", "cnn", "--dataset", "digits", "--steps", "100")


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory) -> Path:
    """A cheap agent run (300 steps of DQN on CartPole)."""
    return _train(tmp_path_factory.mktemp("structured") / "D", "dqn", "--env", "CartPole-v1", "--steps", "300")


# --------------------------------------------------------------------------- pruning works


def test_half_the_channels_go_and_the_report_says_so(cli, cnn_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch_pruning")
    before = _digest(cnn_run)
    out = tmp_path / "S"
    result = cli("prune", cnn_run, "--structured", "0.5", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "structured.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["structured.json"]  # a report, not a run
    for key in ("source", "source_step", "learner", "ratio", "method", "dense", "structured", "layers", "latency",
                "speedup", "parameter_ratio", "macs_ratio", "accuracy_drop", "fine_tuned"):
        assert key in report, key
    for side in ("dense", "structured"):
        assert set(report[side]) == {"parameters", "macs", "latency_ms", "accuracy"}
        assert report[side]["latency_ms"] > 0 and 0.0 <= report[side]["accuracy"] <= 1.0
    assert report["learner"] == "cnn" and report["ratio"] == 0.5 and report["source_step"] == 100
    assert report["fine_tuned"] is False
    # Half of every layer's channels: the interior weight matrices keep about a quarter.
    # Measured: 53,002 -> 13,706 parameters (0.259), 356,874 -> 96,522 MACs (0.270).
    assert report["layers"] == {"conv1": {"before": 32, "after": 16}, "conv2": {"before": 64, "after": 32},
                                "fc1": {"before": 128, "after": 64}, "head.linear": {"before": 10, "after": 10}}
    assert report["structured"]["parameters"] < 0.3 * report["dense"]["parameters"]
    assert report["structured"]["macs"] < 0.3 * report["dense"]["macs"]
    latency = report["latency"]
    assert latency["device"] == "cpu" and latency["batch"] == 256 and latency["threads"] >= 1
    assert len(latency["dense_ms"]) == len(latency["structured_ms"]) == latency["repeats"]
    assert report["speedup"] == pytest.approx(report["dense"]["latency_ms"] / report["structured"]["latency_ms"])
    # Latency on a shared CI machine is too noisy to assert a speed-up; the table must show it.
    text = " ".join(result.output.split())
    for fragment in ("parameters", "53,002", "MACs per example", "latency, batch 256", "no fine-tuning", "speed-up:",
                     "conv1 32->16"):
        assert fragment in text, fragment
    assert _digest(cnn_run) == before


def test_the_pruned_network_is_still_a_classifier_and_the_source_network_is_untouched(cnn_run: Path) -> None:
    pytest.importorskip("torch_pruning")
    from toolkit.session import open_trained_run
    from toolkit.structured import structured_prune

    session, _ = open_trained_run(cnn_run)
    weights = {k: v.clone() for k, v in session.learner.network.state_dict().items()}
    report = structured_prune(session, 0.5, repeats=2, warmup=1, threads=1)
    assert report.latency["threads"] == 1 and len(report.latency["dense_ms"]) == 2
    network = report.network
    x = torch.rand(7, 1, 8, 8)
    with torch.inference_mode():
        log_probs = network(x)
    assert log_probs.shape == (7, 10)
    assert torch.allclose(log_probs.logsumexp(dim=1), torch.zeros(7), atol=1e-5)  # normalised
    assert network.head.in_features == 64 == network.head.linear.in_features
    # The session's own network keeps its shapes and weights.
    after = session.learner.network.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert session.learner.network.conv1.out_channels == 32


def test_batch_norm_and_hidden_layers_follow_their_channels() -> None:
    """A VGG-style body (conv, batch norm, pools, flatten, fc) without training: every coupled
    tensor is cut consistently, and the smallest-L1 filters are the ones removed."""
    pytest.importorskip("torch_pruning")
    from toolkit.nn.heads import make_head
    from toolkit.structured import layer_widths, prune_channels
    from toolkit_vision.classifiers import ClassifierNetwork, fc_layers, vgg11_layers

    torch.manual_seed(0)
    layers, flat = vgg11_layers((1, 8, 8), width=8)
    out = fc_layers(layers, flat, (32,), dropout=0.5)
    network = ClassifierNetwork(layers, make_head("softmax", out, 10)).eval()
    with torch.no_grad():
        network.conv1.weight[:4].mul_(0.01)  # filters 0-3 of conv1: the smallest L1 norms
    keep = network.conv1.weight[4:].clone()
    pruned = prune_channels(network, 0.5, torch.rand(1, 1, 8, 8))
    widths, dense = layer_widths(pruned), layer_widths(network)
    assert all(widths[name] == dense[name] // 2 for name in dense if name != "head.linear")
    assert widths["head.linear"] == 10
    assert pruned.bn1.num_features == 4 and pruned.conv2.in_channels == 4
    assert torch.equal(pruned.conv1.weight, keep)
    assert network.conv1.out_channels == 8  # the original is untouched
    with torch.inference_mode():
        assert pruned(torch.rand(3, 1, 8, 8)).shape == (3, 10)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2", "nan"])
def test_a_ratio_outside_zero_one_is_one_sentence(cli, cnn_run: Path, tmp_path: Path, ratio: str) -> None:
    before = _digest(cnn_run)
    result = cli("prune", cnn_run, "--structured", ratio, "--out", tmp_path / "X")
    assert_clean_error(result, "--structured must lie in (0, 1)")
    assert not (tmp_path / "X").exists()
    assert _digest(cnn_run) == before


@pytest.mark.parametrize("args, flag", [
    (["--sparsity", "0.5"], "--sparsity"),
    (["--per-layer", "conv1=0.5"], "--per-layer"),
    (["--max-drop", "0.01"], "--max-drop"),
    (["--scan"], "--scan"),
    (["--finetune", "10"], "--finetune"),
])
def test_structured_with_another_pruning_flag_is_one_sentence(cli, cnn_run: Path, tmp_path: Path, args, flag) -> None:
    result = cli("prune", cnn_run, "--structured", "0.5", *args, "--out", tmp_path / "X")
    assert_clean_error(result, f"--structured cannot be combined with {flag}")
    assert not (tmp_path / "X").exists()


def test_an_agent_run_is_refused_in_one_sentence(cli, dqn_run: Path, tmp_path: Path) -> None:
    before = _digest(dqn_run)
    result = cli("prune", dqn_run, "--structured", "0.5", "--out", tmp_path / "X")
    assert_clean_error(result, "for classifiers", "dqn is an agent")
    assert not (tmp_path / "X").exists()
    assert _digest(dqn_run) == before


def test_an_existing_out_is_refused(cli, cnn_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("prune", cnn_run, "--structured", "0.5", "--out", out), "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert_clean_error(cli("prune", cnn_run, "--structured", "0.5", "--out", cnn_run / "inside"),
                       "inside the source run")


def test_without_torch_pruning_the_answer_is_how_to_install_it(cli, cnn_run: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    # None in sys.modules makes `import torch_pruning` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    before = _digest(cnn_run)
    result = cli("prune", cnn_run, "--structured", "0.5", "--out", tmp_path / "X")
    assert_clean_error(result, "needs the torch-pruning library", 'pip install -e ".[prune]"')
    assert not (tmp_path / "X").exists()
    assert _digest(cnn_run) == before
