"""What a tracker is: the events every one of them receives, and what they share.

A tracker (``loggers.<name>`` in the config, a ``_target_`` node) is built with the keyword
arguments ``run_dir`` (the run directory), ``name`` (the run's name: its folder's) and
``group`` (the sweep directory's name for the jobs of a sweep, else None), plus its node's
own settings. Subclass :class:`Tracker` and override the events your tracker records.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from framework.errors import UserError
from framework.files import write_text_atomic

IDS_FILE = "trackers.json"  # in the run directory: each tracker's run id, for resumed runs and evaluation
_ids_lock = threading.Lock()  # trackers save their ids from their own threads


class Tracker:
    """Every event a tracker receives; each does nothing unless overridden."""

    def __init__(self, run_dir: str | Path, name: str | None = None, group: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.group = group

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Training scalars every ``logger.log_every_n_steps`` steps (``train/...``), each epoch's
        figures (``epoch/...``) and test metrics (``test_...``), at the optimizer step."""

    def text(self, tag: str, text: str, step: int) -> None:
        """Text such as decoded examples."""

    def hyperparams(self, params: dict[str, Any]) -> None:
        """The resolved config, flattened to dotted keys, when training starts (also on resume)."""

    def artifact(self, path: Path) -> None:
        """A file of the result (config.yaml, metrics.json, transcripts, plots, a sweep's summary)."""

    def finish(self, metrics: dict[str, float], best_checkpoint: Path | None) -> None:
        """The run ended as planned: its final metrics (``final/<name>``) and the best checkpoint's path."""

    def flush(self) -> None:
        """Makes what was recorded so far readable."""

    def close(self, error: BaseException | None = None) -> str | None:
        """Ends the tracked run (stopped or failed when ``error`` is given); returns a line
        saying what could not be recorded, if anything."""
        return None


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"trainer.max_epochs": 12, ...}``; lists stay whole values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def sweep_group() -> str | None:
    """The sweep directory's name when this process runs a job of ``-m`` (a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir).name if hydra.mode == RunMode.MULTIRUN else None


def saved_run_id(run_dir: Path, tracker: str) -> dict[str, Any] | None:
    """What ``tracker`` saved about its run in this run directory (a resumed run, an evaluation
    of it, continue the same tracked run)."""
    path = run_dir / IDS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(tracker)


def save_run_id(run_dir: Path, tracker: str, ids: dict[str, Any]) -> None:
    path = run_dir / IDS_FILE
    with _ids_lock:
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved[tracker] = ids
        write_text_atomic(path, json.dumps(saved, indent=1))


class MissingExtra(UserError):
    """A tracker whose optional package is not installed."""

    def __init__(self, package: str, extra: str, node: str) -> None:
        super().__init__(f"{node} needs the {package} package: pip install -e .[{extra}] (or choose another "
                         "logger, e.g. logger=tensorboard)")
