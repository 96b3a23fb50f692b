"""Writing a file so that a crash never leaves half of it: a temporary name in the same
folder, fsynced, then a rename (atomic on POSIX file systems), the folder fsynced so the
rename survives too. Checkpoints add a checksum on top (:mod:`framework.trainer.checkpoint`).
A process killed mid-write (SIGKILL, a power cut) leaves its temporary file, ``.<name>.tmp``;
:func:`remove_leftovers` clears those of names the caller owns."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


def temporary_path(path: Path) -> Path:
    """Where :func:`write_atomic` writes ``path`` before renaming it: ``.<name>.tmp`` beside it."""
    return path.with_name(f".{path.name}.tmp")


def remove_leftovers(directory: Path, owned: Callable[[str], bool]) -> None:
    """Removes the temporary files in ``directory`` that killed writes of a file ``name`` with
    ``owned(name)`` left behind; the caller makes sure that no running process writes them."""
    for tmp in sorted(directory.glob(".*.tmp")):
        if owned(tmp.name[1:-len(".tmp")]):
            if tmp.is_dir():  # a folder written as a whole (a sharded checkpoint's)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            log.warning("removed %s, left by a write that was killed", tmp)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any], before_rename: Callable[[], None] | None = None) -> Path:
    """``write(f)`` fills a temporary file that then replaces ``path``; on any failure the
    temporary file is removed and ``path`` is left as it was. Missing parent folders are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
