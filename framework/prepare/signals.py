"""SIGTERM / SIGINT during a prepare command: nothing half-made is left behind.

In the command's process a stop signal interrupts where it is (``exit_on_error``), so the
cleanup of whatever it was making (terminating its worker pool, removing temporary files)
runs as the exception unwinds, and the command exits with 143 ("terminated") or 130
("interrupted"). Its worker processes ignore SIGINT (a terminal's Ctrl-C reaches the whole
process group) and die on SIGTERM, which is how a pool is terminated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

from framework.trainer.stopping import STOP_SIGNALS


def worker_signals() -> None:
    """Pool ``initializer``: SIGINT ignored, SIGTERM deadly (a forked worker would otherwise
    inherit the command's handler and survive the pool's terminate). On Linux the worker also
    dies with the command (SIGKILL'd, say) instead of finishing its task alone and printing a
    traceback when the result has nowhere to go."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def die_with_parent() -> None:
    """SIGKILL this pool worker when the command that started it ends (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if not sys.platform.startswith("linux") or parent is None:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # no libc prctl: the worker ends with its task, as before
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent.pid:  # the command ended before the call (the worker's start-up takes seconds)
        os._exit(1)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Stop signals wait until the block has run (replacing an output and the files it
    reads, which must change together); one that came meanwhile is raised after it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
