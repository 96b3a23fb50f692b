"""What changes the weights, and one optimizer step.

:class:`Optimization` owns the model as training runs it (activation checkpointing, the
data-parallel wrapper, ``torch.compile``), the trainable parameters, the optimizer, the
learning-rate schedule, the weight average and the frozen modules, and registers each of
them but the schedule (registered by training, which plans it) as a checkpoint part. Its :meth:`Optimization.step` is one optimizer step over the
micro-batches of gradient accumulation: gradients synchronised across ranks on the last
micro-batch only, clipping, the step applied only when the loss and gradients are finite,
and after a step not applied the model exactly as before it (batch-norm statistics
included).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from framework.config.schema import TrainerConfig
from framework.data.collate import Batch
from framework.models import count_parameters, trainable_parameters
from framework.trainer.distributed import DistEnv
from framework.trainer.ema import WeightEMA
from framework.trainer.freeze import Freezer
from framework.trainer.fsdp import gradient_sync, is_sharded, unsharded
from framework.trainer.model_state import ModelState, OptimizerState
from framework.trainer.optim import build_optimizer, build_scheduler
from framework.trainer.precision import BufferSnapshot, Precision
from framework.trainer.state import ModelConfig, Progress, TrainState
from framework.trainer.strategy import checkpoint_activations, say_strategy, wrap_model
from framework.trainer.telemetry import Skips

log = logging.getLogger(__name__)
FitBatch = Callable[[Batch, float], torch.Tensor]  # forward and backward of one micro-batch -> its detached loss


class Optimization:
    """``trains=False`` (transcription, export): no optimizer. Building a torch optimizer
    imports ``torch._dynamo``, a second of such a command's start."""

    def __init__(self, module: nn.Module, cfg: DictConfig, options: TrainerConfig, dist: DistEnv,
                 precision: Precision, progress: Progress, skips: Skips, state: TrainState,
                 trains: bool = True) -> None:
        self.module, self.cfg, self.options, self.dist = module, cfg, options, dist
        self.precision, self.progress, self.skips, self.state = precision, progress, skips, state
        self.freezer = Freezer(module, list(options.freeze), options.unfreeze_at, self.wrap)
        log.info("model %s: %.2f M trainable parameters", type(module).__name__, count_parameters(module) / 1e6)
        checkpoint_activations(module, options)
        say_strategy(options, dist)
        self.wrap()
        self.optimizer = self.freezer.optimizer = build_optimizer(cfg.optimizer, module) if trains else None
        self.ema = WeightEMA(module, options.ema_decay) if options.ema_decay else None
        self.scheduler: Any = None  # planned once the steps per epoch are known
        self.buffers = BufferSnapshot(module)
        state.model_config = ModelConfig(cfg.model)
        state.add_recoverable("model", ModelState(module), weights=True)
        if self.ema is not None:
            state.add_recoverable("ema", self.ema, weights=True)
        state.add_recoverable("freeze", self.freezer)  # before the optimizer: unfreezing adds it a group
        if self.optimizer is not None:
            state.add_recoverable("optimizer", OptimizerState(module, self.optimizer))
        state.add_recoverable("scaler", precision)

    def wrap(self) -> None:
        """What runs forward, over the parameters that train now (again when frozen modules join)."""
        self.model, self.params = wrap_model(self.module, self.options, self.dist), trainable_parameters(self.module)

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """The weights evaluation uses: the weight average (``trainer.ema_decay``) swapped in
        for the duration, or the model's own."""
        if is_sharded(self.module):  # ranks may evaluate different numbers of batches: no collective inside
            return unsharded(self.module)
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def plan(self, steps_per_epoch: int, clock: Callable[[], float], budget_s: float | None) -> None:
        """The learning-rate schedule (``cfg.scheduler``) over ``steps_per_epoch`` x
        ``trainer.max_epochs`` steps, or over the time budget of ``budget_s`` seconds
        (``clock``: the seconds spent) for a schedule that follows ``trainer.max_time``."""
        self.scheduler = build_scheduler(self.cfg.get("scheduler"), self.optimizer, steps_per_epoch,
                                         self.options.max_epochs)
        if getattr(self.scheduler, "over", "steps") == "time":
            self.scheduler.clock = clock
            self.scheduler.plan_budget(budget_s)
        elif self.scheduler is not None and budget_s is not None:
            log.info("trainer.max_time=%s with the schedule over %d epochs' steps: a budget that ends first stops the "
                     "schedule before its end; scheduler.over=time plans it over the budget", self.options.max_time,
                     self.options.max_epochs)

    def step(self, window: list[Batch], weights: list[float], fit_batch: FitBatch,
             latest_checkpoint: Callable[[], Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One optimizer step over the micro-batches of ``window`` (loss weights ``weights``).
        Returns (the step's mean loss, the gradient norm before clipping); the loss is None
        when the step was not applied."""
        self.buffers.take()
        try:
            step_loss = self.accumulate(window, weights, fit_batch)
            finite, norm = self.precision.apply_step(self.optimizer, self.params, self.options.max_grad_norm,
                                                     step_loss)
        except torch.OutOfMemoryError:
            self.buffers.restore()
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self.buffers.restore()
            self.progress.nonfinite_steps += 1
            self.skips.nonfinite(self.progress.step, self.progress.nonfinite_steps, latest_checkpoint())
            return None, norm
        if self.scheduler is not None:
            self.scheduler.step()
        self.progress.step += 1
        if self.freezer.due(self.progress.step):
            self.freezer.unfreeze()
        if self.ema is not None:
            self.ema.update()
        return step_loss, norm

    def accumulate(self, window: list[Batch], weights: list[float], fit_batch: FitBatch) -> torch.Tensor:
        """Forward and backward over the micro-batches; with several ranks the gradients are
        synchronised on the last one only. Returns the step's loss, averaged over its examples."""
        total = sum(len(b) for b in window)
        step_loss = torch.zeros((), device=self.dist.device)
        for i, (batch, weight) in enumerate(zip(window, weights)):
            last = i == len(window) - 1
            with gradient_sync(self.model, last or not self.dist.enabled):
                loss = fit_batch(batch.to(self.dist.device, non_blocking=True), weight)
            step_loss += loss * (len(batch) / total)
        return step_loss
