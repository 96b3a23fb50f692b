"""The classification recipes learn: metrics beat a stated baseline after a short CPU run."""

from __future__ import annotations

import h5py
import pytest

from tests.conftest import run_cli, run_result


def final_metrics(run_dir, stage="test"):
    return {k.removeprefix(f"{stage}_"): v for k, v in run_result(run_dir)["metrics"].items() if k.startswith(stage)}


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_image_classification_beats_chance(tmp_path, data_dir):
    """10 balanced classes: chance accuracy is 0.10."""
    run_dir = tmp_path / "run"
    run_cli("framework.train", ["recipe=image_classification", f"dataset.root={data_dir}/digits",
                                "dataset.prepare.splits={train:1500,valid:200,test:200}", "trainer.max_epochs=3", "batch_size=32",
                                "model.widen_factor=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    metrics = final_metrics(run_dir)
    assert metrics["accuracy"] > 0.6, metrics


def test_sound_event_detection_beats_the_majority_baseline(tmp_path, data_dir):
    """Baseline: always 'no event', F1 = 0 and accuracy = the share of quiet seconds."""
    from framework.data.recording import RecordingWindows

    run_dir = tmp_path / "run"
    path = data_dir / "events" / "rec.h5"
    run_cli("framework.train", ["recipe=sound_event", f"dataset.path={path}", "dataset.prepare.minutes=4",
                                "trainer.max_epochs=4", "model.widen_factor=1", "features.extractor.n_mels=32",
                                f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    metrics = final_metrics(run_dir)
    test_set = RecordingWindows(path, start=0.85, stop=1.0)
    majority = 1 - test_set.labels.mean()
    assert metrics["f1"] > 0.5 and metrics["accuracy"] > majority, (metrics, majority)


def test_recording_windows_read_lazily(tmp_path):
    from framework.data.recording import RecordingWindows
    from framework.data.synthetic import prepare_event_recording

    path = prepare_event_recording(tmp_path / "r.h5", minutes=0.5)
    ds = RecordingWindows(path, window=1.0, hop=0.5)
    assert len(ds) == 59 and ds._audio is None
    ex = ds[3]
    assert ex["inputs"].shape == (16000,) and ex["label"] in (0, 1)
    assert isinstance(ds._audio, h5py.Dataset) and ds._audio.shape == (30 * 16000,)  # a file handle, not samples
    with pytest.raises(ValueError, match="not a framework recording"):
        RecordingWindows(not_a_recording(tmp_path))


def not_a_recording(tmp_path):
    """An HDF5 file with an audio dataset but without the recording format attribute."""
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["audio"] = [0.0]
    return tmp_path / "x.h5"


@pytest.mark.slow
def test_asr_on_the_shipped_speech_corpus(tmp_path):
    """espeak-ng speech, 400 training utterances: CER far below the 1.0 of an empty transcript."""
    run_dir = tmp_path / "run"
    run_cli("framework.train", ["dataset=speech", "trainer.max_epochs=30", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert final_metrics(run_dir)["cer"] < 0.4
