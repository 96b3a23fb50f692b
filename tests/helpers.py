"""Helpers the test modules share: starting the real commands, waiting for their files,
reading a run's checkpoints and metrics, running the docs' command blocks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from framework.models.conformer import ConformerCTC
from tests.conftest import ROOT, TINY, run_cli

DOCS = ROOT / "docs"

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}


def tiny_args(data_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [*TINY, f"dataset.root={data_dir}/tones-tiny", f"hydra.run.dir={run_dir}", *overrides]


def start_training(data_dir: Path, run_dir: Path, *overrides: str, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "framework.train", *tiny_args(data_dir, run_dir, *overrides)]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared (process ended with {proc.poll()})"


def index_of(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "checkpoints" / "index.json").read_text())


def newest_state(run_dir: Path) -> dict:
    last = max(index_of(run_dir), key=lambda e: e["step"])
    return torch.load(run_dir / "checkpoints" / last["file"], weights_only=True)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    return lines[-1]


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


def torchrun(args, cwd):
    return run_cli("torch.distributed.run", ["--standalone", "--nproc_per_node=2", *args], cwd=cwd, timeout=900)


def steps_per_epoch(log_text):
    return [int(n) for n in re.findall(r"epoch \d+/\d+: (\d+) steps", log_text)]


def tiny_conformer(**kw) -> ConformerCTC:
    args = dict(num_bins=40, num_classes=11, d_model=32, num_layers=2, num_heads=2, conv_kernel=7,
                subsampling_channels=8, dropout=0.0)
    args.update(kw)
    return ConformerCTC(**args)
