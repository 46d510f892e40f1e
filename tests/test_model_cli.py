"""Models on the command line: the journeys of `train`, `eval`, `resume`, `list`, `describe` and
`dataset frames`, exact resume of a model run, and every bad input as one sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_clean_error

from toolkit.runs import BEST_CHECKPOINT, CHECKPOINT, load_checkpoint, read_metrics

#: Small and quick on two cores: the digits VAE runs a few hundred steps a second.
QUICK = ["--no-progress", "--set", "hidden_sizes=64", "--set", "batch_size=64"]
MODELS = {"ae": "autoencoder", "dae": "autoencoder", "mae": "autoencoder", "vae": "generative",
          "beta-vae": "generative", "categorical-vae": "generative"}


def test_list_shows_every_model_with_its_kind(cli) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, kind in MODELS.items():
        assert any(line.split("│")[1:3] and line.split("│")[1].strip() == name and line.split("│")[2].strip() == kind
                   and "ok" in line for line in lines), (name, result.output)


def test_describe_shows_a_models_settings(cli) -> None:
    result = cli("describe", "vae")
    assert result.exit_code == 0, result.output
    for key in ("latent_dim", "prior", "beta", "encoder", "likelihood", "normal:0,1"):
        assert key in result.output


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    """The issue's journey: a digits VAE trained 300 steps (conv encoder, N(1, 2^2) prior, 2-D latents)."""
    from typer.testing import CliRunner

    from toolkit.cli import app

    run_dir = tmp_path_factory.mktemp("models") / "vae"
    args = ["train", "vae", "--dataset", "digits", "--steps", "300", "--run-dir", str(run_dir), "--no-progress",
            "--set", "encoder=conv", "--set", "prior=normal:1,2", "--set", "latent_dim=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run_dir


def test_model_run_trains_evaluates_with_figures_and_resumes(cli, vae_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "vae"
    shutil.copytree(vae_run, run_dir)
    evals = read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [30 * i for i in range(1, 11)]  # ten evaluations a run
    assert evals[-1]["elbo"] > evals[0]["elbo"]  # it learns

    result = cli("eval", run_dir, "--is-samples", "20")
    assert result.exit_code == 0, result.output
    for row in ("ELBO (nats)", "KL", "NLL, importance sampled k=20", "linear probe accuracy, 2-D latents", "PCA-2"):
        assert row in result.output, result.output
    report = json.loads((run_dir / "eval" / "step-300.json").read_text())
    metrics = report["metrics"]
    assert metrics["elbo"] == pytest.approx(metrics["recon"] - metrics["kl"], rel=1e-4)
    assert metrics["nll_is"] <= -metrics["elbo"] + 1e-3  # the IWAE bound is at least as tight as the ELBO
    figures = {p.name for p in (run_dir / "figures" / "step-300").iterdir()}
    assert figures == {"reconstructions.png", "samples.png", "traversals.png", "latent_scatter.png", "manifold.png"}

    result = cli("resume", run_dir, "--steps", "400", "--no-progress")
    assert result.exit_code == 0, result.output
    assert read_metrics(run_dir, "eval")[-1]["step"] == 400


def test_a_model_run_keeps_its_best_checkpoint_and_eval_reads_it(cli, vae_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "vae"
    shutil.copytree(vae_run, run_dir)
    evals = read_metrics(run_dir, "eval")
    best = max(evals, key=lambda row: row["elbo"])  # the VAE's score is its test ELBO
    state = load_checkpoint(run_dir / BEST_CHECKPOINT)
    assert state["counters"]["step"] == best["step"] and state["counters"]["best_value"] == pytest.approx(best["elbo"])
    result = cli("eval", run_dir, "--checkpoint", "best", "--is-samples", "5", "--no-figures")
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval" / f"best-step-{best['step']}.json").read_text())
    assert report["checkpoint"] == "best" and "elbo" in report["metrics"]


def test_resumed_model_run_continues_exactly(cli, tmp_path: Path) -> None:
    """Stopped at 60 steps and resumed to 120, a run logs what an unbroken 120-step run logs
    (besides the evaluation every run ends with, at 60)."""
    common = ["--dataset", "digits", "--log-every", "20", "--eval-every", "40", "--checkpoint-every", "1000", *QUICK]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert cli("train", "vae", "--steps", "120", "--run-dir", whole, *common).exit_code == 0
    assert cli("train", "vae", "--steps", "60", "--run-dir", broken, *common).exit_code == 0
    assert cli("resume", broken, "--steps", "120", "--no-progress").exit_code == 0

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in read_metrics(run)
                if not (r["kind"] == "eval" and r["step"] == 60)]

    assert len(records(whole)) == 6 + 3
    assert records(broken) == records(whole)


def test_frames_file_trains_an_autoencoder(cli, tmp_path: Path) -> None:
    frames = tmp_path / "f.hdf5"
    result = cli("dataset", "frames", "--env", "Pendulum-v1", "--steps", "60", "--size", "16", "--out", frames,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Wrote 60 frames of 16x16" in result.output
    run_dir = tmp_path / "ae"
    result = cli("train", "ae", "--dataset", frames, "--steps", "40", "--run-dir", run_dir, *QUICK)
    assert result.exit_code == 0, result.output
    assert read_metrics(run_dir, "eval")[-1]["recon_error"] < 0.1


def test_resume_refuses_a_frames_file_of_another_size(cli, tmp_path: Path) -> None:
    frames = tmp_path / "f.hdf5"
    assert cli("dataset", "frames", "--env", "Pendulum-v1", "--steps", "30", "--size", "16", "--out", frames,
               "--no-progress").exit_code == 0
    run_dir = tmp_path / "ae"
    assert cli("train", "ae", "--dataset", frames, "--steps", "20", "--run-dir", run_dir, *QUICK).exit_code == 0
    frames.unlink()
    assert cli("dataset", "frames", "--env", "Pendulum-v1", "--steps", "30", "--size", "24", "--out", frames,
               "--no-progress").exit_code == 0
    before = (run_dir / CHECKPOINT).read_bytes()
    assert_clean_error(cli("resume", run_dir, "--steps", "40", "--no-progress"),
                       "shape (3, 24, 24)", "trained on (3, 16, 16)")
    assert (run_dir / CHECKPOINT).read_bytes() == before  # nothing lost


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "vae", "--dataset", "digitz"], ["Unknown", "digitz", "Did you mean 'digits'"]),
        (["train", "vae", "--env", "CartPole-v1", "--dataset", "digits"], ["learns from a dataset, not an environment", "drop --env"]),
        (["train", "vae"], ["needs --dataset SOURCE", "mnist-5k"]),
        (["train", "sac", "--env", "Pendulum-v1", "--dataset", "digits"], ["image dataset, which models learn from", "drop --dataset"]),
        (["train", "bc", "--env", "Pendulum-v1", "--dataset", "mnist-5k"], ["image dataset", "D4RL or Minari"]),
        (["train", "vae", "--dataset", "digits", "--set", "latent_dim=0"], ["latent_dim"]),
        (["train", "vae", "--dataset", "digits", "--set", "beta=-1"], ["beta"]),
        (["train", "vae", "--dataset", "digits", "--set", "prior=normal:1"], ["prior", "normal:1"]),
        (["train", "vae", "--dataset", "digits", "--set", "prior=normal:0,-2"], ["prior"]),
        (["train", "vae", "--dataset", "digits", "--set", "prior=gaussian:0,1"], ["gaussian"]),
        (["train", "vae", "--dataset", "mnist1d", "--set", "encoder=conv"], ["encoder=conv needs images"]),
        (["train", "vae", "--dataset", "digits", "--workers", "2"], ["one process", "drop --workers"]),
        (["eval", "no-such-run"], ["does not exist"]),
    ],
)
def test_bad_model_input_is_one_sentence_and_writes_nothing(cli, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    run_dir = tmp_path / "run"
    extra = ["--run-dir", str(run_dir), "--steps", "10", "--no-progress"] if args[0] == "train" else []
    assert_clean_error(cli(*args, *extra), *fragments)
    assert not run_dir.exists()


def test_not_a_frames_file_and_broken_directories_are_refused(cli, tmp_path: Path) -> None:
    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("hello")
    assert_clean_error(cli("train", "ae", "--dataset", not_hdf5, "--run-dir", tmp_path / "a"), str(not_hdf5))
    no_frames = tmp_path / "empty.hdf5"
    with h5py.File(no_frames, "w") as f:
        f["observations"] = np.zeros((4, 3), dtype=np.float32)
    assert_clean_error(cli("train", "ae", "--dataset", no_frames, "--run-dir", tmp_path / "b"), "frames")

    idx = tmp_path / "mnist"
    idx.mkdir()
    images = np.array([0x00000803, 10, 28, 28], dtype=">u4").tobytes()
    labels = np.array([0x00000801, 10], dtype=">u4").tobytes()
    (idx / "train-images-idx3-ubyte").write_bytes(images + bytes(28 * 28 * 3))  # 3 of the 10 images it announces
    assert_clean_error(cli("train", "ae", "--dataset", idx, "--run-dir", tmp_path / "c"), "not train-labels-idx1-ubyte")
    (idx / "train-labels-idx1-ubyte").write_bytes(labels + bytes(10))
    (idx / "t10k-images-idx3-ubyte").write_bytes(images + bytes(28 * 28 * 10))
    (idx / "t10k-labels-idx1-ubyte").write_bytes(labels + bytes(10))
    assert_clean_error(cli("train", "ae", "--dataset", idx, "--run-dir", tmp_path / "c"), "train-images-idx3-ubyte")

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    (cifar / "data_batch_1").write_bytes(b"\x80\x04not a whole pickle")
    assert_clean_error(cli("train", "ae", "--dataset", cifar, "--run-dir", tmp_path / "d"), "no test_batch")
    (cifar / "test_batch").write_bytes(b"\x80\x04not a whole pickle either")
    assert_clean_error(cli("train", "ae", "--dataset", cifar, "--run-dir", tmp_path / "d"), "data_batch_1")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_a_model_sweep_is_planned_on_its_dataset_and_scored_by_its_test_metric(cli) -> None:
    from toolkit.distributed.sweep import plan_sweep

    plan = plan_sweep("vae", None, ["latent_dim=2,8"], seeds=2, dataset="digits")
    assert (plan.model, plan.metric, plan.env, plan.trials) == (True, "test ELBO", "digits", 4)
    assert_clean_error(cli("sweep", "vae", "--env", "CartPole-v1", "--dataset", "digits", "--grid", "beta=1,2"),
                       "not an environment")
    assert_clean_error(cli("sweep", "vae", "--dataset", "digits", "--grid", "latent_dim=2,-1"), "latent_dim")
