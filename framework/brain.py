"""The Brain: the training loop and the hooks a recipe overrides.

A recipe subclasses :class:`Brain` and implements ``compute_forward`` and
``compute_objectives`` (and, for its metrics, ``on_stage_start`` / ``on_stage_end``).
Everything else (precision, accumulation, clipping, checkpoints, resume, DDP, logging)
lives in :mod:`framework.trainer` and is driven from here by the typed trainer options,
``self.options`` (:class:`framework.config.schema.TrainerConfig`).

One run, top to bottom::

    fit(train, valid)
      setup(train)           features' statistics and the model, optimizer, EMA
      resume()               from trainer.resume (mid-epoch included)
      for each epoch:
        train_epoch()        train_step(window) per optimizer step, then on_train_step_end(...)
        run_eval(valid)      on the averaged weights when trainer.ema_decay is set
        checkpoint, history
    evaluate(test)           with the best checkpoint; nothing is fitted on test data
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from framework.config.schema import TrainerConfig, trainer_options
from framework.data.batching import LengthBatchSampler
from framework.data.collate import Batch, SkippedExample, collate
from framework.data.mapped import MappedInputs
from framework.errors import UserError
from framework.files import write_text_atomic
from framework.models import count_parameters, trainable_parameters
from framework.trainer import distributed
from framework.trainer.accumulation import loss_weights, windows
from framework.trainer.activation_checkpointing import apply_activation_checkpointing
from framework.trainer.checkpoint import (
    AVERAGED,
    Checkpointer,
    CheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from framework.trainer.distributed import DistEnv
from framework.trainer.early_stopping import EarlyStopping
from framework.trainer.ema import WeightEMA
from framework.trainer.loggers import Loggers
from framework.trainer.logs import format_metrics, progress, setup_file_logging
from framework.trainer.meter import EpochMeter
from framework.trainer.precision import Precision
from framework.trainer.profiling import StepProfiler
from framework.trainer.stopping import StopRequested, StopSignals, ignore_stop_signals
from framework.trainer.threads import set_num_threads

log = logging.getLogger(__name__)


class Stage(Enum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class NonFiniteLossError(RuntimeError):
    pass


class MonitorError(UserError):
    pass


@dataclass
class Window:
    """The micro-batches of one optimizer step."""

    batches: list[Batch]  # usable ones (unreadable examples left out)
    fetched: int  # micro-batches taken from the loader, for the epoch position
    lengths_s: float  # sum of the examples' lengths, for throughput


class Brain:
    """Owns the model, optimizer and loop for one run directory.

    ``cfg`` is the composed run config (``cfg.trainer``, ``cfg.model``, ``cfg.optimizer``,
    ``cfg.scheduler``, ``cfg.batching``, ``cfg.features``, ``cfg.logger``). ``dist`` is the
    distributed environment (``framework.experiment.run`` passes it; initialised here otherwise).
    """

    #: Keyword arguments ``build_model`` passes to ``cfg.model`` itself; the config check
    #: does not ask the config for them.
    model_arguments: tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, log_name: str = "train",
                 dist: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.options: TrainerConfig = trainer_options(cfg.trainer)
        opts = self.options
        self.dist = dist if dist is not None else distributed.init_distributed(opts.device)
        self.device = self.dist.device
        self.run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        setup_file_logging(self.run_dir, self.dist.rank, self.dist.world_size, log_name)
        set_num_threads(opts.num_threads)
        self.precision = Precision(opts.precision, self.device, opts.eval_precision)
        self.features: nn.Module | None = None
        if cfg.get("features"):  # the run's augmentation goes inside the pipeline that applies it
            augmentation = instantiate(cfg.augment) if cfg.get("augment") else None
            self.features = instantiate(cfg.features, augmentation=augmentation).to(self.device)
        ck = opts.checkpoint
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", ck.keep_last, ck.keep_best, ck.monitor, ck.mode)
        self.logger = Loggers.from_config(cfg, self.run_dir, enabled=self.dist.is_main)
        self.early_stopping = EarlyStopping(opts.early_stopping.patience, opts.early_stopping.min_delta, ck.mode,
                                            ck.monitor)
        self.profiler = StepProfiler(opts.profile, self.run_dir / "profile", self.dist.rank)
        self.model: nn.Module | None = None  # what runs forward: DDP- and compile-wrapped
        self.module: nn.Module | None = None  # the plain model, for state dicts
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.ema: WeightEMA | None = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # micro-batches of the current epoch consumed
        self.meter: EpochMeter | None = None  # the current epoch's bookkeeping
        self.history: list[dict[str, float]] = []  # one entry per finished epoch
        self.elapsed_s = 0.0  # wall time of training and validation before this process
        self.nonfinite_steps = 0
        self.oom_skipped = 0
        self.skipped_examples: list[SkippedExample] = []
        self.stop = StopSignals()
        self.sanity_checking = False  # True while one batch is validated before training (check_monitor)
        self._stopping = False  # a stop signal reached some rank; every rank stops at the same step
        self._saved_at: tuple[int, int, int] | None = None  # (epoch, step, batch) of the newest checkpoint
        self._train_sampler: LengthBatchSampler | None = None
        self._fit_started = time.perf_counter()
        self._interval = (torch.zeros((), device=self.device), 0, 0, time.perf_counter())  # loss, steps, examples, t

    # ----------------------------------------------------------------- hooks to override
    def build_model(self, train_set) -> nn.Module:
        """The model; the default instantiates ``cfg.model``. ``train_set`` is the training
        data in ``fit`` and None in evaluation and inference: anything learnt from data must
        then come from the run directory."""
        return instantiate(self.cfg.model)

    def compute_forward(self, batch: Batch, stage: Stage) -> Any:
        raise NotImplementedError("a recipe's Brain implements compute_forward(batch, stage)")

    def compute_objectives(self, outputs: Any, batch: Batch, stage: Stage) -> torch.Tensor:
        """The loss, a mean over the batch's examples."""
        raise NotImplementedError("a recipe's Brain implements compute_objectives(outputs, batch, stage)")

    def on_fit_start(self) -> None:
        pass

    def on_fit_end(self) -> None:
        pass

    def on_stage_start(self, stage: Stage, epoch: int) -> None:
        pass

    def on_stage_end(self, stage: Stage, loss: float, epoch: int) -> dict[str, float]:
        """Metrics of the stage (``loss`` is already averaged over all ranks)."""
        return {"loss": loss}

    def on_train_step_end(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """After every applied optimizer step. ``loss`` (the step's mean loss) and
        ``grad_norm`` (before clipping; None when clipping is off) are device tensors:
        reading them (``.item()``) waits for the device."""

    def fit_batch(self, batch: Batch, weight: float = 1.0) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns the detached loss."""
        with self.precision.autocast(training=True):
            outputs = self.compute_forward(batch, Stage.TRAIN)
            loss = self.compute_objectives(outputs, batch, Stage.TRAIN)
        self.precision.backward(loss * weight)
        return loss.detach()

    @torch.no_grad()
    def evaluate_batch(self, batch: Batch, stage: Stage) -> torch.Tensor:
        with self.precision.autocast(training=False):
            outputs = self.compute_forward(batch, stage)
            loss = self.compute_objectives(outputs, batch, stage)
        return loss.detach()

    # ------------------------------------------------------------------------- set-up
    def make_dataloader(self, dataset, stage: Stage) -> DataLoader:
        """A DataLoader whose batches come from ``cfg.batching`` over ``dataset.lengths``.
        Evaluation stages keep the data order and shard without duplicates."""
        train = stage == Stage.TRAIN
        lengths = dataset.lengths
        if self.features is not None:
            if self.features.where == "worker":
                # a CPU copy of the pipeline runs in the workers; the batch arrives as features
                pipeline = copy.deepcopy(self.features).cpu()
                dataset = MappedInputs(dataset, functools.partial(pipeline.per_example, augment=train))
            if train and self.features.augmentation is not None:
                lengths = lengths * self.features.augmentation.length_factor  # speed perturbation lengthens
        eval_overrides = {} if train else {"shuffle": False, "drop_last": False}
        sampler: LengthBatchSampler = instantiate(self.cfg.batching, lengths=lengths, seed=self.cfg.seed,
                                                  even=train, **eval_overrides)
        workers = self.options.num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
            # a private generator keeps the global RNG untouched, which exact resume needs
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def setup(self, train_set=None) -> None:
        """Builds the model, optimizer and weight average once. In ``fit`` (``train_set``
        given) what the run learns from its data before training (feature statistics, a
        recipe's alphabet) is fitted and saved in the run directory; otherwise it is loaded
        from there. The scheduler is built by ``fit``, which also resumes."""
        if self.model is not None:
            return
        if self.features is not None:
            self.prepare_features(train_set)
        opts = self.options
        if opts.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model = self.build_model(train_set).to(self.device)
        params = trainable_parameters(model)
        log.info("model %s: %.2f M trainable parameters", type(model).__name__, count_parameters(model) / 1e6)
        if opts.activation_checkpointing:
            wrapped = apply_activation_checkpointing(model, list(opts.activation_checkpointing))
            log.info("activation checkpointing: %s", ", ".join(wrapped))
        self.module = model
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model = torch.compile(model) if opts.compile else model
        self.params = params
        self.optimizer = instantiate(self.cfg.optimizer, params=params)
        self.ema = WeightEMA(self.module, opts.ema_decay) if opts.ema_decay else None
        self._buffers = list(self.module.buffers())
        self._buffer_copy = [b.clone() for b in self._buffers]

    def prepare_features(self, train_set) -> None:
        """Global normalisation statistics: fitted once on the training set by rank 0 and
        saved in the run directory; read from there by every rank, by resumed runs and by
        evaluation (which never fits them on its own data)."""
        path = self.run_dir / "feature_stats.pt"
        if train_set is not None and self.dist.is_main and not path.is_file():
            self.features.fit_stats(train_set, path)
        distributed.barrier()
        self.features.load_stats(path)

    def _make_scheduler(self, steps_per_epoch: int) -> None:
        if not self.cfg.get("scheduler") or self.scheduler is not None:
            return
        total = max(1, steps_per_epoch * self.options.max_epochs)
        try:
            self.scheduler = instantiate(self.cfg.scheduler, optimizer=self.optimizer, total_steps=total)
        except InstantiationException as exc:
            # OneCycleLR refuses settings with a ValueError, and divides by zero when its warm-up
            # (pct_start x total steps) is exactly one step
            if not isinstance(exc.__cause__, (ZeroDivisionError, ValueError)):
                raise
            raise UserError(
                f"scheduler {self.cfg.scheduler.get('_target_')} over {total} optimizer steps "
                f"({steps_per_epoch} per epoch x trainer.max_epochs={self.options.max_epochs}): "
                f"{type(exc.__cause__).__name__}: {exc.__cause__}; change the scheduler's settings "
                "(scheduler.pct_start, ...; or scheduler=constant) or train for more steps"
            ) from exc

    def _limited(self, n: int, limit: int | None = None) -> int:
        """``n`` batches, or fewer under ``limit`` (default ``trainer.limit_batches``)."""
        limit = limit or self.options.limit_batches
        return min(n, limit or n)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        sampler_state = self._train_sampler.state_dict(consumed=self.batch_in_epoch) if self._train_sampler else None
        mid_epoch = self.meter is not None and self.batch_in_epoch > 0
        return {
            "model": self.module.state_dict(),
            "features": self.features.state_dict() if self.features is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.precision.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "sampler": sampler_state,
            "meter": self.meter.state_dict() if mid_epoch else None,
            "history": self.history,
            "elapsed_s": self.elapsed(),
            "nonfinite_steps": self.nonfinite_steps,
            "early_stopping": self.early_stopping.state_dict(),
            "rng": rng_state(),
            "model_config": OmegaConf.to_container(self.cfg.model, resolve=True),
        }

    def save_checkpoint(self, metrics: dict[str, float] | None = None) -> None:
        if self.dist.is_main:
            path = self.checkpointer.save(self.state_dict(), self.step, metrics)
            log.info("checkpoint %s (epoch %d, step %d)", path.name, self.epoch, self.step)
        self._saved_at = (self.epoch, self.step, self.batch_in_epoch)
        distributed.barrier()

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        self._load_model_state(state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            saved_sched = dict(state["scheduler"])
            planned = self.scheduler.state_dict().get("total_steps")
            if planned is not None and saved_sched.get("total_steps") != planned:
                # trainer.max_epochs changed on resume: keep the position, plan to the new end
                log.info("scheduler: total steps %s -> %s", saved_sched.get("total_steps"), planned)
                saved_sched["total_steps"] = planned
            self.scheduler.load_state_dict(saved_sched)
        self.precision.load_state_dict(state.get("scaler", {}))
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.history = list(state.get("history", []))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.early_stopping.load_state_dict(state.get("early_stopping"))
        if state.get("meter") is not None:
            self.meter = EpochMeter(self.device)
            self.meter.load_state_dict(state["meter"])
        if state.get("sampler") and self._train_sampler is not None and self.batch_in_epoch:
            self._train_sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        log.info("resumed from %s: epoch %d, step %d, batch %d of the epoch", path, self.epoch, self.step,
                 self.batch_in_epoch)

    def _load_model_state(self, state: dict[str, Any], path: Path) -> None:
        """What training and evaluation both restore: the weights (after checking they were
        written for this model config), the feature statistics and the weight average."""
        saved = state.get("model_config")
        current = OmegaConf.to_container(self.cfg.model, resolve=True)
        # a key that one side lacks and the other leaves null is an option added since, left off: no difference
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)) if saved is not None else []
        if diff:
            raise CheckpointError(
                f"checkpoint {path} was written for another model config (differs in: {', '.join(diff)}); "
                "resume with the same model settings or start a new run"
            )
        self.module.load_state_dict(state["model"])
        if self.features is not None and state.get("features"):
            self.features.load_state_dict(state["features"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])

    def resume(self) -> None:
        """``trainer.resume``: null (start fresh), ``auto`` (latest in this run dir, if any)
        or a checkpoint path (must exist)."""
        target = self.options.resume
        if not target:
            return
        if target == "auto":
            found = self.checkpointer.load_latest(self.device)
            if found is None:
                return
            path, state = found
        else:
            path = Path(target)
            state = load_checkpoint(path, self.device)
        self.load_state_dict(state, path)

    def load_weights(self, which: str) -> Path:
        """Model, feature statistics and weight average from the ``best`` checkpoint (by
        ``trainer.checkpoint.monitor``; the newest, with a warning, when none is scored),
        the ``latest`` one, the ``averaged`` one (``framework.average``) or a path. Raises
        when there is none: untrained weights are never evaluated."""
        if which == "averaged":
            which = str(self.checkpointer.directory / AVERAGED)
        if which == "best":
            path, state = self.checkpointer.load_for_evaluation(self.device)
        elif which == "latest":
            found = self.checkpointer.load_latest(self.device)
            if found is None:
                raise CheckpointError(f"no usable checkpoint in {self.checkpointer.directory}: nothing trained to use")
            path, state = found
        else:
            path = Path(which)
            state = load_checkpoint(path, self.device)
        self._load_model_state(state, path)
        self.step = state.get("step", self.step)
        log.info("weights from %s (step %s%s)", path, state.get("step"), ", averaged" if self.ema else "")
        return path

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """The weights evaluation uses: the weight average (``trainer.ema_decay``) swapped in
        for the duration, or the model's own."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def elapsed(self) -> float:
        """Wall time of training and validation in this run, over all its processes."""
        return self.elapsed_s + time.perf_counter() - self._fit_started

    # -------------------------------------------------------------------------- loops
    def fit(self, train_set, valid_set=None) -> dict[str, float]:
        """Trains for ``trainer.max_epochs`` epochs; returns the last epoch's training and
        validation metrics. On SIGTERM / SIGINT: checkpoint at the current step, then
        :class:`StopRequested`."""
        self.setup(train_set)
        train_loader = train_set if isinstance(train_set, DataLoader) else self.make_dataloader(train_set, Stage.TRAIN)
        self._train_sampler = train_loader.batch_sampler
        valid_loader = None
        if valid_set is not None:
            valid_loader = valid_set if isinstance(valid_set, DataLoader) else self.make_dataloader(valid_set, Stage.VALID)
        self._make_scheduler(math.ceil(self._limited(len(self._train_sampler)) / self.options.grad_accumulation))
        self.resume()
        if self.dist.is_main:  # what evaluation and transcription rebuild the run from; after a refused
            # resume the run's config stays the one its checkpoints were written with
            write_text_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
            self.logger.hyperparams(self.cfg)
        if valid_loader is not None:
            self.check_monitor(valid_loader)
        else:
            self.early_stopping.require_validation()
        self._fit_started = time.perf_counter()
        self.on_fit_start()
        with self.stop, self.profiler:
            for epoch in range(self.epoch, self.options.max_epochs):
                if self.early_stopping.stopped:
                    break
                self.run_epoch(train_loader, valid_loader, epoch)
        self.on_fit_end()
        self.logger.flush()
        last = self.history[-1] if self.history else {}
        return {k: v for k, v in last.items() if k == "train_loss" or k.startswith("valid_")}

    def run_epoch(self, train_loader, valid_loader, epoch: int) -> None:
        """Train, validate, record and checkpoint one epoch."""
        self._train_sampler.set_epoch(epoch)
        train_loss = self.train_epoch(train_loader, epoch)
        if self._stopping:
            self._stop_now("in epoch %d at step %d" % (epoch + 1, self.step))
        metrics = {"train_loss": train_loss}
        if valid_loader is not None:  # a stop signal now lets validation finish first
            metrics.update(self.run_eval(valid_loader, Stage.VALID, epoch))
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        entry = {"epoch": self.epoch, "step": self.step, "elapsed_s": self.elapsed(),
                 "train_s": sum(h["epoch_s"] for h in self.history) + self.meter.busy_s, **metrics,
                 **self.meter.summary()}
        self.history.append(entry)
        self.meter = None
        self.logger.scalars({f"epoch/{k}": v for k, v in entry.items() if k not in ("epoch", "step")}, self.step)
        log.info("epoch %d/%d: %d steps in %.1f s (%.0f examples/s, %.0f audio s/s, data wait %.0f%%), padding "
                 "%.1f%%, batch size %.1f; %s", self.epoch, self.options.max_epochs, entry["steps"], entry["epoch_s"],
                 entry["examples_per_s"], entry["audio_s_per_s"], 100 * entry["data_wait_fraction"],
                 100 * entry["padding_fraction"], entry["mean_batch_size"], format_metrics(metrics))
        if valid_loader is not None and self.early_stopping.enabled:  # rank 0's value: one decision on every rank
            self.early_stopping.update(distributed.broadcast_object(metrics[f"valid_{self.early_stopping.monitor}"]))
        stop = self._stop_agreed()
        if self.options.checkpoint.every_epoch or stop:
            self.save_checkpoint({k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")})
        if stop:
            self._stop_now("after epoch %d" % self.epoch)

    def _stop_agreed(self) -> bool:
        """Whether any rank received a stop signal (one collective under DDP)."""
        if not self.dist.enabled:
            return self.stop.requested
        flag = torch.tensor([int(self.stop.requested)], device=self.device)
        return bool(distributed.all_reduce_sum(flag).item())

    def _stop_now(self, where: str) -> None:
        """Saves the position (mid-epoch included) unless the newest checkpoint holds it, and
        stops the run."""
        if self._saved_at != (self.epoch, self.step, self.batch_in_epoch):
            self.save_checkpoint()
        self.logger.flush()
        signum = self.stop.received or 15  # another rank got the signal
        raise StopRequested(signum, f"stopped by a signal {where}; the checkpoint in {self.checkpointer.directory} "
                                    "continues it: rerun with trainer.resume=auto and the same hydra.run.dir")

    def check_monitor(self, valid_loader) -> None:
        """Validates one batch before training (a failing validation is found now, not after
        an epoch) and checks that it reports the metric that picks the best checkpoint."""
        rng = rng_state()  # the check must not change what training draws
        self.sanity_checking = True
        try:
            metrics = self.run_eval(valid_loader, Stage.VALID, self.epoch, limit=1, record=False)
        finally:
            self.sanity_checking = False
        set_rng_state(rng)
        monitor = self.options.checkpoint.monitor
        if f"valid_{monitor}" not in metrics:
            produced = ", ".join(k.removeprefix("valid_") for k in metrics)
            raise MonitorError(f"trainer.checkpoint.monitor={monitor}: validation reports no such metric; it reports "
                               f"{produced}")

    def train_epoch(self, loader: Iterable[Batch], epoch: int) -> float:
        """Trains from the current position of the epoch; returns its mean training loss."""
        self._set_mode(training=True)
        self.on_stage_start(Stage.TRAIN, epoch)
        self.meter = self.meter or EpochMeter(self.device)
        self.meter.start()
        bar = progress(self._limited(len(loader)) - self.batch_in_epoch, f"epoch {epoch + 1}", self.dist.is_main)
        for window in self._windows(loader):
            weights = self._plan_step(window)
            if weights is None:  # a stop signal: this window is left for the resumed run
                break
            self.batch_in_epoch += window.fetched
            bar.update(window.fetched)
            if not window.batches:
                continue
            try:
                loss, norm = self.train_step(window.batches, weights)
            except torch.OutOfMemoryError:
                if not self.options.skip_oom or self.dist.enabled:
                    raise
                self._skip_oom(window.batches)
                continue
            self.profiler.step()
            self.meter.add_step([len(b) for b in window.batches], *_padding(window.batches), window.lengths_s, loss)
            if loss is not None:
                self.on_train_step_end(self.step, loss, norm)
                self._log_step(loss, norm, sum(len(b) for b in window.batches), bar)
                if self.options.checkpoint.every_n_steps and self.step % self.options.checkpoint.every_n_steps == 0:
                    self.save_checkpoint()
        bar.close()
        self.meter.pause()
        self._report_skips()
        loss = self.meter.mean_loss()
        self.on_stage_end(Stage.TRAIN, loss, epoch)
        return loss

    def train_pass(self, loader: Iterable[Batch], epoch: int = 0) -> float:
        """One whole training pass over ``loader`` from its first batch, measured on its own:
        for probes and benchmarks that train outside :meth:`fit`. Returns the mean loss; the
        pass's figures stay in ``self.meter`` until the next pass (not for a Brain that then fits)."""
        self.batch_in_epoch, self.meter = 0, None
        try:
            return self.train_epoch(loader, epoch)
        finally:
            self.batch_in_epoch = 0

    def _windows(self, loader: Iterable[Batch]) -> Iterator[Window]:
        """The epoch's remaining micro-batches in optimizer-step groups, timing the waits."""
        limit = self.options.limit_batches
        batches = itertools.islice(loader, max(0, limit - self.batch_in_epoch)) if limit else loader
        sampler = getattr(loader, "batch_sampler", None)
        lengths = getattr(getattr(loader, "dataset", None), "lengths", None)
        plan = sampler.rank_batches()[self.batch_in_epoch:] if isinstance(sampler, LengthBatchSampler) else None
        position = 0
        for raw in windows(self._timed(batches), self.options.grad_accumulation):
            seconds = 0.0
            if plan is not None and lengths is not None:
                seconds = float(sum(lengths[plan[position + i]].sum() for i in range(len(raw))))
            position += len(raw)
            yield Window([b for b in raw if self._usable(b)], len(raw), seconds)

    def _timed(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.meter.waited(time.perf_counter() - t0)
            yield batch

    def _plan_step(self, window: Window) -> list[float] | None:
        """The micro-batch loss weights of the step, or None to stop here. Under DDP one
        all-reduce gives every rank the step's example count and whether any rank received
        a stop signal, so all stop at the same step."""
        sizes = [len(b) for b in window.batches]
        if not self.dist.enabled:
            if self.stop.requested:
                self._stopping = True
                return None
            return loss_weights(sizes)
        flags = torch.tensor([sum(sizes), int(self.stop.requested)], device=self.device)
        total, stops = (int(x) for x in distributed.all_reduce_sum(flags).tolist())
        if stops:
            self._stopping = True
            return None
        if not window.batches and total:  # DDP cannot skip a step on one rank: the others would wait for it
            first = self.skipped_examples[-1].id if self.skipped_examples else "?"
            raise RuntimeError(
                f"rank {self.dist.rank}: every example of a step was unreadable (skip_bad) while other ranks had "
                f"data; first: {first}. Clean the manifest (python -m framework.prepare manifest ... --skip-bad) "
                "before a distributed run"
            )
        if total == 0:
            window.batches.clear()
            return []
        return loss_weights(sizes, total, self.dist.world_size)

    def train_step(self, window: list[Batch], weights: list[float]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One optimizer step over the micro-batches of ``window``: forward and backward of
        each, clipping, the step, the weight average. Returns (the step's mean loss, the
        gradient norm); the loss is None when the step was not applied (non-finite), and the
        model is then exactly as before it, batch-norm statistics included."""
        self._keep_buffers()
        try:
            step_loss = self.accumulate(window, weights)
            applied, norm = self.optimizer_step(step_loss)
        except torch.OutOfMemoryError:
            self._keep_buffers(restore=True)
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        if not applied:
            self._keep_buffers(restore=True)
            return None, norm
        if self.ema is not None:
            self.ema.update()
        return step_loss, norm

    def accumulate(self, window: list[Batch], weights: list[float]) -> torch.Tensor:
        """Forward and backward over the micro-batches of one optimizer step. Under DDP the
        gradients are synchronised on the last micro-batch only (``no_sync`` before it).
        Returns the step's loss, averaged over its examples."""
        total = sum(len(b) for b in window)
        step_loss = torch.zeros((), device=self.device)
        for i, (batch, weight) in enumerate(zip(window, weights)):
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.model.no_sync()
            with sync:
                loss = self.fit_batch(batch.to(self.device, non_blocking=True), weight)
            step_loss += loss * (len(batch) / total)
        return step_loss

    def optimizer_step(self, step_loss: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        """Clips, then applies the step unless the loss or gradients are not finite (then
        counts it against ``trainer.nonfinite_patience``). Returns (applied, grad norm)."""
        norm = self.precision.clip(self.optimizer, self.params, self.options.max_grad_norm)
        if self.precision.scaler is not None:
            # fp16: GradScaler skips steps with inf/nan gradients itself and lowers its
            # scale; only a non-finite loss is a fault
            self.precision.step(self.optimizer)
            finite = bool(torch.isfinite(step_loss))
        else:
            ok = torch.isfinite(step_loss) if norm is None else torch.isfinite(norm) & torch.isfinite(step_loss)
            finite = bool(ok)  # the one host sync per step: a non-finite step must not be applied
            if finite:
                self.precision.step(self.optimizer)
        if finite:
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
        else:
            self._nonfinite_step()
        return finite, norm

    def _keep_buffers(self, restore: bool = False) -> None:
        """Copies the model's buffers (batch-norm statistics) aside before a step, or back
        after a step that is not applied."""
        if self._buffers:
            if restore:
                torch._foreach_copy_(self._buffers, self._buffer_copy)
            else:
                torch._foreach_copy_(self._buffer_copy, self._buffers)

    def _log_step(self, loss: torch.Tensor, norm: torch.Tensor | None, examples: int, bar) -> None:
        total, steps, seen, since = self._interval
        total, steps, seen = total + loss, steps + 1, seen + examples
        if self.step % self.logger.log_every_n_steps == 0:
            now = time.perf_counter()
            value = (total / steps).item()
            rate = seen / max(now - since, 1e-9)
            values = {"train/loss": value, "train/lr": self.optimizer.param_groups[0]["lr"],
                      "train/examples_per_s": rate}
            if norm is not None:
                values["train/grad_norm"] = float(norm)
            self.logger.scalars(values, self.step)
            bar.set_postfix(loss=f"{value:.3f}", ex_s=f"{rate:.0f}")
            total, steps, seen, since = torch.zeros_like(total), 0, 0, now
        self._interval = (total, steps, seen, since)

    def _skip_oom(self, window: list[Batch]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.oom_skipped += 1
        shapes = [tuple(b["inputs"].shape) for b in window if "inputs" in b]
        log.warning("out of memory on a batch of inputs %s: skipped (%d so far, trainer.skip_oom=true)",
                    shapes, self.oom_skipped)

    def _usable(self, batch: Batch) -> bool:
        self.skipped_examples.extend(batch.skipped)
        return len(batch) > 0

    def _report_skips(self) -> None:
        if self.oom_skipped:
            log.warning("%d step(s) skipped for running out of memory so far", self.oom_skipped)
        if self.skipped_examples:
            log.warning("%d example(s) skipped as unreadable so far (skip_bad); first: %s", len(self.skipped_examples),
                        "; ".join(f"{s.id}: {s.reason}" for s in self.skipped_examples[:3]))

    def _nonfinite_step(self) -> None:
        self.nonfinite_steps += 1
        patience = self.options.nonfinite_patience
        log.warning("non-finite loss or gradient at step %d: step skipped (%d so far)", self.step, self.nonfinite_steps)
        if self.nonfinite_steps > patience:
            latest = self.checkpointer.latest()
            where = f"the newest checkpoint, {latest}, holds the weights before" if latest else "no checkpoint was written"
            raise NonFiniteLossError(
                f"{self.nonfinite_steps} steps had a non-finite loss or gradient (trainer.nonfinite_patience="
                f"{patience}); stopping ({where}): lower the learning rate, set trainer.max_grad_norm, or use bf16 "
                "instead of fp16"
            )

    def _set_mode(self, training: bool) -> None:
        self.model.train(training)
        if self.features is not None:
            self.features.train(training)

    @torch.no_grad()
    def run_eval(self, loader: Iterable[Batch], stage: Stage, epoch: int, limit: int | None = None,
                 record: bool = True) -> dict[str, float]:
        """Metrics of ``stage`` over ``loader`` (on the averaged weights with an EMA). Raises
        when the loss is not finite: such a model must not pass as a result."""
        self._set_mode(training=False)
        self.on_stage_start(stage, epoch)
        total = torch.zeros(2, device=self.device)  # sum of losses weighted by examples, examples
        limit = limit or self.options.limit_batches
        bar = progress(self._limited(len(loader), limit), stage.value, self.dist.is_main and record)
        with self.eval_weights():
            for batch in itertools.islice(loader, limit) if limit else loader:
                bar.update(1)
                if not self._usable(batch):
                    continue
                loss = self.evaluate_batch(batch.to(self.device, non_blocking=True), stage)
                total[0] += loss.float() * len(batch)
                total[1] += len(batch)
        bar.close()
        distributed.all_reduce_sum(total)
        loss = (total[0] / total[1].clamp(min=1)).item()
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the {stage.value} loss is {loss}: the model's outputs are not finite (its "
                                     "weights or batch-norm statistics are damaged, or the data holds non-finite "
                                     "values); this result is not reported")
        metrics = self.on_stage_end(stage, loss, epoch)
        return {f"{stage.value}_{k}": float(v) for k, v in metrics.items()}

    def evaluate(self, test_set, load: str = "best") -> dict[str, float]:
        """Metrics on ``test_set`` with the ``best`` (by ``trainer.checkpoint.monitor``) or
        ``latest`` checkpoint, or a checkpoint path."""
        self.setup(None)  # nothing is fitted on evaluation data
        self.load_weights(load)
        loader = test_set if isinstance(test_set, DataLoader) else self.make_dataloader(test_set, Stage.TEST)
        metrics = self.run_eval(loader, Stage.TEST, self.epoch)
        self.logger.scalars(metrics, self.step)
        self.logger.flush()
        log.info("test: %s", format_metrics(metrics))
        return metrics


def _padding(window: list[Batch]) -> tuple[int, int]:
    """(elements held, real elements) of the micro-batches' inputs."""
    held = real = 0
    for batch in window:
        lens = batch.get("inputs_lens")
        if lens is not None:
            held += int(lens.max()) * len(lens)
            real += int(lens.sum())
    return held, real
