"""The ASR recipe: learning, features in workers, evaluation and transcription commands."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli


def test_recipe_learns_far_below_the_trivial_baseline(tmp_path, data_dir):
    """A short CPU run on 200 utterances: test CER far below the 1.0 of an empty transcript."""
    run_dir = tmp_path / "run"
    run_cli("framework.train", [f"dataset.root={data_dir}/tones-200", "dataset.prepare.splits={train:200,valid:30,test:30}",
                                "trainer.max_epochs=8", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    cer = float(re.search(r"test: .*test_cer=([\d.e-]+)", (run_dir / "train.log").read_text()).group(1))
    assert cer < 0.35, cer


def test_features_in_workers_with_global_normalisation_and_specaugment(train_cli):
    _, run_dir = train_cli("features=mel", "features.extractor.n_mels=20", "features.where=worker",
                           "features.normalize=global", "trainer.num_workers=2", "trainer.max_epochs=1")
    assert (run_dir / "feature_stats.pt").is_file()
    assert "test: test_loss=" in (run_dir / "train.log").read_text()


def test_evaluate_and_transcribe_commands(train_cli, tmp_path, data_dir):
    _, run_dir = train_cli("trainer.max_epochs=1")
    metrics = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert set(metrics) == {"test_loss", "test_cer", "test_wer"}
    log = (run_dir / "train.log").read_text()
    assert f"test_cer={metrics['test_cer']:.4g}" in log  # same checkpoint, same numbers as after training
    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:2]
    out = run_cli("framework.transcribe", [str(run_dir), *map(str, wavs)], cwd=tmp_path).stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == [str(w) for w in wavs]

    bad = run_cli("framework.evaluate", [str(tmp_path / "nowhere")], cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "is not a run directory" in bad.stderr


def test_adamw8bit_without_bitsandbytes_says_what_to_do(train_cli):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    proc, _ = train_cli("optimizer=adamw8bit", check=False)
    assert proc.returncode != 0 and "optimizer=adamw8bit needs bitsandbytes" in proc.stderr
