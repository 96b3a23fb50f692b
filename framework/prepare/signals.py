"""SIGTERM / SIGINT during a prepare command: nothing half-made is left behind.

In the command's process a stop signal raises :class:`StopRequested`, so the cleanup of
whatever it was making (terminating its worker pool, removing temporary files) runs as the
exception unwinds, and ``exit_on_error`` exits with 128 + the signal (143, 130). Its worker
processes ignore SIGINT (a terminal's Ctrl-C reaches the whole process group) and die on
SIGTERM, which is how a pool is terminated.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from framework.trainer.stopping import STOP_SIGNALS, StopRequested


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, a stop signal raises :class:`StopRequested`; later ones are let pass,
    so the cleanup it triggers runs to its end. (Handled, not ignored: an ignored signal would
    stay ignored in a worker started meanwhile, which the pool's terminate could then not end.)"""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise StopRequested(signum, f"stopped by {signal.Signals(signum).name}: temporary files and worker "
                                        "processes removed, earlier outputs left as they were")

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def worker_signals() -> None:
    """Pool ``initializer``: SIGINT ignored, SIGTERM deadly (a forked worker would otherwise
    inherit :func:`stop_on_signals`' handler and survive the pool's terminate)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Stop signals wait until the block has run (replacing an output and the files it
    reads, which must change together); one that came meanwhile is raised after it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
