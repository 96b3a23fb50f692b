"""Helpers the test modules share: starting the real commands, waiting for their files,
reading a run's checkpoints and metrics, running the docs' command blocks."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from framework.models.conformer import ConformerCTC
from tests.conftest import ROOT, TINY, run_cli

DOCS = ROOT / "docs"

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}


def as_from_a_shell() -> None:
    """``preexec_fn`` of a command a test stops with a signal: SIGINT and SIGTERM at their
    defaults and not blocked, as for a command typed in a shell. In full parallel runs the
    test process was seen with SIGINT ignored at the C level for stretches (by a library's
    code, not the framework's: Python's own handler never changed), and an ignored signal is
    inherited across exec; the command then keeps ignoring it, as under nohup, by design."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def tiny_args(data_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [*TINY, f"dataset.root={data_dir}/tones-tiny", f"hydra.run.dir={run_dir}", *overrides]


def start_training(data_dir: Path, run_dir: Path, *overrides: str, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "framework.train", *tiny_args(data_dir, run_dir, *overrides)]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_shell)


def tiny_manifests(data_dir: Path, tmp_path: Path) -> Path:
    """The tiny corpus' folder, with the manifests its first run writes."""
    root = data_dir / "tones-tiny"
    if not (root / "train.json").exists():
        run_cli("framework.train", tiny_args(data_dir, tmp_path / "prep", "trainer.max_epochs=1",
                                             "trainer.limit_batches=1"), cwd=tmp_path)
    return root


def stuck_corpus_args(data_dir: Path, tmp_path: Path, run_dir: Path, every: bool = False) -> list[str]:
    """The tiny config's training arguments on the tiny corpus' manifests, the first training
    utterance (or ``every`` one) a FIFO nobody writes to: reading it waits for ever, as on a
    hung network mount."""
    root = tiny_manifests(data_dir, tmp_path)
    train = json.loads((root / "train.json").read_text())
    stuck = tmp_path / "stuck.wav"
    os.mkfifo(stuck)
    for key in train if every else [next(iter(train))]:
        train[key]["wav"] = str(stuck)
    (tmp_path / "train.json").write_text(json.dumps(train))
    return [*(t for t in TINY if not t.startswith("dataset.")), f"hydra.run.dir={run_dir}", "dataset=manifest",
            f"dataset.train.path={tmp_path}/train.json", f"dataset.valid.path={root}/valid.json",
            f"dataset.data_root={root}"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared (process ended with {proc.poll()})"


def wait_for_children(proc: subprocess.Popen, count: int, timeout: float = 300) -> None:
    """Until ``proc`` has ``count`` child processes (its data workers: its loop has begun an epoch)."""
    deadline = time.time() + timeout
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while proc.poll() is None and time.time() < deadline:
        with contextlib.suppress(OSError):
            if len(children.read_text().split()) >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"{proc.args[:3]} never had {count} child processes (ended with {proc.poll()})")


def index_of(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "checkpoints" / "index.json").read_text())


def newest_state(run_dir: Path) -> dict:
    """The newest checkpoint's state, verified, sharded parts read whole."""
    from framework.trainer.checkpoint import load_checkpoint, materialize

    last = max(index_of(run_dir), key=lambda e: e["step"])
    return materialize(load_checkpoint(run_dir / "checkpoints" / last["file"]))


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


FIGURES = ("train_loss", "valid_loss", "steps", "padding_fraction")


def assert_trained_alike(a_dir: Path, b_dir: Path, figures: tuple[str, ...] = FIGURES) -> dict:
    """Two runs ended alike: the newest checkpoints at the same step with bitwise equal
    weights, and every epoch's ``figures`` equal (when ``figures`` is not empty). Returns
    the second run's newest state."""
    a, b = newest_state(a_dir), newest_state(b_dir)
    assert a["progress"]["step"] == b["progress"]["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    if figures:
        for ha, hb in zip(metrics_of(a_dir)["history"], metrics_of(b_dir)["history"], strict=True):
            for key in figures:
                assert ha[key] == hb[key], key
    return b


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


def torchrun(args, cwd, env=None):
    return run_cli("torch.distributed.run", ["--standalone", "--nproc_per_node=2", *args], cwd=cwd, env=env,
                   timeout=900)


def steps_per_epoch(log_text):
    return [int(n) for n in re.findall(r"epoch \d+/\d+: (\d+) steps", log_text)]


def tiny_conformer(**kw) -> ConformerCTC:
    args = dict(num_bins=40, num_classes=11, d_model=32, num_layers=2, num_heads=2, conv_kernel=7,
                subsampling_channels=8, dropout=0.0)
    args.update(kw)
    return ConformerCTC(**args)


needs_flashlight = pytest.mark.skipif(importlib.util.find_spec("flashlight") is None,
                                      reason="beam search needs flashlight-text (pip install 'framework[lm]')")

# A bigram that knows "the cat" and finds "hat" unlikely; <s>, </s> and <unk> as KenLM requires.
ARPA = """\\data\\
ngram 1=7
ngram 2=4

\\1-grams:
-1.5\t<unk>
-99\t<s>\t-0.3
-0.7\t</s>
-0.8\tthe\t-0.3
-0.9\tcat\t-0.3
-3.0\that
-1.2\tsat

\\2-grams:
-0.1\t<s> the
-0.1\tthe cat
-0.3\tcat </s>
-0.4\tcat sat

\\end\\
"""


def children_of(pid: int) -> set[int]:
    """The processes ``pid`` started, and theirs (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:  # after "(command name)": state, parent
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found | {c for p in found for c in children_of(p)}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has finished)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def survivors(pids: set[int], within_s: float = 10.0) -> list[int]:
    """Those of ``pids`` still running after up to ``within_s`` seconds."""
    deadline = time.time() + within_s
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kill_with_children(proc: subprocess.Popen) -> None:
    """Ends ``proc`` and every process it started, if it still runs (a test's cleanup)."""
    if proc.poll() is None:
        for pid in children_of(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.communicate()
