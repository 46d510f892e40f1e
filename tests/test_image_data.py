"""Image data sources (named, IDX, CIFAR, frames files) and the frames recorder."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest

from toolkit.data.frames import FRAMES_FORMAT, record_frames
from toolkit.rendering import resize_frame
from toolkit.data.images import NAMED_SOURCES, ImageDataset, is_image_source, load_image_source
from toolkit.errors import ToolkitError


def raises_naming(*fragments: str) -> Any:
    """``pytest.raises(ToolkitError)`` that also checks the message is one line naming ``fragments``."""

    class Check:
        def __enter__(self) -> None:
            self.ctx = pytest.raises(ToolkitError)
            self.info = self.ctx.__enter__()

        def __exit__(self, *exc: Any) -> bool:
            suppressed = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message and "Traceback" not in message, message
            for fragment in fragments:
                assert fragment in message, message
            return suppressed

    return Check()


# --- named sources ------------------------------------------------------------------------

EXPECTED = {
    # source: (shape, dtype, examples, examples per class)
    "digits": ((1, 8, 8), np.float32, 1797, None),
    "mnist-5k": ((1, 28, 28), np.uint8, 5000, 500),
    "mnist1d": ((40,), np.float32, 5000, 500),
}


@pytest.mark.parametrize("source", NAMED_SOURCES)
def test_named_source_shapes_labels_and_seeded_split(source):
    shape, dtype, total, per_class = EXPECTED[source]
    state = np.random.get_state()[1].copy()
    data = load_image_source(source, seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # loading never reseeds numpy
    assert isinstance(data, ImageDataset) and data.source == source
    assert data.shape == shape and data.x_train.shape[1:] == data.x_test.shape[1:] == shape
    assert data.x_train.dtype == data.x_test.dtype == dtype
    assert len(data.x_train) + len(data.x_test) == total and len(data.x_test) == round(total * 0.2)
    assert data.y_train.dtype == data.y_test.dtype == np.int64
    assert len(data.y_train) == len(data.x_train) and len(data.y_test) == len(data.x_test)
    labels = np.concatenate([data.y_train, data.y_test])
    assert data.num_classes == 10 and set(np.unique(labels)) == set(range(10))
    if per_class is not None:
        assert np.bincount(labels).tolist() == [per_class] * 10
    spec = data.spec
    assert (spec.shape, spec.num_classes, spec.source) == (shape, 10, source)
    for x in (data.x_train, data.x_test):
        as_float = data.to_float(x[:50])
        assert as_float.dtype == np.float32 and 0.0 <= as_float.min() and as_float.max() <= 1.0
    assert data.to_float(data.x_train).max() == 1.0  # scaled to the whole range, not a sliver of it

    again = load_image_source(source, seed=0)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    other = load_image_source(source, seed=1, test_fraction=0.5)
    assert len(other.x_test) == total // 2
    other = load_image_source(source, seed=1)
    assert not np.array_equal(other.y_train, data.y_train)


def test_bad_names_and_fractions():
    with raises_naming("Unknown image source 'digts'", "Did you mean 'digits'?"):
        load_image_source("digts")
    with raises_naming("Unknown image source 'cifar'"):
        load_image_source("cifar")
    with raises_naming("test fraction", "1.0"):
        load_image_source("digits", test_fraction=1.0)
    assert not is_image_source("digts")


# --- MNIST IDX directories ----------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of uint8 ``array``: magic 0x0800 + ndim, big-endian sizes, then the data."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_keeps_the_official_split(tmp_path, gz):
    arrays = write_idx_dir(tmp_path / "mnist", gz=gz)
    assert is_image_source(str(tmp_path / "mnist"))
    data = load_image_source(str(tmp_path / "mnist"), seed=3)
    assert data.shape == (1, 28, 28) and data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.num_classes == int(max(arrays["train-labels-idx1-ubyte"].max(), arrays["t10k-labels-idx1-ubyte"].max())) + 1


def test_idx_under_a_torchvision_root(tmp_path):
    write_idx_dir(tmp_path / "MNIST" / "raw")
    assert load_image_source(str(tmp_path)).x_test.shape == (4, 1, 28, 28)
    write_idx_dir(tmp_path / "FashionMNIST" / "raw")
    with raises_naming(str(tmp_path), "several datasets"):
        load_image_source(str(tmp_path))


def test_idx_truncated_wrong_magic_count_mismatch_missing(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_dir(folder)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with raises_naming(str(images), "truncated"):
        load_image_source(str(folder))

    write_idx_dir(folder)
    labels = folder / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(4), magic=0x0803))
    with raises_naming(str(labels), "magic number", "0x00000803", "0x00000801"):
        load_image_source(str(folder))

    labels.write_bytes(idx_bytes(np.zeros(5)))
    with raises_naming(str(labels), "4 images", "5 labels"):
        load_image_source(str(folder))

    write_idx_dir(folder)
    gzipped = folder / "train-labels-idx1-ubyte.gz"
    (folder / "train-labels-idx1-ubyte").unlink()
    gzipped.write_bytes(gzip.compress(idx_bytes(np.zeros(6)))[:-8])  # cut off inside the gzip stream
    with raises_naming(str(gzipped)):
        load_image_source(str(folder))

    gzipped.unlink()
    with raises_naming(str(folder), "train-labels-idx1-ubyte"):
        load_image_source(str(folder))


# --- CIFAR-10 python batches --------------------------------------------------------------


def write_cifar_batch(path: Path, n: int, seed: int, protocol: int = 2) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, size=n).tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_directory_with_a_subset_of_batches(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    first = write_cifar_batch(folder / "data_batch_1", 5, seed=1, protocol=protocol)
    third = write_cifar_batch(folder / "data_batch_3", 2, seed=3, protocol=protocol)
    test = write_cifar_batch(folder / "test_batch", 3, seed=4, protocol=protocol)
    for source in (folder, tmp_path):  # the batches folder or the root above it
        assert is_image_source(str(source))
        data = load_image_source(str(source))
        assert data.shape == (3, 32, 32) and data.x_train.dtype == np.uint8
        assert len(data.x_train) == 7 and len(data.x_test) == 3
        np.testing.assert_array_equal(data.x_train[5:].reshape(2, -1), third[b"data"])
        assert data.y_train.tolist() == first[b"labels"] + third[b"labels"] and data.y_train.dtype == np.int64
        # Row layout: red plane, green plane, blue plane, each 32 rows of 32.
        assert data.x_test[1, 2, 0, 5] == test[b"data"][1][2 * 1024 + 5]


def test_cifar_truncated_and_incomplete(tmp_path):
    folder = tmp_path / "cifar"
    write_cifar_batch(folder / "data_batch_1", 4, seed=1)
    batch = folder / "test_batch"
    write_cifar_batch(batch, 4, seed=2)
    batch.write_bytes(batch.read_bytes()[:-100])
    with raises_naming(str(batch), "truncated or corrupt"):
        load_image_source(str(folder))

    batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2]}))
    with raises_naming(str(batch), "4 images but 2 labels"):
        load_image_source(str(folder))

    batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [1] * 4}))
    with raises_naming(str(batch), "3072"):
        load_image_source(str(folder))

    batch.unlink()
    with raises_naming(str(folder), "no test_batch"):
        load_image_source(str(folder))


class _Exploit:
    """Pickles as a call to os.system, the classic malicious pickle."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def test_cifar_pickle_that_runs_code_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar"
    write_cifar_batch(folder / "test_batch", 2, seed=0)
    marker = tmp_path / "pwned"
    batch = folder / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(f"touch {marker}"), b"labels": [0, 1]}, protocol=2))
    with raises_naming(str(batch), "system", "not loaded"):
        load_image_source(str(folder))
    assert not marker.exists()
    batch.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [eval]}))
    with raises_naming(str(batch), "builtins.eval"):
        load_image_source(str(folder))


