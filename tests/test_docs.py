"""Every command in the tutorials runs, as written (doc commands that are not tested rot)."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from tests.conftest import ROOT
from tests.helpers import DOCS, bash_blocks, run_doc


def test_every_tutorial_has_commands():
    for name in ("launch.md", "sweep.md", "extend.md", "batching.md", "asr.md", "finetune.md", "tracking.md", "export.md",
                 "data.md"):
        assert bash_blocks(DOCS / name), name


@pytest.mark.slow  # ~2.5 min; resume, evaluate, transcribe and the run dir have fast tests of their own
def test_launch_tutorial(tmp_path, data_dir):
    out = run_doc("launch.md", tmp_path, data_dir)
    assert "did you mean trainer.max_epochs?" in out and "trainer.max_epochs='abc': expected an integer" in out
    assert "batches per epoch" in out and "trainable parameters" in out
    assert "1000 epochs or 20s (whichever ends first)" in out and "scheduler OneCycle over time" in out
    assert '"test_cer"' in out  # evaluate's JSON line
    assert "resumed from" in (tmp_path / "runs" / "first" / "train.log").read_text()
    assert "test_cer" in json.loads((tmp_path / "runs" / "own" / "metrics.json").read_text())["metrics"]
    h5 = json.loads((tmp_path / "runs" / "h5" / "metrics.json").read_text())
    assert "test_cer" in h5["metrics"]  # the HDF5 test split, with the file's features
    assert "features: the extractor recorded in dataset.train" in (tmp_path / "runs" / "h5" / "train.log").read_text()
    assert "differs from the features test-fbank.h5 holds" in out


@pytest.mark.slow  # ~1.5 min; new_recipe and user recipes have fast tests (test_config, test_recipes)
def test_extend_tutorial(tmp_path, data_dir):
    out = run_doc("extend.md", tmp_path, data_dir)
    assert (tmp_path / "my_asr" / "brain.py").is_file() and (tmp_path / "my_asr" / "recipe" / "my_asr.yaml").is_file()
    assert "config OK" in out  # validate on the untouched template
    lowest = re.search(r"lowest step loss: ([\d.]+)", out)
    assert lowest and float(lowest.group(1)) > 0  # the on_train_step_end example ran
    logs = sorted((tmp_path / "runs").rglob("train.log"))
    assert any("model TinyModel" in log.read_text() for log in logs)
    assert "model.hiden: unknown key; did you mean model.hidden?" in out


@pytest.mark.slow  # ~1.5 min; grids, summaries and Optuna have fast tests (test_sweep)
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="the optuna extra is not installed (pip install -e '.[optuna]'); CI installs it")
def test_sweep_tutorial(tmp_path, data_dir):
    run_doc("sweep.md", tmp_path, data_dir)
    summary = (tmp_path / "multirun" / "grid" / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 4 and "4 of 4 jobs finished" in summary
    assert (tmp_path / "multirun" / "grid" / "summary.png").stat().st_size > 1000
    search = tmp_path / "multirun" / "search"
    assert sorted(p.name for p in search.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert (search / "optuna.db").is_file()
    trials = [sorted((search / j / ".hydra" / "overrides.yaml").read_text().splitlines()) for j in "012"]
    searched = [[line for line in t if "optimizer.lr" in line or "max_batch_length" in line or "hidden_size" in line]
                for t in trials]
    assert searched[2] != searched[0] and searched[2] != searched[1]  # the resumed search draws new parameters


@pytest.mark.slow  # fourteen commands on the speech corpus; each piece also has its own fast test
def test_asr_tutorial(tmp_path, data_dir):
    pytest.importorskip("flashlight.lib.text", reason="beam search needs flashlight-text (pip install '.[lm]')")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # the commands run from the repository's root
    out = run_doc("asr.md", tmp_path, data_dir)
    assert len(re.findall(r'\{"test_loss": [\d.]+, "test_cer": [\d.]+, "test_wer": [\d.]+, "test_examples": \d+\}', out)) == 4
    assert "recipes/asr_ctc/speech/test/test-0000.flac\t" in out  # transcribe's line
    assert (tmp_path / "runs" / "aug" / "checkpoints" / "averaged.pt").is_file()
    config = (tmp_path / "runs" / "aug" / "config.yaml").read_text()
    assert "framework.augment.SpeedPerturbation" in config and "p: 0.3" in config
    best = tmp_path / "runs" / "best"
    assert "test_cer" in json.loads((best / "metrics.json").read_text())["metrics"]
    config = (best / "config.yaml").read_text()
    assert "GreedyDecoder" in config and "dropout: 0.2" in config
    assert "intermediate_layer: 2" in config and "normalize: global" in config
    assert (best / "feature_stats.pt").is_file()  # fitted on the training set, used by the test
    interctc = tmp_path / "runs" / "interctc"
    assert "intermediate_layer: 2" in (interctc / "config.yaml").read_text()
    assert "test_cer" in json.loads((interctc / "metrics.json").read_text())["metrics"]
    assert (tmp_path / "runs" / "bpe" / "tokenizer.model").read_bytes() == (tmp_path / "speech-bpe.model").read_bytes()
    assert "test_cer" in json.loads((tmp_path / "runs" / "transducer" / "metrics.json").read_text())["metrics"]
    assert (tmp_path / "runs" / "transducer" / "export" / "torchscript" / "joiner.ts").is_file()
    assert "stopped on time: trainer.max_time=10s" in (tmp_path / "runs" / "sentences" / "train.log").read_text()


@pytest.mark.slow  # a HuBERT-base step on the CPU, ~1 min
def test_finetune_tutorial(tmp_path, data_dir):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    out = run_doc("finetune.md", tmp_path, data_dir)
    assert '"source"' in out  # the init report's head
    tuned = json.loads((tmp_path / "runs" / "tuned" / "init_report.json").read_text())
    assert tuned["loaded"] and tuned["source"].startswith(str(tmp_path / "runs" / "pre"))
    log = (tmp_path / "runs" / "frozen" / "train.log").read_text()
    assert "frozen: convs, rnns" in log and "unfrozen:" in log
    assert "optimizer group convs.*: " in (tmp_path / "runs" / "groups" / "train.log").read_text()
    assert "test_cer" in json.loads((tmp_path / "runs" / "hubert" / "metrics.json").read_text())["metrics"]


@pytest.mark.slow  # eight short runs; each piece also has its own fast test (tests/test_tracking.py)
def test_tracking_tutorial(tmp_path, data_dir):
    out = run_doc("tracking.md", tmp_path, data_dir)
    runs = tmp_path / "runs"
    assert "train/loss" in out and "epoch/valid_cer" in out and (runs / "csv" / "csv" / "train.csv").is_file()
    assert re.search(r"mlflow FINISHED final/valid_cer [\d.]+ optimizer.lr 0.003", out)  # the MLflow run, read back
    assert "'config.yaml', 'metrics.json', 'test_transcripts.tsv'" in out
    assert '"state": "finished"' in out  # the offline W&B run, read back
    assert {"tensorboard", "csv", "wandb", "trackers.json"} <= {p.name for p in (runs / "many").iterdir()}
    assert re.search(r"^0 0.001 [\d.]+$", out, re.M) and re.search(r"^1 0.003 [\d.]+$", out, re.M)
    assert re.search(r"^summary None None$", out, re.M)  # the sweep's summary run
    history = json.loads((runs / "early" / "metrics.json").read_text())["history"]
    assert len(history) == 3 and "early stopping: valid_loss has not improved" in out
    assert "Self CPU" in out and (runs / "profile" / "profile" / "trace-rank0.pt.trace.json").is_file()


@pytest.mark.slow  # a short training run, three exports with their parity checks, transcriptions: ~3 min
def test_export_tutorial(tmp_path, data_dir):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # the commands run from the repository's root
    out = run_doc("export.md", tmp_path, data_dir)
    assert len(re.findall(r"^exported runs/speech\S* \(model\.(onnx|ts), [\d.]+ MB.*CER [\d.]+ \(PyTorch [\d.]+\)",
                          out, re.M)) == 3
    onnx = json.loads((tmp_path / "runs" / "speech" / "export" / "onnx" / "artifact.json").read_text())
    assert onnx["parity"]["max_abs_diff"] <= 1e-4 and "feature_stats.pt" in onnx.values()
    assert "recipes/asr_ctc/speech/test/test-0002.flac\t" in out  # inference.py without the framework
    subtitles = sorted(p.name for p in (tmp_path / "runs" / "subtitles").iterdir())
    assert len(subtitles) == 40 and subtitles[0] == "test-0000.srt"
    assert "WEBVTT" in out and '"words": [{"word": ' in out
