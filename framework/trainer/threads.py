"""How many CPU threads torch uses: the cores this process may use, and, with ``auto``, what
measurement shows to be fastest.

PyTorch's default is the machine's core count. Under a CPU quota (containers, SLURM's
cgroups) or with several local ranks that oversubscribes the cores, and OpenMP threads spin
waiting for one another; beside another busy process, two threads on two cores can be several
times slower than one. ``auto`` starts from the cores available to this rank (its CPU
affinity, capped by a cgroup quota, shared among the local ranks) and then measures
(:class:`ThreadTuner`): the first training steps run with each candidate count (1, half, all)
and the fastest is kept, a step timed from the previous one's end to its own (its wait for
data included: data workers share the cores, so a count that starves them is slower); the
step time is watched, and the candidates are timed again when it degrades markedly
(another process started). The choice is logged, saved with checkpoints
and taken up by a resumed run. Thread counts change floating-point summation order: a run
that must be bitwise reproducible across processes sets a fixed ``trainer.num_threads``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from framework.config.schema import check_num_threads

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


def measures(setting: int | str) -> bool:
    """Whether ``auto`` measures: not when OMP_NUM_THREADS fixed the count (the user or a launcher)."""
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    return setting == "auto" and not (from_env.isdigit() and int(from_env) >= 1)


def resolve_num_threads(setting: int | str, local_ranks: int = 1) -> int:
    """``auto``: ``OMP_NUM_THREADS`` when it is set (the user, or a launcher such as
    torchrun, decided); otherwise the available cores shared among this machine's ranks, at
    least 1. A number is taken as it is."""
    check_num_threads(setting)
    if setting == "auto":
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        if from_env.isdigit() and int(from_env) >= 1:
            return int(from_env)
        return max(1, math.floor(available_cores() / max(local_ranks, 1)))
    return int(setting)


def set_num_threads(setting: int | str) -> int:
    """Sets torch's thread count from ``trainer.num_threads`` (the starting count for ``auto``)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = resolve_num_threads(setting, local_ranks)
    import torch

    torch.set_num_threads(threads)
    if setting == "auto" and not measures(setting):
        log.info("torch uses %d CPU thread(s) (trainer.num_threads=auto: OMP_NUM_THREADS=%s in the environment fixes "
                 "it, not measured; torchrun sets it to 1 for each rank when it is unset; set OMP_NUM_THREADS before "
                 "torchrun, or trainer.num_threads, for another count)", threads, os.environ["OMP_NUM_THREADS"])
    else:
        log.info("torch uses %d CPU thread(s) (trainer.num_threads=%s; %.3g cores available, %d local rank(s))",
                 threads, setting, available_cores(), local_ranks)
    return threads


class ThreadTuner:
    """Times the candidate thread counts on real training steps and keeps the fastest (see
    the module doc). ``step_done`` after every optimizer step."""

    WARMUP = 2  # first steps (allocations, caches) are not timed
    STEPS_EACH = 3  # steps timed per candidate; the median counts
    DEGRADED = 1.5  # re-measure when the recent step time exceeds the chosen one's by this factor
    RECHECK_AFTER = 50  # steps between re-measurements at most

    def __init__(self, cores: int) -> None:
        self.candidates = sorted({1, max(1, cores // 2), cores})
        self.chosen: int | None = None
        self.reference = 0.0  # seconds per step of the chosen count when measured
        self.recent = 0.0  # moving average of the step time since
        self.steps_since = 0
        self._plan: list[int] = []
        self._times: dict[int, list[float]] = {}
        self._start_measuring()

    def _start_measuring(self) -> None:
        self._plan = [self.candidates[-1]] * self.WARMUP + [c for c in self.candidates for _ in range(self.STEPS_EACH)]
        self._times = {c: [] for c in self.candidates}
        self._apply(self._plan[0])

    def _apply(self, threads: int) -> None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def step_done(self, previous_end: float | None) -> float:
        """After each optimizer step: times the step from the end of the previous one
        (``None``: the first of an epoch, not timed, as it also holds the loader's start and
        the validation before it). Returns this step's end, for the next call."""
        now = time.perf_counter()
        if previous_end is not None:
            self._timed(now - previous_end)
        return now

    def _timed(self, seconds: float) -> None:
        if self._plan:
            threads = self._plan.pop(0)
            if len(self._plan) < len(self.candidates) * self.STEPS_EACH:  # past the warm-up
                self._times[threads].append(seconds)
            if self._plan:
                self._apply(self._plan[0])
            else:
                self._choose()
            return
        self.steps_since += 1
        self.recent = 0.8 * self.recent + 0.2 * seconds if self.recent else seconds
        if self.steps_since >= self.RECHECK_AFTER and self.recent > self.DEGRADED * self.reference:
            log.info("threads: steps take %.3g s against %.3g s when %d thread(s) were chosen; timing the candidates "
                     "again", self.recent, self.reference, self.chosen)
            self._start_measuring()

    def _choose(self) -> None:
        medians = {c: sorted(t)[len(t) // 2] for c, t in self._times.items() if t}
        self.chosen = min(medians, key=medians.get)
        self.reference, self.recent, self.steps_since = medians[self.chosen], 0.0, 0
        self._apply(self.chosen)
        log.info("threads: %s; using %d (trainer.num_threads=auto)",
                 ", ".join(f"{c} -> {s:.3g} s/step" for c, s in sorted(medians.items())), self.chosen)

    def state_dict(self) -> dict[str, float | int | None]:
        return {"chosen": self.chosen, "reference": self.reference}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """A resumed run continues with the count chosen before (no new measurement)."""
        if state.get("chosen") in self.candidates:
            self.chosen, self.reference = int(state["chosen"]), float(state["reference"])
            self._plan = []
            self._apply(self.chosen)
            log.info("threads: %d, as chosen before the resume", self.chosen)


def tuner_for(setting: int | str, device_type: str) -> ThreadTuner | None:
    """The :class:`ThreadTuner` of a CPU run with ``trainer.num_threads=auto`` (None otherwise)."""
    if not measures(setting) or device_type != "cpu":
        return None
    return ThreadTuner(resolve_num_threads("auto", int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
