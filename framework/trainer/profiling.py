"""``trainer.profile=N``: torch.profiler over N training steps after a short warm-up.

Writes to ``<run dir>/profile/``: ``trace-rank<r>.pt.trace.json``, a Chrome trace (open it
in https://ui.perfetto.dev or chrome://tracing), and ``ops-rank<r>.txt``, the operators that
took the most time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

log = logging.getLogger(__name__)
WAIT, WARMUP = 1, 1  # steps left out first (the first one builds caches), then recorded and thrown away
TOP_OPS = 30


class StepProfiler:
    """A context manager around training; :meth:`step` after each optimizer step. With
    ``steps`` 0 it does nothing."""

    def __init__(self, steps: int, directory: str | Path, rank: int = 0) -> None:
        self.steps = steps
        self.directory = Path(directory)
        self.rank = rank
        self._profiler: profile | None = None
        self.written: list[Path] = []

    def __enter__(self) -> StepProfiler:
        if self.steps > 0:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._profiler = profile(activities=activities, schedule=schedule(wait=WAIT, warmup=WARMUP,
                                                                              active=self.steps, repeat=1),
                                     on_trace_ready=self._write)
            self._profiler.__enter__()
        return self

    def step(self) -> None:
        if self._profiler is not None:
            self._profiler.step()

    def __exit__(self, *exc: Any) -> None:
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(*exc)  # a run that ends while recording writes what it recorded
        if not self.written:
            log.warning("trainer.profile=%d: training ended after fewer than %d steps (%d warm-up); no profile "
                        "written", self.steps, WAIT + WARMUP + 1, WAIT + WARMUP)

    def _write(self, profiler: profile) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        trace = self.directory / f"trace-rank{self.rank}.pt.trace.json"
        table = self.directory / f"ops-rank{self.rank}.txt"
        profiler.export_chrome_trace(str(trace))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table.write_text(profiler.key_averages().table(sort_by=sort, row_limit=TOP_OPS) + "\n")
        self.written = [trace, table]
        log.info("profile of %d training steps: %s, %s", self.steps, trace, table)
