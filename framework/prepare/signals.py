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
    """SIGKILL this process when its parent ends (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the call: nobody will signal
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
