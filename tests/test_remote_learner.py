"""The learner on a cluster GPU: when it goes there, the remote run itself (as a Ray task
without a GPU, on this CPU-only machine), and the error when no GPU exists anywhere."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.distributed import remote_learner
from toolkit.distributed.remote_learner import learner_goes_remote
from toolkit.errors import ToolkitError
from toolkit.runs import CHECKPOINT, load_checkpoint, load_settings, read_metrics

torch.set_num_threads(1)

NO_GPU = "no GPU is visible to this torch or in the Ray cluster"


@pytest.mark.parametrize("device, local_cuda, cluster_gpus, remote", [
    ("cuda", False, 1, True),
    ("cuda:1", False, 4, True),
    ("cuda", True, 1, False),     # this torch has CUDA: the learner stays in the driver
    ("cuda:0", True, 0, False),
    ("cpu", False, 2, False),     # only an explicit cuda moves the learner
    ("auto", False, 2, False),
    ("cpu", False, 0, False),
])
def test_the_learner_goes_remote_only_for_cuda_without_local_cuda(
    device: str, local_cuda: bool, cluster_gpus: float, remote: bool,
) -> None:
    assert learner_goes_remote(device, local_cuda, cluster_gpus) is remote


@pytest.mark.parametrize("cluster_gpus", [0, 0.5])
def test_cuda_without_a_gpu_anywhere_is_a_clear_error(cluster_gpus: float) -> None:
    with pytest.raises(ToolkitError, match=NO_GPU):
        learner_goes_remote("cuda", False, cluster_gpus)


def test_workers_zero_never_asks_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_learner, "init_ray", lambda *a: pytest.fail("joined Ray"))
    assert remote_learner.learner_on_cluster_gpu(0, "cuda", None) is False
    assert remote_learner.learner_on_cluster_gpu(2, "cpu", None) is False


def test_train_and_resume_run_in_a_remote_learner(tmp_path: Path, ray_session: Any, capsys: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path with the GPU swapped for a CPU: the whole call runs as one Ray task
    (num_gpus=0, device cpu), whose loop starts its env runner from inside the task."""
    from toolkit import training

    monkeypatch.setattr(training, "learner_on_cluster_gpu", lambda *a: True)
    monkeypatch.setattr(training, "run_remote_learner",
                        functools.partial(remote_learner.run_remote_learner, num_gpus=0, device="cpu"))
    monkeypatch.chdir(tmp_path)  # the task's working directory differs: the run dir goes absolute
    settings = ["rollout_steps=64", "minibatch_size=64", "epochs=1", "hidden_sizes=16"]
    run, result = training.start_training("ppo", "CartPole-v1", steps=256, device="cpu", run_dir=Path("run"),
                                          workers=1, set_items=settings, checkpoint_every=0, log_every=64)
    assert run == tmp_path / "run" and run.is_dir()
    assert result.step >= 256 and not result.interrupted
    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] == result.step
    assert load_settings(run).workers == 1
    assert read_metrics(run, "train")
    assert "The learner runs on a Ray worker" in capsys.readouterr().err

    _, resumed = training.resume_training(Path("run"), steps=512)
    assert resumed.step >= 512 and not resumed.interrupted
    assert load_checkpoint(run / CHECKPOINT)["counters"]["step"] == resumed.step
    with pytest.raises(ToolkitError, match="has already trained"):  # raised in the task, re-raised here
        training.resume_training(Path("run"), steps=128)


def test_cuda_with_workers_and_no_gpu_anywhere_fails_cleanly(tmp_path: Path, cli: Any, ray_session: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import assert_clean_error

    if torch.cuda.is_available() or ray_session.cluster_resources().get("GPU", 0) >= 1:
        pytest.skip("a GPU is visible here")
    monkeypatch.chdir(tmp_path)
    result = cli("train", "ppo", "--env", "CartPole-v1", "--workers", "1", "--device", "cuda",
                 "--run-dir", tmp_path / "run", "--no-progress")
    assert_clean_error(result, NO_GPU)
    text = " ".join(result.output.split())
    assert text.count(". ") == 0 and text.rstrip().endswith("."), text  # one sentence
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_ctrl_c_on_the_driver_stops_the_remote_learner_with_a_checkpoint(
    tmp_path: Path, ray_session: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from toolkit import training

    def interrupted_get(ray: Any, ref: Any) -> Any:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the remote loop has trained a while
            time.sleep(0.5)
            try:
                if read_metrics(tmp_path / "run", "train"):
                    break
            except ValueError:  # a line being written
                pass
        raise KeyboardInterrupt

    monkeypatch.setattr(remote_learner, "_get", interrupted_get)
    monkeypatch.setattr(training, "learner_on_cluster_gpu", lambda *a: True)
    monkeypatch.setattr(training, "run_remote_learner",
                        functools.partial(remote_learner.run_remote_learner, num_gpus=0, device="cpu"))
    settings = ["rollout_steps=64", "minibatch_size=64", "epochs=1", "hidden_sizes=16"]
    with pytest.raises(ToolkitError, match="Stopped the learner on the cluster"):
        training.start_training("ppo", "CartPole-v1", steps=1_000_000, device="cpu", run_dir=tmp_path / "run",
                                workers=1, set_items=settings, checkpoint_every=0, log_every=64)
    # No periodic checkpoints: this one is the cancelled loop's own, written as it stopped.
    step = load_checkpoint(tmp_path / "run" / CHECKPOINT)["counters"]["step"]
    assert 64 <= step < 1_000_000
