"""How many CPU threads torch should use: the cores this process may really run on.

PyTorch's default is the machine's core count. Under a CPU quota (containers, SLURM's
cgroups) or with several local ranks that oversubscribes the cores, and OpenMP threads spin
waiting for one another. ``auto`` divides what is available instead. It does not leave cores
to DataLoader workers: on 2 cores with 2 workers, 2 threads trained 1.1-1.3x faster than 1,
with the features computed in the workers or on the device (``python -m benchmarks
threads``, BENCHMARKS.md). Other busy processes are not seen: the thread count stays a
function of the machine and the launch, so a resumed run computes as the first did.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def available_cores() -> float:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return min(cores, quota) if quota else cores


def _cgroup_quota() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")  # "max 100000" or "200000 100000"
    v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1[0].is_file():
            quota, period = int(v1[0].read_text()), int(v1[1].read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        pass
    return None


def resolve_num_threads(setting: int | str, local_ranks: int = 1) -> int:
    """``auto``: ``OMP_NUM_THREADS`` when it is set (the user, or a launcher such as
    torchrun, decided); otherwise the available cores shared among this machine's ranks, at
    least 1. A number is taken as it is."""
    if setting == "auto":
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        if from_env.isdigit() and int(from_env) >= 1:
            return int(from_env)
        return max(1, math.floor(available_cores() / max(local_ranks, 1)))
    whole = (isinstance(setting, int) and not isinstance(setting, bool)) or (isinstance(setting, str) and setting.isdigit())
    if not whole or int(setting) < 1:
        raise ValueError(f"trainer.num_threads must be auto or a whole number >= 1, got {setting!r}")
    return int(setting)


def set_num_threads(setting: int | str) -> int:
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = resolve_num_threads(setting, local_ranks)
    import torch  # here, not at the top: the config check uses resolve_num_threads without torch

    torch.set_num_threads(threads)
    log.info("torch uses %d CPU thread(s) (trainer.num_threads=%s; %.3g cores available, %d local rank(s))",
             threads, setting, available_cores(), local_ranks)
    return threads
