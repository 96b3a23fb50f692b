"""What the benchmarks share: the checkout they run from, configs composed and checked as
``python -m framework.train`` composes them, training runs in child processes (and what
they took), the training DataLoader, device synchronisation and peak memory."""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from framework.config import check_command_line
from framework.config.schema import trainer_options
from framework.data.loader import dataset_ids, make_loader, make_sampler

ROOT = Path(__file__).resolve().parents[1]  # the checkout: child processes import framework from here


def compose(overrides: Sequence[str]) -> DictConfig:
    """The config ``python -m framework.train <overrides>`` runs with, checked as that
    command checks it: a typo stops a benchmark before it measures anything."""
    return check_command_line(list(overrides))


# --------------------------------------------------------------------- child processes
def child_env(threads: int | None = None) -> dict[str, str]:
    """This process's environment for a child: this checkout first on ``PYTHONPATH`` (the
    child runs the same code from any folder) and, with ``threads``, that many OpenMP and
    MKL threads."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


@dataclass(frozen=True)
class Usage:
    """What a finished child process took. CPU seconds (user + system) swing much less
    with other load on the machine than wall seconds do."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float


class ChildFailed(RuntimeError):
    pass


class Child:
    """A command in a child process, its output (stdout and stderr) in ``log``."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.cmd, self.log = cmd, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        with log.open("w") as out:  # the child keeps its own handle
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or child_env(), cwd=cwd)

    def poll(self) -> Usage | None:
        """What the process took once it has ended, None while it runs. Raises
        :class:`ChildFailed`, with the end of its log, when it failed."""
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> Usage:
        """Waits for the end; past ``timeout`` seconds from the start the process is killed
        and :class:`subprocess.TimeoutExpired` raised."""
        if timeout is None:
            return self._reap(0)
        while (usage := self.poll()) is None:
            if time.perf_counter() - self.started > timeout:
                self.proc.kill()
                self.proc.wait()
                raise subprocess.TimeoutExpired(self.cmd, timeout)
            time.sleep(0.1)
        return usage

    def _reap(self, flags: int) -> Usage | None:
        pid, status, usage = os.wait4(self.proc.pid, flags)  # the child's own CPU time comes with its exit
        if pid == 0:
            return None
        wall = time.perf_counter() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            tail = "\n".join(self.log.read_text().splitlines()[-15:])
            raise ChildFailed(f"{' '.join(self.cmd)} failed (exit {self.proc.returncode}):\n{tail}")
        return Usage(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)  # Linux reports KiB


def start_training(overrides: Sequence[str], run_dir: Path, env: dict[str, str] | None = None) -> Child:
    """``python -m framework.train <overrides>`` into ``run_dir``, in a child process whose
    output goes to ``<run_dir>/stdout.txt``."""
    run_dir = run_dir.resolve()  # the child runs in another folder
    cmd = [sys.executable, "-m", "framework.train", *overrides, f"hydra.run.dir={run_dir}"]
    return Child(cmd, run_dir / "stdout.txt", env, cwd=run_dir.parent)


def read_metrics(run_dir: Path) -> dict:
    """A finished run's ``metrics.json``: final ``metrics``, ``monitor``, ``mode`` and the
    per-epoch ``history``."""
    return json.loads((run_dir / "metrics.json").read_text())


def run_training(overrides: Sequence[str], run_dir: Path, env: dict[str, str] | None = None,
                 timeout: float | None = None) -> tuple[dict, Usage]:
    """A whole training run in a child process: its ``metrics.json`` and what it took."""
    usage = start_training(overrides, run_dir, env).wait(timeout)
    return read_metrics(run_dir), usage


# ------------------------------------------------------------------------------- data
def training_loader(cfg: DictConfig, dataset, features=None, pin_memory: bool = False) -> DataLoader:
    """The DataLoader training builds for ``dataset`` under ``cfg``
    (:mod:`framework.data.loader`): ``cfg.batching``'s batches in training order,
    ``trainer.num_workers`` workers, each example through ``features``' worker transform
    when ``features.where=worker``."""
    transform, lengths = features.for_loader(True, dataset.lengths) if features is not None else (None, dataset.lengths)
    sampler = make_sampler(cfg.batching, lengths, cfg.seed, train=True, ids=dataset_ids(dataset))
    return make_loader(dataset, sampler, trainer_options(cfg.trainer).num_workers, cfg.seed, pin_memory=pin_memory,
                       transform=transform)


# ----------------------------------------------------------------------------- device
def sync(device: torch.device) -> None:
    """Waits for the work queued on ``device``: a timing ends when the work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Frees what a measurement left behind; the next peak is counted from here."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """The CUDA allocator's peak since :func:`free_memory`; on a CPU the process's peak
    resident memory since it started."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def mean_sd(values: Sequence[float], digits: int = 1) -> str:
    """``mean ± sd`` (sample standard deviation; 0 for one value) of ``values``, or ``-`` for none."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"
