"""Where a run reports as it goes: the log file and the progress bar (trackers: :mod:`framework.trainer.loggers`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm


def setup_file_logging(run_dir: Path, rank: int, world_size: int, name: str = "train") -> Path | None:
    """``<name>.log`` for rank 0, ``<name>-rank<r>.log`` for the others (debugging DDP). Where
    that file cannot be written (an archived, read-only run being evaluated) the log goes to
    stderr only, said in one warning; None then."""
    path = run_dir / (f"{name}.log" if rank == 0 else f"{name}-rank{rank}.log")
    root = logging.getLogger()
    refused = None
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path)
        except OSError as exc:
            refused = exc
        else:
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
    if refused is not None:
        logging.getLogger(__name__).warning("cannot write %s (%s): logging to stderr only", path,
                                            refused.strerror or refused)
        return None
    return path


def format_metrics(metrics: dict[str, float]) -> str:
    """``name=value`` pairs, 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def progress(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on a terminal; silent under pipes, CI and on ranks other than 0."""
    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, leave=False)
