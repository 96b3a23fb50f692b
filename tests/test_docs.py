"""Every command in the tutorials runs, as written (doc commands that are not tested rot)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ROOT / "docs"


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)


def run_doc(name: str, cwd: Path, data_dir: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "FRAMEWORK_DATA_DIR": str(data_dir)}
    output = []
    for block in bash_blocks(DOCS / name):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{name}: this block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
        output.append(proc.stdout + proc.stderr)
    return "\n".join(output)


def test_every_tutorial_has_commands():
    for name in ("launch.md", "sweep.md", "extend.md", "batching.md", "asr.md"):
        assert bash_blocks(DOCS / name), name


def test_launch_tutorial(tmp_path, data_dir):
    out = run_doc("launch.md", tmp_path, data_dir)
    assert "did you mean trainer.max_epochs?" in out and "trainer.max_epochs='abc': expected an integer" in out
    assert "batches per epoch" in out and "trainable parameters" in out
    assert '"test_cer"' in out  # evaluate's JSON line
    assert "resumed from" in (tmp_path / "runs" / "first" / "train.log").read_text()
    assert "test_cer" in json.loads((tmp_path / "runs" / "own" / "metrics.json").read_text())["metrics"]
    h5 = json.loads((tmp_path / "runs" / "h5" / "metrics.json").read_text())
    assert "test_cer" in h5["metrics"]  # the HDF5 test split, with the file's features
    assert "features: the extractor recorded in dataset.train" in (tmp_path / "runs" / "h5" / "train.log").read_text()
    assert "differs from the features test-fbank.h5 holds" in out


def test_extend_tutorial(tmp_path, data_dir):
    out = run_doc("extend.md", tmp_path, data_dir)
    assert (tmp_path / "my_asr" / "brain.py").is_file() and (tmp_path / "my_asr" / "recipe" / "my_asr.yaml").is_file()
    assert "config OK" in out  # validate on the untouched template
    lowest = re.search(r"lowest step loss: ([\d.]+)", out)
    assert lowest and float(lowest.group(1)) > 0  # the on_train_step_end example ran
    logs = sorted((tmp_path / "runs").rglob("train.log"))
    assert any("model TinyModel" in log.read_text() for log in logs)
    assert "model.hiden: unknown key; did you mean model.hidden?" in out


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
    assert len(re.findall(r'\{"test_loss": [\d.]+, "test_cer": [\d.]+, "test_wer": [\d.]+\}', out)) == 3
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
