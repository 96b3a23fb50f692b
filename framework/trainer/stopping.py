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

Once a command's stop checkpoint is written (:func:`leaving`), a further stop signal ends the
process at once (``os._exit``): nothing is left to save, and an interrupt raised in what
remains of its exit (a tracker's last upload, a ``__del__``, an exit hook) would only print a
traceback from wherever it landed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any, NoReturn, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_interrupted_by: int | None = None  # the signal that interrupted the running command
_in_command = False  # within interrupt_on_stop_signals: a command's process, which may end itself
_leaving = False  # the command's stop checkpoint is written: the process only exits from here


def leaving() -> None:
    """In a command's process, from now on SIGTERM / SIGINT end the process at once (see the
    module's docstring). Elsewhere (a notebook's ``Brain.fit``) nothing changes."""
    global _leaving
    _leaving = _in_command


def _exit_now(signum: int) -> NoReturn:
    from framework.cli import report

    report("interrupted" if signum == signal.SIGINT else "terminated")
    os._exit(128 + signum)


def interrupting_signal() -> int | None:
    """The signal that raised ``KeyboardInterrupt`` in the running command; None when none did."""
    return _interrupted_by


def _interrupt(signum: int, frame: FrameType | None = None) -> NoReturn:
    """A signal handler: records the signal and raises ``KeyboardInterrupt`` where the program is."""
    global _interrupted_by
    if _leaving:
        _exit_now(signum)
    _interrupted_by = signum
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Within it, SIGTERM as well as SIGINT raises ``KeyboardInterrupt``, and both are
    recorded; a signal the command was started ignoring (``nohup``) stays ignored."""
    global _interrupted_by, _leaving, _in_command
    _interrupted_by, _leaving = None, False
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _interrupt)
    _in_command = True
    try:
        yield
    finally:
        if not _leaving:  # else the command exits now, its exit hooks still under _interrupt
            _in_command = False
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


class WaitInterrupted(BaseException):
    """A stop signal arrived while the training loop waited for its next batch. Not an
    ``Exception``, as ``KeyboardInterrupt`` is not: the data code's handlers of failed reads
    must not take it for one."""


def each_waited(items: Iterable[T], waiting: Callable[[], contextlib.AbstractContextManager]) -> Iterator[T]:
    """``items``, each waited for inside ``waiting()``."""
    it = iter(items)
    while True:
        with waiting():
            item = next(it, _END)
        if item is _END:
            return
        yield item


_END = object()


class StopSignals:
    """A context manager that records SIGTERM / SIGINT instead of dying on them. While the
    loop waits for data (:meth:`waiting`) a stop signal also ends the wait: a stalled network
    read would otherwise hold the stop until its timeout, longer than a scheduler's grace
    period. So does the end of the time budget (a SIGALRM then), which is otherwise looked
    at only between steps."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.timed_out = False  # a wait ended at the end of the time budget
        self._previous: dict[int, object] = {}
        self._waiting = False
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # started ignoring it (nohup, `cmd &`): so it stays
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker before its own handlers: the main process decides
            return
        if _leaving:
            _exit_now(signum)
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            _interrupt(signum)  # a second Ctrl-C: stop now
        if self.received is None:
            log.warning("%s received: finishing the current step, then saving a checkpoint and stopping "
                        "(resume with trainer.resume=auto)", signal.Signals(signum).name)
        self.received = signum
        if self._waiting:
            self._waiting = False  # one interruption per wait
            raise WaitInterrupted

    def _time_up(self, signum: int, frame: FrameType | None) -> None:
        if self._waiting:
            self._waiting, self.timed_out = False, True
            raise WaitInterrupted

    @contextlib.contextmanager
    def waiting(self, seconds: float | None = None) -> Iterator[None]:
        """Around the wait for the next batch: a stop signal raises :class:`WaitInterrupted`
        there, as does the end of ``seconds`` (the time budget left), when given."""
        if self.received is not None:  # a signal between two waits (in a step): this one is not begun
            raise WaitInterrupted
        # the caller's own SIGALRM timer (pytest-timeout, a notebook's alarm) is left alone: the
        # budget is then looked at between steps only
        timed = (seconds is not None and threading.current_thread() is threading.main_thread()
                 and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
        if timed and seconds <= 0:
            self.timed_out = True
            raise WaitInterrupted
        self._waiting = True
        if timed:
            previous = signal.signal(signal.SIGALRM, self._time_up)
            signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            self._waiting = False
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)

    @property
    def requested(self) -> bool:
        return self.received is not None


class StopAgreement:
    """Every rank stops at the same optimizer step. Before each step one all-reduce gives
    every rank the step's total example count (for the loss weights of gradient accumulation)
    and whether any rank received a stop signal; at the end of an epoch one more tells
    whether any did meanwhile. In a single process no collective is needed."""

    def __init__(self, dist: Any, max_time: str | None = None, elapsed: Any = None) -> None:
        from framework.config.schema import parse_duration

        self.dist = dist
        self.signals = StopSignals()
        self.max_time, self.elapsed = max_time, elapsed  # the time budget (trainer.max_time) and its clock
        self.max_time_s = parse_duration(max_time) if max_time else None
        self.stopping = False  # a stop signal reached some rank: stop at this step
        self.out_of_time = False  # the time budget is spent on some rank: training ends at this step
        self.step_clock = 0.0  # the run's time spent at the last step, the mean over the ranks (one value on all)

    def say_out_of_time(self, epoch: int, step: int) -> None:
        log.info("stopped on time: trainer.max_time=%s spent (%.1f s) at epoch %d, step %d", self.max_time,
                 self.elapsed(), epoch + 1, step)

    def say_budget_left(self) -> None:
        """Logs, for a resumed run with a time budget, how much of it earlier processes spent."""
        spent = self.elapsed() if self.max_time_s is not None else 0.0
        if spent > 1e-3:
            log.info("trainer.max_time=%s: %.1f s spent before this process, %.1f s left", self.max_time, spent,
                     max(self.max_time_s - spent, 0.0))

    def time_up(self) -> bool:
        """Whether this rank has spent the time budget (or another rank had, at the last step)."""
        return (self.out_of_time or self.signals.timed_out
                or (self.max_time_s is not None and self.elapsed() >= self.max_time_s))

    def waiting(self) -> contextlib.AbstractContextManager:
        """Around the wait for the next batch: a stop signal or the end of the time budget ends it."""
        return self.signals.waiting(self.max_time_s - self.elapsed() if self.max_time_s is not None else None)

    def plan_step(self, sizes: list[int]) -> list[float] | None:
        """The micro-batch loss weights of a step over micro-batches of ``sizes`` examples
        (empty when no rank has an example), or None to stop before it: a stop signal, or the
        time budget spent on any rank."""
        import torch

        from framework.trainer import distributed
        from framework.trainer.accumulation import loss_weights

        time_up = self.time_up()
        elapsed = self.elapsed() if self.elapsed is not None else 0.0

        if not self.dist.enabled:
            self.step_clock = elapsed
            self.stopping, self.out_of_time = self.signals.requested, time_up and not self.signals.requested
            return None if self.stopping or self.out_of_time else loss_weights(sizes)
        # one all-reduce: the step's examples, stop requests and budget ends, and the ranks' clocks,
        # whose mean every rank's time-keyed schedule then reads (its own clock would part the replicas)
        flags = torch.tensor([sum(sizes), int(self.signals.requested), int(time_up), elapsed], dtype=torch.float64,
                             device=self.dist.device)
        summed = distributed.all_reduce_sum(flags).tolist()
        total, stops, late = (round(x) for x in summed[:3])
        self.step_clock = summed[3] / self.dist.world_size
        if stops or late:
            self.stopping, self.out_of_time = bool(stops), not stops
            return None
        if not sizes and total:  # DDP cannot skip a step on one rank: the others would wait for it
            raise RuntimeError(
                f"rank {self.dist.rank}: every example of a step was unreadable (skip_bad) while other ranks had "
                "data. Clean the manifest (python -m framework.prepare manifest ... --skip-bad) before a "
                "distributed run")
        if total == 0:
            return []
        return loss_weights(sizes, total, self.dist.world_size)

    def agreed(self) -> bool:
        """Whether any rank received a stop signal (one collective under DDP)."""
        if not self.dist.enabled:
            return self.signals.requested
        import torch

        from framework.trainer import distributed

        flag = torch.tensor([int(self.signals.requested)], device=self.dist.device)
        return bool(distributed.all_reduce_sum(flag).item())

    @property
    def signum(self) -> int:
        return self.signals.received or signal.SIGTERM  # another rank got the signal
