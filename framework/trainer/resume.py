"""Resuming a run: which checkpoint ``trainer.resume`` names, and which settings a resumed
run may change.

A resume continues the same optimisation: the model, the optimizer's state, the schedule,
the random streams. Settings that would silently not be honoured are refused in one line
(:data:`FIXED`; the model's own settings are checked with the weights). Everything else may
change and is honoured from the resumed step on: ``trainer.max_epochs`` (the schedule is
re-planned, :mod:`framework.trainer.schedule`), checkpointing, logging, precision, workers,
threads, the device, augmentation, decoding; and, at an epoch boundary, the data, the
batching and the number of ranks (mid-epoch the sampler refuses a plan other than the saved
one). docs/launch.md has the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from framework.errors import UserError
from framework.trainer.checkpoint import Checkpointer, load_checkpoint

# what a resumed run cannot change: the checkpoint's optimizer state, schedule, random
# streams and weight average were made with these
FIXED = ("optimizer", "scheduler", "seed", "features.extractor", "features.normalize", "trainer.ema_decay")


def checkpoint_to_resume(target: str | None, checkpointer: Checkpointer,
                         device: torch.device) -> tuple[Path, dict[str, Any]] | None:
    """``trainer.resume``: null (start fresh), ``auto`` (the newest usable checkpoint of this
    run dir, if any) or a checkpoint path (which must load)."""
    if not target:
        return None
    if target == "auto":
        return checkpointer.load_latest(device)
    return Path(target), load_checkpoint(target, device)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


class RunSettings:
    """The run's settings as a checkpoint part: saved with every checkpoint, compared with
    the resuming run's on load."""

    def __init__(self, cfg: DictConfig) -> None:
        try:
            container = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # an interpolation that resolves only in a Hydra run (${hydra:...})
            container = OmegaConf.to_container(cfg, resolve=False)
        self.current = {k: v for k, v in flatten(container).items() if k.startswith(FIXED)}

    def state_dict(self) -> dict[str, Any]:
        return self.current

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        keys = sorted(set(saved) | set(self.current))
        changed = [f"{k}={self.current.get(k)!r} (was {saved.get(k)!r})" for k in keys
                   if saved.get(k) != self.current.get(k)]
        if changed:
            raise UserError(
                f"trainer.resume: the run was trained with other settings: {'; '.join(changed)}. A resumed run "
                "continues the same optimisation; resume with the run's settings, or start a new run from its "
                "weights with trainer.init_from=<its run dir or checkpoint>")
