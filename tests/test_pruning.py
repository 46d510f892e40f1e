"""Pruning: exact sparsity per layer and globally, masks held through fine-tuning and a
checkpoint round trip, the max-drop choice, and `toolkit prune` on a classifier and an agent,
with every bad input as one sentence and the source run untouched."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import assert_clean_error

from toolkit.checkpointing import Checkpointed
from toolkit.errors import ToolkitError
from toolkit.pruning import (
    MASKS_KEY,
    SCAN_SPARSITIES,
    PruningMasks,
    choose_sparsities,
    count_weights,
    prunable_layers,
    prune_global,
    prune_per_layer,
    serialized_sizes,
)


class Toy(Checkpointed):
    """A learner with a conv, two linears, a target copy (never pruned) and one optimiser."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 32), nn.ReLU(),
                                 nn.Linear(32, 3))
        self.target_net = nn.Linear(3, 3)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.checkpointed = {"net": self.net, "target_net": self.target_net, "optimizer": self.optimizer}

    def step(self) -> None:
        x = torch.randn(16, 1, 8, 8)
        loss = self.net(x).pow(2).mean() - self.net(x).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def test_prunable_layers_are_the_weights_of_linears_and_convs_outside_targets() -> None:
    layers = prunable_layers(Toy())
    assert list(layers) == ["0", "3", "5"]
    assert isinstance(layers["0"], nn.Conv2d)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.7, 0.95])
def test_per_layer_pruning_reaches_the_asked_sparsity_exactly(sparsity: float) -> None:
    toy = Toy()
    prune_per_layer(toy, {name: sparsity for name in prunable_layers(toy)})
    for layer in prunable_layers(toy).values():
        n = layer.weight.numel()
        assert int((layer.weight == 0).sum()) == round(sparsity * n)


def test_global_pruning_reaches_the_asked_sparsity_exactly_over_all_layers() -> None:
    toy = Toy()
    prune_global(toy, 0.7)
    total, nonzero = count_weights(prunable_layers(toy))
    assert total - nonzero == round(0.7 * total)
    sparsities = [float((layer.weight == 0).float().mean()) for layer in prunable_layers(toy).values()]
    assert max(sparsities) - min(sparsities) > 0.01  # one ranking over all layers, not 0.7 each


def test_pruning_removes_the_smallest_magnitudes() -> None:
    toy = Toy()
    before = prunable_layers(toy)["3"].weight.detach().abs().clone()
    prune_per_layer(toy, {"3": 0.5})
    after = prunable_layers(toy)["3"].weight.detach()
    assert before[after == 0].max() <= before[after != 0].min()


def test_masks_survive_fine_tuning_and_a_checkpoint_round_trip(tmp_path: Path) -> None:
    toy = Toy()
    prune_global(toy, 0.6)
    zeros = {name: (layer.weight == 0).clone() for name, layer in prunable_layers(toy).items()}
    params_before = [p.detach().clone() for p in toy.net.parameters()]
    for _ in range(20):
        toy.step()
    assert any(not torch.equal(a, b) for a, b in zip(params_before, toy.net.parameters()))  # it trained
    for name, layer in prunable_layers(toy).items():
        assert torch.all(layer.weight[zeros[name]] == 0), name
    torch.save(toy.state_dict(), tmp_path / "ck.pt")
    fresh = Toy(seed=1)
    PruningMasks.attach(fresh)  # what a pruned run's session does before loading
    fresh.load_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True))
    for name, layer in prunable_layers(fresh).items():
        assert torch.equal(layer.weight == 0, zeros[name] | (layer.weight == 0))
        assert torch.all(layer.weight[zeros[name]] == 0)
    for _ in range(10):
        fresh.step()
    for name, layer in prunable_layers(fresh).items():
        assert torch.all(layer.weight[zeros[name]] == 0), name


def test_pruning_keeps_the_parameter_objects_the_optimiser_holds() -> None:
    toy = Toy()
    before = [id(p) for p in toy.net.parameters()]
    prune_global(toy, 0.5)
    assert [id(p) for p in toy.net.parameters()] == before
    assert isinstance(toy.checkpointed[MASKS_KEY], PruningMasks)


