"""Every command of the README's command block runs as written, at debug scale: each
``framework.train`` line gets ``trainer.max_epochs=2 trainer.limit_batches=2`` appended (enough
epochs for the checkpoints it keeps to average, and a search two trials), nothing else changes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DEBUG_SCALE = {"framework.train": "trainer.max_epochs=2 trainer.limit_batches=2",
               "hparams_search=": "hydra.sweeper.n_trials=2"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The three everyday commands"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split("  #")[0].strip()
        if command:
            commands.append(re.sub(r"\s+", " ", command))
    return commands


def depends_on_the_first_run(command: str) -> bool:
    """The README's first run and what reads it (evaluation, transcription, resume, export, the
    LM its beam search uses); the other commands start runs of their own."""
    return "runs/first" in command or "lm.arpa" in command


# The other commands (~2 min) are slow, like the other guides' blocks (test_docs): each has a fast test of its own
# (validate and a new recipe's folder: test_config; grids: test_sweep; averaging: test_process_faults; subwords and
# the transducer: test_subword, test_transducer), Optuna's two trials excepted (make test-slow runs them).
@pytest.mark.parametrize("first", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["the first run and what reads it", "the other commands"])
def test_readme_command_block_runs_as_written(tmp_path, first):
    """In two independent parts, each in order in a folder of its own (each prepares the tone
    corpus on its first training run), so two test workers run them side by side."""
    commands = readme_commands()
    assert len(commands) >= 15 and all(c.startswith("python -m framework.") for c in commands)
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "TMPDIR": str(tmp_path)}
    env.pop("FRAMEWORK_DATA_DIR", None)  # the README's paths: data/ under the folder the commands run in
    for command in (c for c in commands if depends_on_the_first_run(c) == first):
        scaled = command + "".join(f" {extra}" for key, extra in DEBUG_SCALE.items() if key in command)
        kept = re.search(r"keep_best=(\d+)", command)
        if kept:  # as many epochs as checkpoints to average
            scaled = scaled.replace("trainer.max_epochs=2 trainer.limit_batches=2",
                                    f"trainer.max_epochs={kept.group(1)} trainer.limit_batches=1")
        proc = subprocess.run(["bash", "-c", scaled], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"README command failed: {scaled}\n{proc.stdout}\n{proc.stderr}"
        if command.startswith("python -m framework.transcribe") and "--format json" in command:
            words = json.loads(proc.stdout)["words"]
            assert words and all(0 <= w["start"] <= w["end"] for w in words)
        elif command.startswith("python -m framework.transcribe"):
            assert proc.stdout.startswith("data/tones/test/test-00000.wav\t")
        if command.startswith("python -m framework.evaluate"):
            assert "test_cer" in json.loads(proc.stdout.strip().splitlines()[-1])
    if first:
        assert "resumed from" in (tmp_path / "runs" / "first" / "train.log").read_text()
        assert (tmp_path / "lm.arpa").is_file()
        assert (tmp_path / "runs" / "first" / "export" / "onnx-int8" / "artifact.json").is_file()
        return
    assert (tmp_path / "runs" / "avg" / "checkpoints" / "averaged.pt").is_file()
    assert (tmp_path / "my_asr" / "brain.py").is_file()
    assert (tmp_path / "runs" / "rnnt" / "tokenizer.model").is_file() and (tmp_path / "runs" / "rnnt" / "metrics.json").is_file()
    grid = sorted((tmp_path / "multirun").rglob("summary.md"))
    assert grid and any("4 of 4 jobs finished" in p.read_text() for p in grid)
