"""Every command in the tutorials runs, as written (doc commands that are not tested rot)."""

from __future__ import annotations

import importlib.util
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
    for name in ("launch.md", "sweep.md", "extend.md"):
        assert bash_blocks(DOCS / name), name


def test_launch_tutorial(tmp_path, data_dir):
    out = run_doc("launch.md", tmp_path, data_dir)
    assert "did you mean trainer.max_epochs?" in out and "trainer.max_epochs='abc': expected an integer" in out
    assert "batches per epoch" in out and "trainable parameters" in out
    assert '"test_cer"' in out  # evaluate's JSON line
    assert "resumed from" in (tmp_path / "runs" / "first" / "train.log").read_text()


def test_extend_tutorial(tmp_path, data_dir):
    run_doc("extend.md", tmp_path, data_dir)
    assert (tmp_path / "my_asr" / "brain.py").is_file()
    logs = sorted((tmp_path / "runs").rglob("train.log"))
    assert any("model TinyModel" in log.read_text() for log in logs)


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="the optuna extra is not installed (pip install -e '.[optuna]'); CI installs it")
def test_sweep_tutorial(tmp_path, data_dir):
    run_doc("sweep.md", tmp_path, data_dir)
    summary = (tmp_path / "multirun" / "grid" / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 4 and "4 of 4 jobs finished" in summary
    assert (tmp_path / "multirun" / "grid" / "summary.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "multirun" / "search").iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert (tmp_path / "multirun" / "search" / "optuna.db").is_file()
