"""Stopping on SIGTERM / SIGINT without losing work.

Schedulers preempt with SIGTERM (SLURM's ``scancel``, ``--signal=TERM@120`` before the
time limit, Kubernetes), people with Ctrl-C. Either one is noted here; the training loop
finishes its current optimizer step, writes a checkpoint at that exact position and exits
with status 128 + the signal number (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C
interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised once the run has saved its state after a stop signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """A context manager that records SIGTERM / SIGINT instead of dying on them."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.received is None:
            log.warning("%s received: finishing the current step, then saving a checkpoint and stopping "
                        "(resume with trainer.resume=auto)", signal.Signals(signum).name)
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the main process decides when to stop; a worker killed by
    a Ctrl-C or a scheduler's SIGTERM to the whole process group would only break the batch
    being loaded."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