def test_sparse_size_on_disk_shrinks_with_sparsity() -> None:
    toy = Toy()
    dense0, sparse0 = serialized_sizes(toy)
    assert sparse0 == dense0  # nothing pruned: both files store dense tensors
    prune_global(toy, 0.8)
    dense, sparse = serialized_sizes(toy)
    assert dense == dense0 and sparse < 0.45 * dense


def test_max_drop_keeps_the_predicted_drop_within_the_bound() -> None:
    scan = {
        "a": {0.1: 0.90, 0.5: 0.89, 0.9: 0.50},  # robust until 0.5
        "b": {0.1: 0.85, 0.5: 0.60, 0.9: 0.10},  # sensitive
        "c": {0.1: 0.90, 0.5: 0.90, 0.9: 0.895},  # does not care
    }
    sizes = {"a": 1000, "b": 1000, "c": 10_000}
    chosen = choose_sparsities(scan, 0.90, 0.02, sizes)
    assert chosen == {"a": 0.5, "c": 0.9}
    predicted = sum(0.90 - scan[name][s] for name, s in chosen.items())
    assert predicted <= 0.02 + 1e-9
    assert choose_sparsities(scan, 0.90, 0.0, sizes) == {"a": 0.1, "c": 0.5}  # only free moves


def test_bad_sparsities_and_layer_names_are_one_sentence() -> None:
    toy = Toy()
    with pytest.raises(ToolkitError, match=r"must lie in \[0, 1\)"):
        prune_global(toy, 1.0)
    with pytest.raises(ToolkitError, match="prunable layers are: 0, 3, 5"):
        prune_per_layer(toy, {"fc9": 0.5})


# --------------------------------------------------------------------------- the command


