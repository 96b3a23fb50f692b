"""Freezing modules while fine-tuning (``trainer.freeze``, ``trainer.unfreeze_at``).

Frozen modules (name patterns, fnmatch, e.g. ``encoder.conv*``) get no gradient and no
optimizer state (the memory of a frozen encoder is saved), and their batch-norm layers keep
their running statistics (they stay in evaluation mode while the rest trains), so a frozen
parameter is exactly unchanged. With ``unfreeze_at=N`` they join training at optimizer step N
(gradual unfreezing): a parameter group of their own, with the learning rate and schedule of
the others.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from framework.errors import UserError

log = logging.getLogger(__name__)
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # a group's learning rate and the schedule's per-group rates


class Freezer:
    def __init__(self, module: nn.Module, patterns: list[str], unfreeze_at: int | None = None,
                 on_unfreeze: Callable[[], None] | None = None) -> None:
        self.optimizer: torch.optim.Optimizer | None = None  # set once built: unfreezing adds a group to it
        self.on_unfreeze = on_unfreeze
        names = [name for name, _ in module.named_modules() if name]
        self.modules: list[nn.Module] = []
        for pattern in patterns:
            matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise UserError(f"trainer.freeze: {pattern!r} matches no module of {type(module).__name__} (its "
                                f"modules: {', '.join(n for n in names if '.' not in n)})")
            self.modules += [module.get_submodule(name) for name in matched]
        self.params = list({id(p): p for m in self.modules for p in m.parameters()}.values())
        self.unfreeze_at = unfreeze_at
        self.frozen = bool(self.params)
        for p in self.params:
            p.requires_grad_(False)
        if self.frozen:
            log.info("frozen: %s (%.2f M parameters)%s", ", ".join(patterns), sum(p.numel() for p in self.params) / 1e6,
                     f" until step {unfreeze_at}" if unfreeze_at else "")

    def hold_statistics(self) -> None:
        """Frozen modules' batch-norm layers in evaluation mode (after ``model.train()``)."""
        if self.frozen:
            for m in self.modules:
                for layer in m.modules():
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                        layer.eval()

    def due(self, step: int) -> bool:
        return self.frozen and self.unfreeze_at is not None and step >= self.unfreeze_at

    def unfreeze(self) -> None:
        """The frozen parameters join training: gradients again, and a parameter group with
        the settings (and the schedule's keys) of the optimizer's first group."""
        optimizer = self.optimizer
        for p in self.params:
            p.requires_grad_(True)
        first = optimizer.param_groups[0]
        scale = first.get("lr_scale", 1.0)  # the new group trains at the optimizer's own rate (scale 1)
        group = {k: (v / scale if k in LR_KEYS else v) for k, v in first.items() if k not in ("params", "name")}
        optimizer.add_param_group({**group, "lr_scale": 1.0, "params": self.params, "name": "unfrozen"})
        self.frozen = False
        if self.on_unfreeze is not None:
            self.on_unfreeze()
        log.info("unfrozen: %.2f M parameters join training", sum(p.numel() for p in self.params) / 1e6)

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen": bool(self.params) and not self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("unfrozen") and self.frozen:
            self.unfreeze()  # before the optimizer's state is loaded: it holds the added group
