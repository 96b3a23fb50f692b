"""Training from every dataset kind through the command line."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli, run_result


@pytest.fixture()
def tones(train_cli, data_dir, tmp_path):
    """The tiny tones corpus (prepared by a first run) and its manifests in JSON Lines and CSV."""
    root = data_dir / "tones-tiny"
    if not (root / "corpus.json").exists():
        train_cli("trainer.max_epochs=1", run_dir=tmp_path / "prep")
    for split in ("train", "valid"):
        rows = json.loads((root / f"{split}.json").read_text())
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for uid, e in rows.items():
                f.write(json.dumps({"id": uid, "audio_filepath": e["wav"], "duration": e["duration"], "text": e["words"]}) + "\n")
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", "wav", "duration", "wrd"])
            for uid, e in rows.items():
                w.writerow([uid, e["wav"], e["duration"], e["words"]])
    return root


@pytest.mark.parametrize("fmt", ["json", pytest.param("jsonl", marks=pytest.mark.slow),
                                 pytest.param("csv", marks=pytest.mark.slow)])  # test_data reads all three
def test_train_from_manifest_formats(train_cli, tones, tmp_path, fmt):
    src = tones if fmt == "json" else tmp_path
    _, run_dir = train_cli("dataset=manifest", f"dataset.train.path={src}/train.{fmt}",
                           f"dataset.valid.path={src}/valid.{fmt}", f"dataset.data_root={tones}",
                           "trainer.max_epochs=2", "trainer.num_workers=2")
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"] and history[1]["valid_cer"] < 1


@pytest.mark.parametrize("features", [pytest.param("none", marks=pytest.mark.slow), "fbank"])  # one fast case
def test_train_from_hdf5_with_workers(train_cli, tones, tmp_path, features):
    for split in ("train", "valid"):
        run_cli("framework.prepare", ["hdf5", str(tones / f"{split}.json"), str(tmp_path / f"{split}.h5"),
                                      "--data-root", str(tones), "--features", features], cwd=tmp_path)
    _, run_dir = train_cli("dataset=hdf5", f"dataset.train.path={tmp_path}/train.h5",
                           f"dataset.valid.path={tmp_path}/valid.h5", "trainer.max_epochs=2", "trainer.num_workers=2")
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"] and history[1]["valid_cer"] < 1