def _digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    """The issue's classifier: a small cnn trained 300 steps on digits."""
    from typer.testing import CliRunner

    from toolkit.cli import app

    run_dir = tmp_path_factory.mktemp("prune") / "C"
    result = CliRunner().invoke(app, ["train", "cnn", "--dataset", "digits", "--steps", "300", "--run-dir",
                                      str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    return run_dir


def test_scan_writes_one_row_per_layer_and_sparsity(cli, cnn_run: Path, tmp_path: Path) -> None:
    before = _digest(cnn_run)
    result = cli("prune", cnn_run, "--scan", "--out", tmp_path / "S", "--no-progress")
    assert result.exit_code == 0, result.output
    with (tmp_path / "S" / "scan.csv").open() as f:
        rows = list(csv.DictReader(f))
    from toolkit.session import open_trained_run

    layers = list(prunable_layers(open_trained_run(cnn_run)[0].learner))
    assert [(r["layer"], float(r["sparsity"])) for r in rows] == [(n, s) for n in layers for s in SCAN_SPARSITIES]
    assert all(0.0 <= float(r["metric"]) <= 1.0 for r in rows)
    # Pruning a layer to 90% hurts more than pruning it to 10%, for most layers.
    by_layer = {n: {float(r["sparsity"]): float(r["metric"]) for r in rows if r["layer"] == n} for n in layers}
    assert sum(by_layer[n][0.9] <= by_layer[n][0.1] for n in layers) >= len(layers) - 1
    assert (tmp_path / "S" / "scan.png").stat().st_size > 10_000
    assert _digest(cnn_run) == before


def test_pruned_and_fine_tuned_cnn_keeps_its_accuracy_and_evaluates(cli, cnn_run: Path, tmp_path: Path) -> None:
    before = _digest(cnn_run)
    out = tmp_path / "P"
    result = cli("prune", cnn_run, "--sparsity", "0.7", "--finetune", "100", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune" / "report.json").read_text())
    weights = report["finetuned"]
    assert weights["prunable_weights"] - weights["nonzero_weights"] == round(0.7 * weights["prunable_weights"])
    assert report["pruned"]["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert weights["size_sparse_bytes"] < 0.5 * weights["size_dense_bytes"]
    # Measured: dense 0.983, pruned 0.942, fine-tuned 0.986 (2-core CPU, seed 0).
    assert report["metric_finetuned"] >= report["metric_dense"] - 0.02
    assert "70.0%" in result.output
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert settings["pruning"]["source_step"] == 300 and settings["steps"] == 400
    ev = cli("eval", out, "--no-figures")
    assert ev.exit_code == 0, ev.output
    saved = json.loads(next((out / "eval").glob("step-400.json")).read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(report["metric_finetuned"])
    assert _digest(cnn_run) == before
    # A pruned run resumes like any other, its zeros held.
    resumed = cli("resume", out, "--steps", "450", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    from toolkit.session import open_trained_run

    session, step = open_trained_run(out)
    total, nonzero = count_weights(prunable_layers(session.learner))
    assert step == 450 and total - nonzero >= round(0.7 * total)


def test_max_drop_chooses_per_layer_sparsities_from_a_scan(cli, cnn_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "M"
    result = cli("prune", cnn_run, "--max-drop", "0.01", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune" / "report.json").read_text())
    assert (out / "prune" / "scan.csv").is_file()
    assert report["pruned"]["sparsity"] > 0.3
    assert report["metric_pruned"] >= report["metric_dense"] - 0.05  # predicted 0.01; the sum is an estimate


@pytest.mark.parametrize("args, fragments", [
    (["--sparsity", "1.0"], ["--sparsity must lie in [0, 1), got 1.0"]),
    (["--sparsity", "-0.1"], ["--sparsity must lie in [0, 1)"]),
    (["--per-layer", "conv9=0.5"], ["no prunable layer 'conv9'", "conv1"]),
    (["--per-layer", "conv1"], ["NAME=SPARSITY"]),
    ([], ["Say what to do"]),
    (["--sparsity", "0.5", "--max-drop", "0.1"], ["not --sparsity and --max-drop"]),
    (["--scan", "--finetune", "10"], ["--finetune trains a pruned run"]),
])
def test_bad_prune_requests_are_one_sentence_and_touch_nothing(cli, cnn_run: Path, tmp_path: Path, args, fragments) -> None:
    before = _digest(cnn_run)
    result = cli("prune", cnn_run, *args, "--out", tmp_path / "X", "--no-progress")
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "X").exists()
    assert _digest(cnn_run) == before


def test_a_run_without_weights_or_prunable_layers_is_refused(cli, cnn_run: Path, tmp_path: Path, monkeypatch) -> None:
    assert_clean_error(cli("prune", tmp_path, "--scan"), "not a toolkit run")
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_text((cnn_run / "config.yaml").read_text())
    assert_clean_error(cli("prune", untrained, "--scan"), "has no checkpoint")
    monkeypatch.setattr(Checkpointed, "prunable_modules", lambda self: {})
    assert_clean_error(cli("prune", cnn_run, "--scan", "--out", tmp_path / "Y"), "no Linear or convolution weights")


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from toolkit.cli import app

    run_dir = tmp_path_factory.mktemp("prune") / "sac"
    result = CliRunner().invoke(app, ["train", "sac", "--env", "Pendulum-v1", "--steps", "1200", "--run-dir",
                                      str(run_dir), "--no-progress", "--set", "learning_starts=400"])
    assert result.exit_code == 0, result.output
    return run_dir


def test_sac_actor_pruned_to_half_is_evaluated(cli, sac_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "P"
    result = cli("prune", sac_run, "--sparsity", "0.5", "--episodes", "2", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune" / "report.json").read_text())
    assert report["metric"].startswith("mean evaluation return")
    assert report["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert set(report["pruned"]["layers"]) == {"net.0", "net.2", "net.4"}  # the actor only
    ev = cli("eval", out, "--episodes", "2")
    assert ev.exit_code == 0, ev.output
    assert "return" in ev.output


def test_fine_tuning_an_agent_whose_env_is_gone_is_one_sentence(cli, sac_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(sac_run, run)
    settings = yaml.safe_load((run / "config.yaml").read_text())
    settings["env"] = "NotInstalledEnv-v0"
    (run / "config.yaml").write_text(yaml.safe_dump(settings))
    before = _digest(run)
    result = cli("prune", run, "--sparsity", "0.5", "--finetune", "10", "--out", tmp_path / "Z")
    assert_clean_error(result, "NotInstalledEnv-v0")
    assert not (tmp_path / "Z").exists()
    assert _digest(run) == before
