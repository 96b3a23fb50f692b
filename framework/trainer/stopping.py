"""Stopping on SIGTERM / SIGINT without losing work.

Schedulers preempt with SIGTERM (SLURM's ``scancel``, ``--signal=TERM@120`` before the
time limit, Kubernetes), people with Ctrl-C. Either one is noted here; the training loop
finishes its current optimizer step, writes a checkpoint at that exact position and exits
with status 128 + the signal number (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C
interrupts at once.

Outside the training loop (loading, testing, ``framework.average``, ``framework.evaluate``)
either signal interrupts at once (:func:`interrupt_on_stop_signals`): a ``KeyboardInterrupt``
raised where the program is, so ``finally`` blocks run and temporary files are removed.
A signal that interrupts is recorded (:func:`interrupting_signal`): an interrupt inside
``torch.save`` comes out as torch's ``RuntimeError: ... unexpected pos``, and the command
still reports the signal, not that error.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_interrupted_by: int | None = None  # the signal that interrupted the running command


def interrupting_signal() -> int | None:
    """The signal that raised ``KeyboardInterrupt`` in the running command; None when none did."""
    return _interrupted_by


def _interrupt(signum: int, frame: FrameType | None = None) -> NoReturn:
    """A signal handler: records the signal and raises ``KeyboardInterrupt`` where the program is."""
    global _interrupted_by
    _interrupted_by = signum
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Within it, SIGTERM as well as SIGINT raises ``KeyboardInterrupt``, and both are
    recorded; a signal the command was started ignoring (``nohup``) stays ignored."""
    global _interrupted_by
    _interrupted_by = None
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


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
            _interrupt(signum)  # a second Ctrl-C: stop now
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
