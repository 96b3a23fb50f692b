"""Where a run reports as it goes: the log file and the progress bar (trackers: :mod:`framework.trainer.loggers`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm


def setup_file_logging(run_dir: Path, rank: int, world_size: int, name: str = "train") -> Path:
    """``<name>.log`` for rank 0, ``<name>-rank<r>.log`` for the others (debugging DDP)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / (f"{name}.log" if rank == 0 else f"{name}-rank{rank}.log")
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        handler = logging.FileHandler(path)
        prefix = f"[rank {rank}] " if world_size > 1 else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
        root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        root.addHandler(console)
    return path


def format_metrics(metrics: dict[str, float]) -> str:
    """``name=value`` pairs, 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def progress(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on a terminal; silent under pipes, CI and on ranks other than 0."""
    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, leave=False)
