"""Writing a file so that a crash never leaves half of it: a temporary name in the same
folder, then a rename (atomic on POSIX file systems). Checkpoints add an fsync and a
checksum on top (:mod:`framework.trainer.checkpoint`)."""

from __future__ import annotations

from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
