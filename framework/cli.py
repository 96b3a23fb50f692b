"""Command-line pieces the entry points share: Hydra-style flags, ``key=value`` overrides,
making a user's recipe folder importable, and reporting errors in one line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from framework.errors import Unavailable, UserError

T = TypeVar("T")
log = logging.getLogger("framework")

# Hydra's flags that take a value (which may itself contain '=')
HYDRA_VALUE_FLAGS = (("--config-dir", "-cd"), ("--config-name", "-cn"), ("--config-path", "-cp"),
                     ("--cfg", "-c"), ("--package", "-p"))
DEBUG_ENV = "HYDRA_FULL_ERROR"  # =1: full tracebacks instead of one-line errors (Hydra's own switch)


def option(argv: list[str], *names: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE``; None when absent."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def hydra_overrides(argv: list[str]) -> list[str]:
    """The overrides of a Hydra command line: ``key=value`` and ``~key`` deletions (not the
    values of its flags)."""
    values = {option(argv, *names) for names in HYDRA_VALUE_FLAGS}
    return [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-") and a not in values]


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """argparse options plus trailing ``key=value`` config overrides; anything else is an error."""
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    if len(overrides) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    return args, overrides


def report(message: str) -> None:
    """To stderr (as it is now: a test's capture or a redirect), and to the run's log files.
    Under torchrun every rank reports its own failure: a rank other than 0 names itself, and
    the line is written in one piece so the ranks' lines do not run into one another."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        message = f"[rank {os.environ['RANK']}] {message}"
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_on_error(main: Callable[[], T], reraise: bool = False) -> T:
    """Runs ``main``; a failure becomes one line and an exit status: 2 for a user's mistake
    (:class:`UserError`), 128 + signal after a stop signal (SIGTERM and SIGINT interrupt at
    once outside the training loop, which stops after its step), 1 otherwise.
    ``HYDRA_FULL_ERROR=1`` shows the traceback instead. ``reraise`` (multirun jobs) reports
    and re-raises, so the sweeper sees the failure."""
    from framework.trainer.stopping import StopRequested, interrupt_on_stop_signals, interrupting_signal, leaving

    with interrupt_on_stop_signals():
        try:
            return main()
        except StopRequested as exc:
            log.warning("%s", exc)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            leaving()  # interrupted once: the exit is not broken off again
            _exit_interrupted(interrupting_signal())
        except Exception as exc:
            if interrupting_signal() is not None:  # an interrupt torch turned into its own error (unexpected pos)
                _exit_interrupted(interrupting_signal())
            text, status = describe_error(exc)
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            report(f"error: {text}" + ("" if status != 1 else f"  ({DEBUG_ENV}=1 shows the traceback)"))
            if reraise:
                raise
            sys.exit(status)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line a failure is reported in, and its exit status: 2 for a user's mistake, 75
    for something that cannot be reached now (:class:`Unavailable`), 1 otherwise."""
    for kind, status in ((UserError, 2), (Unavailable, 75)):
        found = _in_chain(exc, kind)  # Hydra wraps what a _target_ raised in an InstantiationException
        if found:
            return _worker_message(found), status
    return f"{type(exc).__name__}: {_worker_message(exc)}", 1


def _worker_message(exc: BaseException) -> str:
    """``exc``'s message. From a DataLoader worker, torch raises the exception again in the main
    process with the worker's traceback as its message: the original message is what follows
    the traceback's last ``module.Type: `` line."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    kind = type(exc)
    names = {f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "}
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        name = next((n for n in names if lines[i].startswith(n)), None)
        if name:
            return "\n".join([lines[i][len(name):], *lines[i + 1:]])
    return lines[-1]


def _exit_interrupted(signum: int | None) -> NoReturn:
    """Ctrl-C (or a KeyboardInterrupt with no signal) ends in "interrupted" and 130, SIGTERM in
    "terminated" and 143."""
    signum = signum or signal.SIGINT
    report("interrupted" if signum == signal.SIGINT else "terminated")
    sys.exit(128 + signum)


def _in_chain(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__
    return None
