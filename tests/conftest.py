from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import framework  # noqa: F401  (registers the config schemas for the compose API)

ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast configuration of the default recipe for end-to-end runs.
TINY = [
    "dataset.prepare.splits={train:48,valid:16,test:16}",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.fc_size=32",
    "model.conv_channels=[4,4]",
    "trainer.max_epochs=2",
    "batching.max_batch_length=20",
    "logger.log_every_n_steps=1",
    # one thread: tiny models gain nothing from a second, and runs compared bitwise need one fixed count
    # (trainer.num_threads=auto measures the candidates on each run's first steps)
    "trainer.num_threads=1",
]


def run_cli(module: str, args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``python -m <module> <args>`` like a user would, in ``cwd``."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_result(run_dir: Path) -> dict:
    """A finished run's metrics.json: final ``metrics``, ``monitor`` and per-epoch ``history``."""
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Shared folder for synthesised corpora (each is generated once per session)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory, data_dir) -> Path:
    """One epoch of the tiny config, trained once per session, for tests that only read a
    finished run (evaluate, transcribe, decoders). Tests that change a run train their own."""
    run_dir = tmp_path_factory.mktemp("one-epoch") / "run"
    run_cli("framework.train", [*TINY, f"dataset.root={data_dir}/tones-tiny", "trainer.max_epochs=1",
                                f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    return run_dir


@pytest.fixture()
def train_cli(tmp_path, data_dir):
    """Runs ``python -m framework.train`` with the tiny config; returns (proc, run_dir)."""

    def run(*overrides: str, run_dir: Path | None = None, check: bool = True, module: str = "framework.train"):
        run_dir = run_dir or tmp_path / "run"
        tiny = [*TINY, f"dataset.root={data_dir}/tones-tiny"]
        for group in ("batching", "dataset"):  # another option of the group: drop the tiny settings of the default
            if any(o.startswith(f"{group}=") for o in overrides):
                tiny = [t for t in tiny if not t.startswith(f"{group}.")]
        args = [*tiny, f"hydra.run.dir={run_dir}", *overrides]
        return run_cli(module, args, cwd=tmp_path, check=check), run_dir

    return run


@pytest.fixture()
def one_thread():
    """Models run in the test's own process on one thread: the suite runs two workers on two
    cores, and a second intra-op thread on a tiny model only adds synchronisation."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def stop_signals_left_alone():
    """No test may leave SIGINT or SIGTERM changed in the test process: an ignored signal
    survives exec, so every command a later test starts would ignore it too (as under nohup)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = [signal.Signals(s).name for s, handler in before.items() if signal.getsignal(s) is not handler]
    for signum, handler in before.items():
        signal.signal(signum, handler)
    now_blocked = signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    changed += [f"{signal.Signals(s).name} (blocked)" for s in now_blocked ^ blocked if s in before]
    assert not changed, f"the test left {', '.join(changed)} handled differently"

