"""Atomic checkpoints: keep the last K and the best M, fall back past a damaged one.

Files are written under a temporary name, fsynced and renamed, so a crash mid-write
never leaves a file that looks complete. Loading uses ``torch.load(weights_only=True)``:
no arbitrary object is ever unpickled. An ``index.json`` beside the files records each
checkpoint's step, epoch and metrics for choosing the best one.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Writes ``ckpt-<step>.pt`` files into ``directory``.

    ``keep_last``: newest files kept; ``keep_best``: files with the best ``monitor``
    value (``mode`` min or max) kept as well.
    """

    def __init__(self, directory: str | Path, keep_last: int = 2, keep_best: int = 1, monitor: str = "loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"trainer.checkpoint.mode must be min or max, got {mode!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.monitor = monitor
        self.mode = mode

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def index(self) -> list[dict[str, Any]]:
        if not self.index_path.is_file():
            return []
        try:
            entries = json.loads(self.index_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is damaged; rebuilding it from the checkpoint files", self.index_path)
            return [{"file": p.name, "step": int(p.stem.split("-")[1]), "metrics": {}} for p in self._files()]
        return [e for e in entries if (self.directory / e["file"]).is_file()]

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("ckpt-*.pt"))

    def save(self, state: dict[str, Any], step: int, metrics: dict[str, float] | None = None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"ckpt-{step:09d}.pt"
        _write_atomic(path, lambda f: torch.save(state, f))
        entries = [e for e in self.index() if e["file"] != path.name]
        entries.append({"file": path.name, "step": step, "epoch": state.get("epoch"), "metrics": dict(metrics or {})})
        entries = self._prune(entries)
        _write_atomic(self.index_path, lambda f: f.write(json.dumps(entries, indent=1).encode()))
        return path

    def _ranked(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scored = [e for e in entries if self.monitor in e.get("metrics", {})]
        return sorted(scored, key=lambda e: e["metrics"][self.monitor], reverse=self.mode == "max")

    def _prune(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_step = sorted(entries, key=lambda e: e["step"])
        keep = {e["file"] for e in by_step[-self.keep_last :]} if self.keep_last else set()
        keep |= {e["file"] for e in self._ranked(entries)[: self.keep_best]}
        for e in entries:
            if e["file"] not in keep:
                (self.directory / e["file"]).unlink(missing_ok=True)
        return [e for e in by_step if e["file"] in keep]

    def best(self) -> Path | None:
        ranked = self._ranked(self.index())
        return self.directory / ranked[0]["file"] if ranked else None

    def latest(self) -> Path | None:
        files = self._files()
        return files[-1] if files else None

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads; damaged ones are reported and skipped."""
        for path in reversed(self._files()):
            try:
                return path, load_checkpoint(path, map_location)
            except CheckpointError as exc:
                log.warning("%s; trying the previous checkpoint", exc)
        return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, not a checkpoint at all
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}: {exc})") from exc
