"""Epoch time of the default recipe with PyTorch's thread count against ``num_threads=auto``.

    python -m benchmarks threads [--epochs 3] [--repeats 2] [key=value ...]

Each scenario (data workers, a competing busy process) trains the same short run with
``trainer.num_threads`` set to the machine's core count (what PyTorch does on its own),
to that count with idle OpenMP threads sleeping at once (``OMP_WAIT_POLICY=PASSIVE``;
by default they spin a while for the next parallel region), to ``auto`` and to 1,
interleaved, and reports the median time of the epochs after the first (the first pays for
start-up). A competing process is one busy Python loop per
core it should take, started before the runs and stopped after.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.common import child_env, run_training
from framework.trainer.threads import available_cores


@contextmanager
def busy_processes(count: int):
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"  # ends with the benchmark
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


PASSIVE = "+passive"  # a setting's suffix: OMP_WAIT_POLICY=PASSIVE


def epoch_seconds(setting: str, workers: int, epochs: int, overrides: list[str], out: Path
                  ) -> tuple[list[float], str]:
    """Times of the epochs after the first, from the run's own history, and the thread count
    ``auto`` chose (from the run's log; ``-`` for a fixed count)."""
    # without the caller's OpenMP settings: auto would take OMP_NUM_THREADS as given
    env = {k: v for k, v in child_env().items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    threads = setting.removesuffix(PASSIVE)
    if setting != threads:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    result, _ = run_training([f"trainer.max_epochs={epochs}", "trainer.device=cpu", f"trainer.num_threads={threads}",
                              f"trainer.num_workers={workers}", "logger.tensorboard=false", *overrides], out, env)
    chosen = re.findall(r"threads: .*; using (\d+)", (out / "train.log").read_text()) if threads == "auto" else []
    return [h["epoch_s"] for h in result["history"][1:]], "/".join(chosen) or "-"


def main(epochs: int, repeats: int, overrides: list[str]) -> None:
    cores = int(available_cores())
    settings = (str(cores), str(cores) + PASSIVE, "auto", "1")
    scenarios = ((0, 0), (2, 0), (0, 1), (0, cores))  # (data workers, busy processes)
    print(f"{cores} cores available; default recipe, {epochs} epochs, median of epochs 2.. over {repeats} runs\n")
    print(f"| data workers | busy processes | {cores} threads (PyTorch's default) s | {cores} threads, "
          "OMP_WAIT_POLICY=PASSIVE s | auto s (threads chosen) | 1 thread s | default / auto |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for workers, busy in scenarios:
            times: dict[str, list[float]] = {s: [] for s in settings}
            chosen = []
            with busy_processes(busy):
                for r in range(repeats):
                    for s in settings:  # interleaved, so a drift in the machine's load hits all alike
                        seconds, picked = epoch_seconds(s, workers, epochs, overrides, Path(tmp) / f"{workers}-{busy}-{s}-{r}")
                        times[s] += seconds
                        chosen += [picked] if s == "auto" else []
            med = {s: float(np.median(t)) for s, t in times.items()}
            default, passive = med[str(cores)], med[str(cores) + PASSIVE]
            print(f"| {workers} | {busy} | {default:.2f} | {passive:.2f} | {med['auto']:.2f} ({', '.join(chosen)}) | "
                  f"{med['1']:.2f} | {default / med['auto']:.2f} |", flush=True)
