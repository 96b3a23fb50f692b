"""Sending to a tracking service without making training wait for it.

Requests run in order on a thread of their own, fed through a bounded queue. The first
failure (a server that stops answering, a refused request) is warned about once; from then
on nothing more is sent and what is left is counted, so the end of the run can say what the
tracker lacks. Training never waits: a full queue drops (and counts) instead of blocking,
and closing waits a bounded time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)
SENDER_THREAD = "-sender"  # the end of a sender thread's name


class _QuietRetries(logging.Filter):
    """Leaves out the HTTP client's line per retry from the senders' threads: the one warning
    about a failure is the sender's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.threadName.endswith(SENDER_THREAD)


_quiet_retries = _QuietRetries()


@dataclass
class _Request:
    send: Callable[[], None]
    step: int | None  # the training step the request belongs to (0 or None: before training)
    values: int
    files: int


class BackgroundSender:
    """One tracker's queue of requests and the thread that sends them."""

    def __init__(self, name: str, max_pending: int = 10_000, close_timeout_s: float = 60.0) -> None:
        self.name = name
        self.close_timeout_s = close_timeout_s
        self._queue: queue.Queue[_Request | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._in_flight: _Request | None = None
        self.failure: str | None = None  # why sending stopped
        self.unsent_values = 0
        self.unsent_files = 0
        self.submitted = 0

    def submit(self, send: Callable[[], None], step: int | None, values: int = 0, files: int = 0) -> None:
        """Queues ``send()``; ``values`` and ``files`` are what it records, counted if it never runs."""
        request = _Request(send, step, values, files)
        self.submitted += 1
        if self.failure is not None:
            self._count(request)
            return
        if self._thread is None:
            logging.getLogger("urllib3.connectionpool").addFilter(_quiet_retries)  # once: filters are a set
            self._thread = threading.Thread(target=self._run, name=f"{self.name}{SENDER_THREAD}", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self._fail(request, f"more than {self._queue.maxsize} requests waited for the service")
            self._count(request)

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            with self._lock:
                failed = self.failure is not None
                self._in_flight = request
            sent = False
            if not failed:
                try:
                    request.send()
                    sent = True
                except Exception as exc:  # whatever the client raises: training goes on without it
                    cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    self._fail(request, f"{type(exc).__name__}: {cause}")
            with self._lock:
                if self._in_flight is request:  # close() has not given up on it (and counted it)
                    self._in_flight = None
                    if not sent:
                        self._add_unsent(request)

    def _fail(self, request: _Request, cause: str) -> None:
        with self._lock:
            if self.failure is not None:
                return
            self.failure = f"sending failed since {f'step {request.step}' if request.step else 'the start'}"
        log.warning("%s: %s (%s); nothing more is sent to it (training goes on, the local logs keep everything)",
                    self.name, self.failure, cause)

    def _count(self, request: _Request) -> None:
        with self._lock:
            self._add_unsent(request)

    def _add_unsent(self, request: _Request) -> None:  # with the lock held
        self.unsent_values += request.values
        self.unsent_files += request.files

    def close(self) -> str | None:
        """Waits up to ``close_timeout_s`` for what is queued; returns a line saying what was
        not sent, if anything."""
        if self._thread is not None:
            deadline = time.monotonic() + self.close_timeout_s
            try:
                self._queue.put(None, timeout=self.close_timeout_s)
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():  # still busy: what it holds is not known to be sent
                with self._lock:
                    if self.failure is None:
                        self.failure = f"not sent within {self.close_timeout_s:g} s at the end of the run"
                    left = [self._in_flight] if self._in_flight is not None else []
                    self._in_flight = None
                while True:
                    try:
                        request = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if request is not None:
                        left.append(request)
                for request in left:
                    self._count(request)
            self._thread = None
        if not (self.unsent_values or self.unsent_files):
            return None
        files = f" and {_count_of(self.unsent_files, 'file')}" if self.unsent_files else ""
        return f"{self.name}: {_count_of(self.unsent_values, 'value')}{files} not sent ({self.failure})"


def _count_of(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
