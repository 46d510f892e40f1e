"""Offline datasets: D4RL HDF5 and Minari round trips, episodes, scores, bad input, collection."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_clean_error
from toolkit.data import (
    REFERENCE_SCORES,
    OfflineDataset,
    check_dataset_fits,
    load_dataset,
    normalized_score,
    save_dataset,
)
from toolkit.errors import ToolkitError

FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def make_dataset(metadata: dict[str, str] | None = None) -> OfflineDataset:
    """Three episodes over 9 rows: terminated at row 2, timed out at row 6, unfinished tail.

    ``next_observations`` continue the observations inside each episode, as real data does
    (Minari stores an episode's observations once, so it can only keep consistent successors).
    """
    rng = np.random.default_rng(0)
    states = rng.normal(size=(12, 3)).astype(np.float32)
    # Episode e's rows use states[start + e : end + e], its successors one further on.
    rows, nxt = [], []
    for e, (start, end) in enumerate([(0, 3), (3, 7), (7, 9)]):
        rows.append(states[start + e : end + e])
        nxt.append(states[start + e + 1 : end + e + 1])
    return OfflineDataset(
        observations=np.concatenate(rows),
        actions=rng.uniform(-1, 1, size=(9, 2)).astype(np.float32),
        rewards=np.arange(1, 10, dtype=np.float32),
        terminals=np.array([0, 0, 1, 0, 0, 0, 0, 0, 0], bool),
        timeouts=np.array([0, 0, 0, 0, 0, 0, 1, 0, 0], bool),
        next_observations=np.concatenate(nxt),
        infos={"qpos": rng.normal(size=(9, 4))},
        metadata=metadata or {"env_id": "Pendulum-v1", "quality": "medium"},
    )


def assert_same(a: OfflineDataset, b: OfflineDataset) -> None:
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert getattr(a, "observations").dtype == np.float32 and a.terminals.dtype == bool


def write_h5(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def raw_arrays(rows: int = 5, obs: int = 3, act: int = 1) -> dict[str, np.ndarray]:
    return {
        "observations": np.zeros((rows, obs), np.float32),
        "actions": np.zeros((rows, act), np.float32),
        "rewards": np.zeros(rows, np.float32),
        "terminals": np.zeros(rows, bool),
        "timeouts": np.zeros(rows, bool),
    }


# --- formats -------------------------------------------------------------------------------


def test_d4rl_round_trip_keeps_values_flags_infos_and_metadata(tmp_path):
    data = make_dataset()
    save_dataset(data, tmp_path / "d.hdf5")
    back = load_dataset(tmp_path / "d.hdf5")
    assert_same(data, back)
    np.testing.assert_array_equal(back.infos["qpos"], data.infos["qpos"])
    assert back.metadata == data.metadata
    assert back.source == str(tmp_path / "d.hdf5")


def test_d4rl_reader_accepts_column_vectors(tmp_path):
    arrays = raw_arrays()
    arrays.update(rewards=np.arange(5, dtype=np.float32)[:, None], terminals=np.eye(5, dtype=bool)[:, 4:5],
                  timeouts=np.zeros((5, 1), bool))
    data = load_dataset(write_h5(tmp_path / "col.hdf5", **arrays))
    assert data.rewards.shape == (5,) and data.terminals.tolist() == [False] * 4 + [True]
    assert data.next_observations is None


def test_minari_round_trip_readable_by_minari_itself(tmp_path, monkeypatch):
    data = make_dataset()
    folder = save_dataset(data, "toolkit/pendulum-test-v0", format="minari", minari_root=tmp_path)
    assert folder == tmp_path / "toolkit" / "pendulum-test-v0"
    back = load_dataset("toolkit/pendulum-test-v0", minari_root=tmp_path)
    assert_same(data, back)
    np.testing.assert_allclose(back.infos["qpos"], data.infos["qpos"])
    assert back.metadata["env_id"] == "Pendulum-v1" and back.metadata["quality"] == "medium"
    assert len(load_dataset(folder)) == 9  # the folder's path works as well as the id

    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    theirs = minari.load_dataset("toolkit/pendulum-test-v0")
    assert theirs.total_steps == 9 and theirs.total_episodes == 3
    episodes = list(theirs.iterate_episodes())
    assert [len(e.rewards) for e in episodes] == [3, 4, 2]
    assert episodes[0].terminations[-1] and episodes[1].truncations[-1]
    assert not (episodes[2].terminations.any() or episodes[2].truncations.any())
    assert episodes[1].observations.shape == (5, 3)  # T + 1 observations


def test_saving_never_overwrites(tmp_path):
    data = make_dataset()
    save_dataset(data, tmp_path / "d.hdf5")
    before = (tmp_path / "d.hdf5").read_bytes()
    with pytest.raises(ToolkitError, match="already exists"):
        save_dataset(data, tmp_path / "d.hdf5")
    assert (tmp_path / "d.hdf5").read_bytes() == before
    save_dataset(data, "toolkit/x-v0", format="minari", minari_root=tmp_path)
    with pytest.raises(ToolkitError, match="already exists"):
        save_dataset(data, "toolkit/x-v0", format="minari", minari_root=tmp_path)
    with pytest.raises(ToolkitError, match="not a Minari dataset id"):
        save_dataset(data, "no version", format="minari", minari_root=tmp_path)


# --- episodes, returns-to-go, scores --------------------------------------------------------


def test_episodes_split_on_terminals_timeouts_and_unfinished_tail():
    data = make_dataset()
    starts, ends = data.episode_bounds()
    assert starts.tolist() == [0, 3, 7] and ends.tolist() == [3, 7, 9]
    assert data.episode_returns().tolist() == [6.0, 4 + 5 + 6 + 7, 8 + 9]
    assert data.timesteps().tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]

    from toolkit.data.summary import summarize

    summary = summarize(data)
    assert (summary.terminated, summary.timed_out, summary.unfinished) == (1, 1, 1)


def test_returns_to_go_by_hand():
    data = make_dataset()
    assert data.returns_to_go().tolist() == [6, 5, 3, 22, 18, 13, 7, 17, 9]
    # gamma = 0.5 over the first episode (rewards 1, 2, 3): 3; 2 + 1.5; 1 + 0.5 * 3.5
    np.testing.assert_allclose(data.returns_to_go(0.5)[:3], [2.75, 3.5, 3.0])


def test_normalized_score_by_hand():
    assert normalized_score("Hopper-v4", 3234.3) == pytest.approx(100.0)
    assert normalized_score("Hopper-v5", -20.272305) == pytest.approx(0.0)
    assert normalized_score("hopper-medium-v2", 1607.0139) == pytest.approx(50.0, abs=1e-4)
    np.testing.assert_allclose(normalized_score("HalfCheetah-v4", np.array([-280.178953, 12135.0])), [0, 100])
    assert normalized_score("walker2d-expert-v2", 4592.3) == pytest.approx(100.0)
    assert normalized_score("Pendulum-v1", 1.0) is None
    assert set(REFERENCE_SCORES) == {"hopper", "halfcheetah", "walker2d"}


# --- bad input ------------------------------------------------------------------------------


def test_missing_file(cli, tmp_path):
    assert_clean_error(cli("dataset", "info", tmp_path / "nope.hdf5"), "No dataset file at", "nope.hdf5")


def test_not_hdf5(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset\n")
    assert_clean_error(cli("dataset", "info", tmp_path / "notes.txt"), "notes.txt", "is not an HDF5 file")


def test_unknown_minari_id(cli, tmp_path):
    result = cli("dataset", "info", "toolkit/absent-v0", "--minari-root", tmp_path)
    assert_clean_error(result, "No dataset file or local Minari dataset named toolkit/absent-v0")


def test_missing_required_key(cli, tmp_path):
    arrays = raw_arrays()
    del arrays["timeouts"]
    assert_clean_error(cli("dataset", "info", write_h5(tmp_path / "k.hdf5", **arrays)), "k.hdf5", "lacks the required key 'timeouts'")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("actions", np.zeros((4, 1), np.float32), "has 4 rows of 'actions' but 5 rows of 'observations'"),
        ("rewards", np.zeros((5, 2), np.float32), "has 'rewards' of shape (5, 2)"),
        ("next_observations", np.zeros((5, 4), np.float32), "'next_observations' of shape (5, 4)"),
    ],
)
def test_misshaped_keys(cli, tmp_path, key, value, fragment):
    arrays = {**raw_arrays(), key: value}
    assert_clean_error(cli("dataset", "info", write_h5(tmp_path / "s.hdf5", **arrays)), "s.hdf5", fragment)


def test_empty_dataset(cli, tmp_path):
    assert_clean_error(cli("dataset", "info", write_h5(tmp_path / "e.hdf5", **raw_arrays(rows=0))), "e.hdf5", "0 transitions")


def test_dataset_that_does_not_fit_the_env(tmp_path):
    from toolkit.envs import make_env

    path = write_h5(tmp_path / "hop.hdf5", **raw_arrays(obs=11, act=3))
    with pytest.raises(ToolkitError) as info:
        check_dataset_fits(load_dataset(path), make_env("Pendulum-v1"))
    message = str(info.value)
    assert "hop.hdf5" in message and "size 11" in message and "size 3" in message and "Pendulum-v1" in message
    with pytest.raises(ToolkitError, match="actions of size 2 but Pendulum-v1 has actions of size 1"):
        check_dataset_fits(load_dataset(write_h5(tmp_path / "a.hdf5", **raw_arrays(act=2))), "Pendulum-v1")
    check_dataset_fits(load_dataset(write_h5(tmp_path / "ok.hdf5", **raw_arrays())), "Pendulum-v1")  # fits: no error


# --- collection through the CLI -------------------------------------------------------------


def test_collect_random_then_info(cli, tmp_path):
    out = tmp_path / "random.hdf5"
    result = cli("dataset", "collect", "--quality", "random", "--env", "Pendulum-v1", "--steps", 450, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    data = load_dataset(out)
    # Pendulum's time limit is 200 steps: two timed-out episodes and a 50-step tail, never terminal.
    assert len(data) == 450 and data.timeouts.sum() == 2 and not data.terminals.any()
    assert data.episode_lengths().tolist() == [200, 200, 50]
    np.testing.assert_array_equal(data.next_observations[:199], data.observations[1:200])
    assert np.all(np.abs(data.actions) <= 2.0) and data.actions.std() > 0.5  # uniform on [-2, 2]
    assert data.metadata["quality"] == "random" and data.metadata["env_id"] == "Pendulum-v1"

    info = cli("dataset", "info", out)
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.split())
    assert "450" in text and "3 (0 terminated, 2 timed out, 1 unfinished)" in text and "(3,)" in text
    assert f"{data.episode_returns().mean():.2f}" in text
    assert "normalised score omitted" in text

    again = cli("dataset", "collect", "--quality", "random", "--env", "Pendulum-v1", "--steps", 10, "--out", out)
    assert_clean_error(again, "already exists")
    assert len(load_dataset(out)) == 450  # the file is untouched


def test_info_shows_normalised_scores_with_env(cli, tmp_path):
    data = make_dataset({"quality": "medium"})  # no env in the metadata
    save_dataset(data, tmp_path / "d.hdf5")
    plain = " ".join(cli("dataset", "info", tmp_path / "d.hdf5").output.split())
    assert "normalised score omitted" in plain
    text = " ".join(cli("dataset", "info", tmp_path / "d.hdf5", "--env", "Hopper-v4").output.split())
    scores = normalized_score("Hopper-v4", data.episode_returns())
    assert "D4RL normalised score (Hopper-v4)" in text and f"{scores.mean():.2f}" in text and f"{scores.max():.2f}" in text


def test_collect_minari_format(cli, tmp_path):
    result = cli("dataset", "collect", "--quality", "random", "--env", "Pendulum-v1", "--steps", 30,
                 "--out", "toolkit/pendulum-random-v0", "--format", "minari", "--minari-root", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(load_dataset("toolkit/pendulum-random-v0", minari_root=tmp_path)) == 30


def test_collect_refuses_bad_options(cli, tmp_path):
    out = tmp_path / "x.hdf5"
    assert_clean_error(cli("dataset", "collect", "--quality", "medium", "--steps", 5, "--out", out), "--from RUN_DIR")
    assert_clean_error(cli("dataset", "collect", "--quality", "random", "--steps", 5, "--out", out), "needs --env")
    assert_clean_error(cli("dataset", "collect", "--quality", "great", "--env", "Pendulum-v1", "--steps", 5, "--out", out),
                       "Unknown dataset quality 'great'")
    assert_clean_error(cli("dataset", "collect", "--quality", "random", "--env", "Pendulum-v1", "--steps", 5, "--out", out,
                           "--format", "csv"), "Unknown --format 'csv'")
    assert not out.exists()


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    """A tiny SAC run on Pendulum-v1: 300 env steps, so one 200-step episode and a 100-step tail."""
    from toolkit.training import start_training

    run_dir = tmp_path_factory.mktemp("runs") / "sac"
    start_training(
        "sac", "Pendulum-v1", steps=300, run_dir=run_dir, progress=False, checkpoint_every=0,
        set_items=["learning_starts=100", "batch_size=16", "hidden_sizes=16"],
    )
    return run_dir


def test_collect_replay_from_sac_run(cli, sac_run, tmp_path):
    out = tmp_path / "replay.hdf5"
    result = cli("dataset", "collect", "--from", sac_run, "--quality", "replay", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    data = load_dataset(out)
    assert len(data) == 300
    assert data.episode_lengths().tolist() == [200, 100]
    assert data.timeouts.tolist().count(True) == 1 and data.timeouts[199] and not data.terminals.any()
    assert data.metadata["source_run"] == str(sac_run) and data.metadata["quality"] == "replay"
    np.testing.assert_array_equal(data.next_observations[:199], data.observations[1:200])


def test_collect_medium_with_noise_from_sac_run(cli, sac_run, tmp_path):
    import torch

    from toolkit.session import open_trained_run

    noisy, clean = tmp_path / "noisy.hdf5", tmp_path / "clean.hdf5"
    for out, noise in ((noisy, "0.1"), (clean, "0")):
        result = cli("dataset", "collect", "--from", sac_run, "--steps", 60, "--noise", noise, "--out", out, "--no-progress")
        assert result.exit_code == 0, result.output
    noisy_data, clean_data = load_dataset(noisy), load_dataset(clean)
    assert len(noisy_data) == 60 and noisy_data.metadata["quality"] == "medium" and noisy_data.metadata["noise"] == "0.1"
    # Without noise the recorded actions are the trained policy's deterministic actions.
    agent = open_trained_run(sac_run)[0].agent
    with torch.no_grad():
        policy = agent.act(torch.as_tensor(clean_data.observations), deterministic=True).numpy()
    np.testing.assert_allclose(clean_data.actions, policy, atol=1e-5)
    # Same seed, same first state; noise moves the first action but keeps it in bounds.
    np.testing.assert_array_equal(noisy_data.observations[0], clean_data.observations[0])
    assert noisy_data.actions[0] != pytest.approx(clean_data.actions[0], abs=1e-6)
    assert np.all(np.abs(noisy_data.actions) <= 2.0)


def _strip_buffer(run_dir: Path, dest: Path) -> Path:
    """A copy of ``run_dir`` whose checkpoint has no replay buffer, as an on-policy run's."""
    import shutil

    from toolkit.runs import CHECKPOINT, load_checkpoint, save_checkpoint

    shutil.copytree(run_dir, dest)
    state = load_checkpoint(dest / CHECKPOINT)
    state.pop("buffer")
    save_checkpoint(dest / CHECKPOINT, {k: v for k, v in state.items() if k not in ("format", "version")})
    return dest


def test_replay_needs_a_buffer(cli, sac_run, tmp_path):
    no_buffer = _strip_buffer(sac_run, tmp_path / "run")
    result = cli("dataset", "collect", "--from", no_buffer, "--quality", "replay", "--out", tmp_path / "r.hdf5")
    assert_clean_error(result, "has no replay buffer")
    assert not (tmp_path / "r.hdf5").exists()


def test_replay_of_a_full_ring_starts_at_the_oldest_row():
    from toolkit.data.replay import _episode_flags, _insertion_order

    # Capacity 5 after 7 writes: slots hold steps [5, 6, 2, 3, 4]; the oldest is at pos 2.
    order = _insertion_order(size=5, pos=2, capacity=5)
    assert order.tolist() == [2, 3, 4, 0, 1]
    # In insertion order: episode steps 2, 3 | 0, 1, 2 (still running); the first ended by a time limit.
    terminals, timeouts = _episode_flags(np.array([2, 3, 0, 1, 2]), np.zeros(5, bool), last_ended=False)
    assert timeouts.tolist() == [False, True, False, False, False] and not terminals.any()
    terminals, timeouts = _episode_flags(np.array([0, 1, 0, 1, 2]), np.array([0, 1, 0, 0, 0], bool), last_ended=True)
    assert terminals.tolist() == [False, True, False, False, False]
    assert timeouts.tolist() == [False, False, False, False, True]


# --- values that break learning, and env ids that differ --------------------------------------


def pendulum_dataset(env_id: str = "Pendulum-v1", rows: int = 120) -> OfflineDataset:
    """Finite random transitions in Pendulum's shapes, recorded on ``env_id``."""
    rng = np.random.default_rng(3)
    return OfflineDataset(
        observations=rng.normal(size=(rows, 3)).astype(np.float32),
        actions=rng.uniform(-2, 2, size=(rows, 1)).astype(np.float32),
        rewards=rng.normal(size=rows).astype(np.float32),
        terminals=np.zeros(rows, bool),
        timeouts=np.arange(rows) % 40 == 39,
        metadata={"env_id": env_id},
    )


def test_find_nonfinite_names_each_key_first_row_and_count():
    from toolkit.data.validate import NonFinite, find_nonfinite

    data = pendulum_dataset()
    assert find_nonfinite(data) == []
    data.observations[17, 1] = np.nan
    data.observations[40] = np.inf  # three values in one row
    data.rewards[100] = -np.inf
    assert find_nonfinite(data) == [NonFinite("observations", 17, 4), NonFinite("rewards", 100, 1)]


def test_info_reports_nan_and_inf(cli, tmp_path):
    data = pendulum_dataset()
    data.observations[17, 1] = np.nan
    data.observations[40] = np.inf
    data.rewards[100] = np.nan
    save_dataset(data, tmp_path / "nan.hdf5")
    result = cli("dataset", "info", tmp_path / "nan.hdf5")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "'observations': 4 NaN or infinite values, the first at row 17" in text
    assert "'rewards': 1 NaN or infinite value, the first at row 100" in text
    assert "Training refuses this dataset" in text
    clean = cli("dataset", "info", save_dataset(pendulum_dataset(), tmp_path / "clean.hdf5"))
    assert clean.exit_code == 0 and "NaN" not in clean.output


def test_train_refuses_a_dataset_with_nan_in_one_sentence_before_writing(cli, tmp_path):
    data = pendulum_dataset()
    data.rewards[33] = np.nan
    path = save_dataset(data, tmp_path / "nan.hdf5")
    run_dir = tmp_path / "run"
    result = cli("train", "bc", "--env", "Pendulum-v1", "--dataset", path, "--steps", 5, "--run-dir", run_dir, "--no-progress")
    assert_clean_error(result, "nan.hdf5", "1 NaN or infinite value in 'rewards', the first at row 33")
    assert " ".join(result.output.split()).count(". ") == 0, result.output  # one sentence
    assert not run_dir.exists()


def test_sweep_refuses_a_dataset_with_nan_before_any_trial(cli, tmp_path):
    data = pendulum_dataset()
    data.observations[7, 0] = np.inf
    path = save_dataset(data, tmp_path / "inf.hdf5")
    result = cli("sweep", "bc", "--env", "Pendulum-v1", "--dataset", path, "--grid", "lr=1e-3,3e-4",
                 "--sweep-dir", tmp_path / "sweep")
    assert_clean_error(result, "inf.hdf5", "1 NaN or infinite value in 'observations', the first at row 7")
    assert not (tmp_path / "sweep").exists()


def test_a_dataset_recorded_on_another_env_id_warns_and_trains(tmp_path, capsys):
    from toolkit.training import start_training

    path = save_dataset(pendulum_dataset("toolkit/OtherPendulum-v0"), tmp_path / "other.hdf5")
    run_dir, result = start_training("bc", "Pendulum-v1", 4, dataset=str(path), run_dir=tmp_path / "run",
                                     progress=False, eval_every=4, eval_episodes=1, device="cpu")
    assert result.step == 4 and run_dir.exists()
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning:") == 1, err
    assert "toolkit/OtherPendulum-v0" in err and "Pendulum-v1" in err and "training continues" in err


def test_a_dataset_recorded_on_the_same_env_id_trains_without_a_warning(tmp_path, capsys):
    from toolkit.training import start_training

    path = save_dataset(pendulum_dataset(), tmp_path / "same.hdf5")
    start_training("bc", "Pendulum-v1", 2, dataset=str(path), run_dir=tmp_path / "run", progress=False,
                   eval_every=2, eval_episodes=1, device="cpu")
    assert "warning" not in capsys.readouterr().err