# --- bad paths ------------------------------------------------------------------------------


def test_bad_paths_name_the_file(tmp_path):
    with raises_naming("No file or directory at", str(tmp_path / "missing.hdf5")):
        load_image_source(str(tmp_path / "missing.hdf5"))
    with raises_naming("No file or directory at ./nowhere/data"):
        load_image_source("./nowhere/data")

    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    with raises_naming(str(text), "not an HDF5 file"):
        load_image_source(str(text))
    assert not is_image_source(str(text))

    d4rl = tmp_path / "d4rl.hdf5"
    with h5py.File(d4rl, "w") as f:
        f["observations"] = np.zeros((3, 2), np.float32)
    with raises_naming(str(d4rl), "no 'frames'"):
        load_image_source(str(d4rl))
    assert not is_image_source(str(d4rl))

    bad = tmp_path / "bad_frames.hdf5"
    with h5py.File(bad, "w") as f:
        f["frames"] = np.zeros((3, 8, 8), np.uint8)
    with raises_naming(str(bad), "[N, H, W, C]"):
        load_image_source(str(bad))

    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_naming(str(empty), "neither MNIST IDX files", "nor CIFAR-10"):
        load_image_source(str(empty))
    assert not is_image_source(str(empty)) and not is_image_source(str(tmp_path / "missing.hdf5"))


