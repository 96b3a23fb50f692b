"""The optimizer and the learning-rate schedule of a run, built from ``cfg.optimizer`` and
``cfg.scheduler`` (the schedule planned over the run's optimizer steps), and the optimizers
that need more than a ``_target_``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from framework.errors import UserError


def build_optimizer(node: DictConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return instantiate(node, params=list(params))


def build_scheduler(node: DictConfig | None, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    max_epochs: int) -> Any:
    """``node``'s scheduler over ``steps_per_epoch x max_epochs`` optimizer steps (None for
    ``scheduler=constant``). Settings the schedule cannot run with are one line."""
    if not node:
        return None
    total = max(1, steps_per_epoch * max_epochs)
    try:
        return instantiate(node, optimizer=optimizer, total_steps=total)
    except InstantiationException as exc:
        # OneCycleLR refuses settings with a ValueError, and divides by zero when its warm-up
        # (pct_start x total steps) is exactly one step
        if not isinstance(exc.__cause__, (ZeroDivisionError, ValueError)):
            raise
        raise UserError(
            f"scheduler {node.get('_target_')} over {total} optimizer steps ({steps_per_epoch} per epoch x "
            f"trainer.max_epochs={max_epochs}): {type(exc.__cause__).__name__}: {exc.__cause__}; change the "
            "scheduler's settings (scheduler.pct_start, ...; or scheduler=constant) or train for more steps"
        ) from exc


def adamw8bit(params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas=(0.9, 0.999), weight_decay: float = 0.01,
              eps: float = 1e-8) -> torch.optim.Optimizer:
    """8-bit AdamW from bitsandbytes (``pip install 'framework[bnb]'``); CUDA only."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError(
            "optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes (GPU machines only), "
            "or use optimizer=adamw"
        ) from None
    params = list(params)
    if not params or params[0].device.type != "cuda":
        raise ValueError("optimizer=adamw8bit runs on CUDA only; this model is on the CPU: use optimizer=adamw")
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


class ScheduleState:
    """The scheduler as a checkpoint part. A resumed run whose length changed (more epochs,
    another world size or batching at an epoch boundary) re-plans a schedule that can
    (:meth:`framework.trainer.schedule.OneCycle.plan_run`); one that cannot is refused."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        planned = getattr(self.scheduler, "run_steps", None) or self.scheduler.state_dict().get("total_steps")
        saved = state.get("run_steps", state.get("total_steps"))
        if saved != planned and not hasattr(self.scheduler, "plan_run"):
            raise UserError(f"the run being resumed was planned over {saved} optimizer steps and now takes "
                            f"{planned}; {type(self.scheduler).__name__} cannot follow that: resume with the "
                            "trainer.max_epochs, batching and number of ranks it had (or scheduler=onecycle)")
        self.scheduler.load_state_dict(state)
