"""Stopping training when the monitored validation metric no longer improves.

``trainer.early_stopping.patience`` validations in a row without an improvement of
``trainer.checkpoint.monitor`` by more than ``min_delta`` end the run after that epoch's
checkpoint, with exit status 0. The count travels in the checkpoint, so a resumed run stops
where the uninterrupted one would. Every rank must take the same decision: the Brain feeds
each one rank 0's value.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from framework.errors import UserError

log = logging.getLogger(__name__)


class EarlyStopping:
    def __init__(self, patience: int | None, min_delta: float = 0.0, mode: str = "min", monitor: str = "loss") -> None:
        self.patience, self.min_delta, self.mode, self.monitor = patience, min_delta, mode, monitor
        self.best: float | None = None
        self.without_improvement = 0  # validations since the best one
        self.stopped = False

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    def require_validation(self) -> None:
        """Refuses early stopping in a run that has nothing to watch."""
        if self.enabled:
            raise UserError(f"trainer.early_stopping.patience={self.patience}: the run has no validation set to "
                            "watch; give one (dataset.valid) or set trainer.early_stopping.patience=null")

    def update(self, value: float) -> bool:
        """Records one validation's ``valid_<monitor>``; True when training should stop now."""
        if not self.enabled or self.stopped:
            return self.stopped
        if self.best is None or self._improves(value):
            self.best, self.without_improvement = value, 0
            return False
        self.without_improvement += 1
        if self.without_improvement >= self.patience:
            self.stopped = True
            log.info("early stopping: valid_%s has not improved on its best, %.4g, by more than %g for %d "
                     "validations (trainer.early_stopping.patience=%d); stopping", self.monitor, self.best,
                     self.min_delta, self.without_improvement, self.patience)
        return self.stopped

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "without_improvement": self.without_improvement, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's count; one written without early stopping starts it afresh."""
        if state:
            self.best, self.without_improvement, self.stopped = (state["best"], state["without_improvement"],
                                                                 state["stopped"])