# --- recording frames -----------------------------------------------------------------------


def test_record_pendulum_frames_and_read_them_back(tmp_path):
    out = tmp_path / "frames" / "pendulum.hdf5"
    summary = record_frames("Pendulum-v1", steps=50, size=16, out=out, seed=5, progress=False)
    assert (summary.path, summary.frames, summary.episodes, summary.size) == (out, 50, 1, 16)
    assert summary.seconds > 0 and not list(out.parent.glob(".*tmp"))
    with h5py.File(out, "r") as f:
        assert f["frames"].shape == (50, 16, 16, 3) and f["frames"].dtype == np.uint8
        assert f["actions"].shape == (50, 1) and f["actions"].dtype == np.float32
        assert f["rewards"].shape == (50,) and f["rewards"].dtype == np.float32
        assert f["terminations"].dtype == f["truncations"].dtype == bool
        assert not f["terminations"][()].any() and not f["truncations"][()].any()  # 200-step episodes
        attrs = dict(f.attrs)
        frames = f["frames"][()]
    assert attrs["format"] == FRAMES_FORMAT and attrs["env_id"] == "Pendulum-v1"
    assert attrs["size"] == 16 and attrs["seed"] == 5 and attrs["source_run"] == ""
    assert frames.std() > 0 and not np.array_equal(frames[0], frames[-1])  # a picture that moves

    assert is_image_source(str(out))
    data = load_image_source(str(out), seed=0)
    assert data.shape == (3, 16, 16) and data.y_train is None and data.num_classes is None
    assert len(data.x_train) == 40 and len(data.x_test) == 10 and data.spec.num_classes is None
    restored = np.concatenate([data.x_train, data.x_test]).transpose(0, 2, 3, 1)
    assert sorted(map(bytes, restored)) == sorted(map(bytes, frames))

    with raises_naming(str(out), "already exists"):
        record_frames("Pendulum-v1", steps=5, size=16, out=out, progress=False)


