"""The native libraries every command needs, checked once at import.

A torchaudio build that does not match the installed torch (``pip install torchaudio``
picking a newer build than ``uv.lock``'s) fails inside ``libtorchaudio.so``; without this
check each config node that imports it would report the same ``OSError`` again. Here it is
one line naming both versions and the command that reinstalls the locked ones.
"""

from __future__ import annotations

import sys
from importlib import metadata

REPAIR = "make setup (or: uv sync --frozen --all-extras), which reinstalls the versions in uv.lock"


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def broken_torch_message(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"torch {installed_version('torch')} / torchaudio {installed_version('torchaudio')} do not load "
            f"together ({type(exc).__name__}: {first}); this project is tested with torch==2.11.0 and "
            f"torchaudio==2.11.0: repair the environment with {REPAIR}")


def check_torch() -> None:
    """Imports torch and torchaudio. When they do not load: as a command (``python -m
    framework.<command>`` or an installed script), one line on stderr and exit status 2; as
    a library, an ImportError with the same line."""
    try:
        import torchaudio  # noqa: F401  (imports torch first)
    except (ImportError, OSError) as exc:
        message = broken_torch_message(exc)
        if _running_as_command():
            from framework.cli import report  # one line in one write, named by its rank under torchrun

            report(f"error: {message}")
            sys.exit(2)
        raise ImportError(message) from exc


def _running_as_command() -> bool:
    # while ``python -m framework.x`` locates its module, sys.argv[0] is "-m" (runpy)
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 == "-m" or argv0.rsplit("/", 1)[-1].startswith("framework-")