class _Blink(gym.Env):
    """A tiny env that terminates every 7 steps and renders its step count as a flat colour."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 10.0, shape=(1,))
        self.action_space = gym.spaces.Discrete(3)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.array([self.t], np.float32), float(action), self.t == 7, False, {}

    def render(self) -> np.ndarray:
        return np.full((24, 40, 3), 30 * self.t, np.uint8)


class _NoPictures(_Blink):
    metadata = {"render_modes": ["human"], "render_fps": 10}


class _RendersNothing(_Blink):
    def render(self) -> None:
        return None


gym.register("ImageDataTest/Blink-v0", entry_point=_Blink)
gym.register("ImageDataTest/NoPictures-v0", entry_point=_NoPictures)
gym.register("ImageDataTest/RendersNothing-v0", entry_point=_RendersNothing)


def test_episodes_end_where_flags_are_set_and_grey_frames(tmp_path):
    out = tmp_path / "blink.hdf5"
    summary = record_frames("ImageDataTest/Blink-v0", steps=16, size=8, out=out, seed=1, progress=False, grey=True)
    assert (summary.frames, summary.episodes) == (16, 3)  # 7 + 7 + an unfinished 2
    with h5py.File(out, "r") as f:
        frames, actions, rewards = f["frames"][()], f["actions"][()], f["rewards"][()]
        terminations = f["terminations"][()]
    assert frames.shape == (16, 8, 8, 1) and actions.dtype == np.int64 and actions.shape == (16,)
    assert np.flatnonzero(terminations).tolist() == [6, 13]
    # Row t shows s_t (before a_t): the step counter restarts after each episode's last row.
    assert frames[:, 0, 0, 0].tolist() == [30 * t for t in [*range(7), *range(7), 0, 1]]
    np.testing.assert_array_equal(rewards, actions.astype(np.float32))

    again = tmp_path / "blink2.hdf5"
    record_frames("ImageDataTest/Blink-v0", steps=16, size=8, out=again, seed=1, progress=False, grey=True)
    with h5py.File(again, "r") as f:
        np.testing.assert_array_equal(f["actions"][()], actions)  # random actions follow the seed


@pytest.mark.filterwarnings("ignore:.*RGB-array rendering should return")
def test_record_refuses_bad_requests(tmp_path):
    out = tmp_path / "x.hdf5"
    with raises_naming("steps", "0"):
        record_frames("Pendulum-v1", steps=0, size=16, out=out, progress=False)
    with raises_naming("size", "at least 8", "4"):
        record_frames("Pendulum-v1", steps=5, size=4, out=out, progress=False)
    with raises_naming("ImageDataTest/NoPictures-v0", "cannot render"):
        record_frames("ImageDataTest/NoPictures-v0", steps=5, size=8, out=out, progress=False)
    with raises_naming("ImageDataTest/RendersNothing-v0", "rendered nothing"):
        record_frames("ImageDataTest/RendersNothing-v0", steps=5, size=8, out=out, progress=False)
    with raises_naming("Unknown environment 'Pendulum-v9'"):
        record_frames("Pendulum-v9", steps=5, size=8, out=out, progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())  # no file, not even a temporary one


def test_resize_averages_areas():
    frame = np.zeros((4, 6, 4), np.uint8)  # RGBA, not square
    frame[:2, :, 0] = 200
    frame[..., 3] = 255
    small = resize_frame(frame, 2)
    assert small.shape == (2, 2, 3) and small.dtype == np.uint8
    assert small[..., 0].tolist() == [[200, 200], [0, 0]] and not small[..., 1:].any()
    assert resize_frame(frame, 2, grey=True)[..., 0].tolist() == [[60, 60], [0, 0]]  # 0.299 * 200
    # MuJoCo renders upside down and returns a flipped view (negative strides).
    assert resize_frame(frame[::-1], 2)[..., 0].tolist() == [[0, 0], [200, 200]]


def test_record_with_a_trained_policy(tmp_path):
    from toolkit.training import start_training

    run_dir = tmp_path / "sac"
    start_training(
        "sac", "Pendulum-v1", steps=40, run_dir=run_dir, progress=False, checkpoint_every=0,
        set_items=["learning_starts=20", "batch_size=8", "hidden_sizes=8"],
    )
    out = tmp_path / "policy.hdf5"
    summary = record_frames("Pendulum-v1", steps=10, size=8, out=out, run_dir=run_dir, progress=False)
    assert summary.frames == 10
    with h5py.File(out, "r") as f:
        assert f.attrs["source_run"] == str(run_dir)
        actions = f["actions"][()]
    assert actions.shape == (10, 1) and np.abs(actions).max() <= 2.0 and actions.std() > 0


def test_mujoco_frames_with_fast_render_settings(tmp_path):
    pytest.importorskip("mujoco")
    from toolkit.rendering import fast_render_settings
    from toolkit.envs import make_env

    env = make_env("Hopper-v4", render_mode="rgb_array")
    fast_render_settings(env)
    quality = env.unwrapped.model.vis.quality
    assert (quality.offsamples, quality.shadowsize) == (0, 0)
    env.close()
    fast_render_settings(make_env("Pendulum-v1"))  # not MuJoCo: nothing to do, no error

    out = tmp_path / "hopper.hdf5"
    record_frames("Hopper-v4", steps=5, size=8, out=out, progress=False)
    with h5py.File(out, "r") as f:
        frames = f["frames"][()]
        assert f["actions"].shape == (5, 3)
    # MuJoCo renders upside down; the sky (darker blue-grey) must be at the top.
    assert frames.shape == (5, 8, 8, 3) and frames[:, 0].mean() < frames[:, -1].mean()
