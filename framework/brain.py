"""The Brain: the training loop and the hooks a recipe overrides.

A recipe subclasses :class:`Brain` and implements ``compute_forward`` and
``compute_objectives`` (and, for its metrics, ``on_stage_start`` / ``on_stage_end``).
The mechanics live in :mod:`framework.trainer`, driven from here by the typed trainer
options, ``self.options`` (:class:`framework.config.schema.TrainerConfig`).

One run, top to bottom::

    fit(train, valid)
      setup(train)            what is learnt from the data first, the model, optimizer, EMA
      resume()                from trainer.resume (mid-epoch included)
      for each epoch:
        train_epoch()         train_step(window) per optimizer step, then on_train_step_end(...)
        run_eval(valid)       on the averaged weights when trainer.ema_decay is set
        checkpoint, history
    evaluate(test)            with the best checkpoint; nothing is fitted on test data
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from framework.config.schema import TrainerConfig, trainer_options
from framework.data.collate import Batch
from framework.data.loader import dataset_ids, end_workers, make_loader, make_sampler
from framework.errors import UserError
from framework.features import build_features
from framework.files import write_text_atomic
from framework.trainer import distributed
from framework.trainer.accumulation import limited, step_windows
from framework.trainer.checkpoint import Checkpointer, rng_state, set_rng_state
from framework.trainer.distributed import DistEnv
from framework.trainer.early_stopping import EarlyStopping
from framework.trainer.init import start_from, take_files
from framework.trainer.loggers import Loggers
from framework.trainer.logs import format_metrics, progress
from framework.trainer.meter import EpochMeter, padding
from framework.trainer.optim import ScheduleState
from framework.trainer.optimization import Optimization
from framework.trainer.precision import Precision
from framework.trainer.profiling import StepProfiler
from framework.trainer.resume import RunSettings
from framework.trainer.state import MidEpoch, PerRank, Progress, RNGs, TrainState
from framework.trainer.stopping import StopAgreement, StopRequested, WaitInterrupted, each_waited, leaving
from framework.trainer.telemetry import NonFiniteLossError, Skips, StepLog, record_epoch
from framework.trainer.threads import tuner_for

log = logging.getLogger(__name__)
__all__ = ["Brain", "NonFiniteLossError", "Stage"]


class Stage(Enum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class Brain:
    """Owns the model, optimizer and loop for one run directory.

    ``cfg`` is the composed run config (``cfg.trainer``, ``cfg.model``, ``cfg.optimizer``,
    ``cfg.scheduler``, ``cfg.batching``, ``cfg.features``, ``cfg.logger``). ``dist`` is the
    distributed environment (from :func:`framework.process.start_process`; a single process
    when not given).
    """

    #: Keyword arguments ``build_model`` passes to ``cfg.model`` itself; the config check
    #: does not ask the config for them.
    model_arguments: tuple[str, ...] = ()

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, dist: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.options: TrainerConfig = trainer_options(cfg.trainer)
        self.dist = dist if dist is not None else distributed.init_distributed(self.options.device)
        self.device = self.dist.device
        self.run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)  # also when built outside the entry points (a notebook, a test)
        self.precision = Precision(self.options.precision, self.device, self.options.eval_precision)
        self.features = build_features(cfg, self.device)
        ck = self.options.checkpoint
        self.progress = Progress()
        self.state = TrainState(Checkpointer(self.run_dir / "checkpoints", ck.keep_last, ck.keep_best, ck.monitor,
                                             ck.mode), self.progress, self.dist.is_main)  # registered by their owners
        self.logger = Loggers.from_config(cfg, self.run_dir, enabled=self.dist.is_main)
        self.early_stopping = EarlyStopping(self.options.early_stopping.patience, self.options.early_stopping.min_delta,
                                            ck.mode, ck.monitor)
        self.profiler = StepProfiler(self.options.profile, self.run_dir / "profile", self.dist.rank)
        self.stop = StopAgreement(self.dist, self.options.max_time, self.progress.elapsed)  # stop signals and the time budget
        self.skips = Skips(self.options.nonfinite_patience, self.options.precision)
        self.threads = tuner_for(self.options.num_threads, self.device.type)
        self.optimization: Optimization | None = None  # the model as trained, optimizer, schedule (setup)
        self.meter: EpochMeter | None = None  # the current epoch's bookkeeping
        self.sanity_checking = False  # True while one batch is validated before training (check_monitor)
        self.loaders: list[Any] = []  # what fit iterates, whose workers a stop ends
        self.resume_hint = "rerun with trainer.resume=auto and the same hydra.run.dir"  # said when a signal stops it

    epoch = property(lambda self: self.progress.epoch, doc="epochs completed")
    step = property(lambda self: self.progress.step, doc="optimizer steps applied")
    history = property(lambda self: self.progress.history, doc="metrics and figures of each finished epoch")
    module = property(lambda self: self.optimization and self.optimization.module, doc="the model itself")
    model = property(lambda self: self.optimization and self.optimization.model, doc="what runs forward (wrapped)")
    optimizer = property(lambda self: self.optimization and self.optimization.optimizer)
    ema = property(lambda self: self.optimization and self.optimization.ema, doc="the weight average, if any")

    # ----------------------------------------------------------------- hooks to override
    def build_model(self, train_set) -> torch.nn.Module:
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

    def make_dataloader(self, dataset, stage: Stage) -> DataLoader:
        """Batches of ``dataset`` by ``cfg.batching`` over its lengths, features computed in
        the workers when ``features.where=worker``. Evaluation keeps the order, scores every
        example and shards without duplicates."""
        train = stage == Stage.TRAIN
        transform, lengths = (self.features.for_loader(train, dataset.lengths) if self.features is not None
                              else (None, dataset.lengths))
        sampler = make_sampler(self.cfg.batching, lengths, self.cfg.seed, train, dataset_ids(dataset))
        return make_loader(dataset, sampler, self.options.num_workers, self.cfg.seed,
                           pin_memory=self.device.type == "cuda", transform=transform)

    # ------------------------------------------------------------------------- set-up
    def setup(self, train_set=None, trains: bool = True) -> None:
        """Builds the model, optimizer and weight average once, and registers them as
        checkpoint parts (``trains=False``, for a command that never trains: no optimizer).
        In ``fit`` (``train_set`` given) what the run learns from its data first (feature
        statistics, a recipe's alphabet) is fitted and saved in the run directory; otherwise
        it is loaded from there."""
        if self.optimization is not None:
            return
        init_from = self.options.init_from if train_set is not None else None  # fine-tuning starts a fit only
        taken = take_files(init_from, self.run_dir, self.options.init, self.dist.is_main)
        if self.features is not None:
            self.prepare_features(train_set)
        model = self.build_model(train_set).to(self.device)
        if init_from:
            start_from(model, init_from, self.options.init, self.run_dir, self.dist.is_main, taken)
        if self.features is not None:
            self.state.add_recoverable("features", self.features, weights=True)
        self.optimization = Optimization(model, self.cfg, self.options, self.dist, self.precision, self.progress,
                                         self.skips, self.state, trains)

    def prepare_features(self, train_set) -> None:
        """Global normalisation statistics: fitted on the training set by rank 0, read from
        the run directory by every rank, resumed runs and evaluation (which never fits)."""
        path = self.run_dir / "feature_stats.pt"
        if train_set is not None and self.dist.is_main and not path.is_file():
            self.features.fit_stats(train_set, path)
        distributed.barrier()
        self.features.load_stats(path)

    def set_mode(self, training: bool) -> None:
        self.model.train(training)
        self.optimization.freezer.hold_statistics()
        if self.features is not None:
            self.features.train(training)

    # -------------------------------------------------------------------------- fit
    def fit(self, train_set, valid_set=None) -> dict[str, float]:
        """Trains for ``trainer.max_epochs`` epochs; returns the last epoch's training and
        validation metrics. On SIGTERM / SIGINT: checkpoint at the current step, then
        :class:`StopRequested`."""
        self.setup(train_set)
        train_loader = train_set if isinstance(train_set, DataLoader) else self.make_dataloader(train_set, Stage.TRAIN)
        valid_loader = valid_set if valid_set is None or isinstance(valid_set, DataLoader) else \
            self.make_dataloader(valid_set, Stage.VALID)
        self.train_sampler = train_loader.batch_sampler
        self.loaders = [loader for loader in (train_loader, valid_loader) if loader is not None]
        batches = limited(len(self.train_sampler), self.options.limit_batches)
        self.plan_schedule(math.ceil(batches / self.options.grad_accumulation))
        self.register_training_state()
        self.state.resume(self.options.resume, self.device)
        if self.dist.is_main:  # what evaluation and transcription rebuild the run from; after a refused
            # resume the run's config stays the one its checkpoints were written with
            write_text_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
            self.logger.hyperparams(self.cfg)
        if valid_loader is not None:
            self.check_monitor(valid_loader)
        else:
            self.early_stopping.require_validation()
        self.progress.restart_clock()
        self.stop.say_budget_left()
        self.on_fit_start()
        with self.stop.signals, self.profiler:
            for epoch in range(self.progress.epoch, self.options.max_epochs):
                if self.stop.out_of_time or self.early_stopping.stopped:
                    break
                self.run_epoch(train_loader, valid_loader, epoch)
        self.on_fit_end()
        self.logger.flush()
        last = self.history[-1] if self.history else {}
        return {k: v for k, v in last.items() if k == "train_loss" or k.startswith("valid_")}

    def plan_schedule(self, steps_per_epoch: int) -> None:
        """The learning-rate schedule over ``steps_per_epoch`` x ``trainer.max_epochs``
        optimizer steps (or the time budget). ``fit`` plans it from its training loader;
        training outside ``fit`` (a benchmark) plans its own after :meth:`setup`."""
        # the clock agreed at each step (the ranks' mean), so every replica takes the same learning rate
        self.optimization.plan(steps_per_epoch, lambda: self.stop.step_clock, self.stop.max_time_s)

    def register_training_state(self) -> None:
        """The checkpoint parts that only training has: the schedule, the run's progress and
        settings, the sampler's position and the epoch's running sums (mid-epoch), the RNGs."""
        if self.optimization.scheduler is not None:
            self.state.add_recoverable("scheduler", ScheduleState(self.optimization.scheduler))
        self.state.add_recoverable("progress", self.progress)
        self.state.add_recoverable("settings", RunSettings(self.cfg))
        sampler = self.train_sampler
        self.state.add_recoverable("sampler", MidEpoch(self.progress, lambda: sampler.state_dict(
            consumed=self.progress.batch_in_epoch), sampler.load_state_dict))
        self.state.add_recoverable("meter", PerRank(MidEpoch(self.progress, lambda: self.meter and self.meter.state_dict(),
                                                             self._restore_meter), self.dist.rank))
        self.state.add_recoverable("early_stopping", self.early_stopping)
        self.state.add_recoverable("rng", PerRank(RNGs(), self.dist.rank))
        if self.threads is not None:
            self.state.add_recoverable("threads", PerRank(self.threads, self.dist.rank))

    def _restore_meter(self, state: dict[str, Any]) -> None:
        self.meter = EpochMeter.restored(self.device, state)

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
        self.state.files.check_monitored(metrics)

    def stopped_on_time_before(self, epoch: int) -> None:
        """The time budget ran out before this process's first step of ``epoch``: the run ends
        where it was (the last epoch's end, validated, or where an earlier process stopped on
        time), checkpointed there, and the rest is left to a larger budget."""
        self.stop.say_out_of_time(epoch, self.step)
        last = self.history[-1] if self.history else {}
        if last:
            last["stopped_on_time"] = 1
        if self.state.saved_at != self.progress.position:  # checkpoints every n steps only
            scores = {} if self.progress.mid_epoch else validation_scores(last)  # the last epoch's end: its scores
            self.state.save(scores or None)
        if self.step == 0:  # this run trained nothing: there is nothing of it to score
            raise UserError(f"trainer.max_time={self.stop.max_time} ran out before the first optimizer step, after "
                            f"{self.progress.elapsed():.1f} s: nothing was trained or evaluated; give a larger "
                            "trainer.max_time (trainer.resume=auto continues this run)")

    def run_epoch(self, train_loader, valid_loader, epoch: int) -> None:
        """Train, validate, record and checkpoint one epoch."""
        self.train_sampler.set_epoch(epoch)
        train_loss = self.train_epoch(train_loader, epoch)
        if self.stop.stopping:
            self.stop_now("in epoch %d at step %d" % (epoch + 1, self.step))
        if self.stop.out_of_time and self.meter.steps == 0:
            # spent before this process's first step of the epoch: in the last validation, before a
            # resumed run began, or stalled on the first batch (the ranks agree on it at that step)
            self.meter = None
            self.stopped_on_time_before(epoch)
            return
        if self.stop.out_of_time:  # training is over: a worker stuck in a read would hold the exit 5 s
            end_workers([train_loader])
        self.skips.check_epoch(epoch, self.meter.steps)
        metrics = {"train_loss": train_loss}
        if valid_loader is not None:
            metrics.update(self.validate(valid_loader, epoch))
        if self.stop.out_of_time:  # the epoch stays where it stopped: a larger budget continues it
            self.stop.say_out_of_time(epoch, self.step)
        else:
            self.progress.epoch, self.progress.batch_in_epoch = epoch + 1, 0
        entry = record_epoch(epoch, self.progress, self.meter, metrics, self.logger, self.options.max_epochs)
        self.meter = None
        if self.stop.out_of_time:
            entry["stopped_on_time"] = 1
        if valid_loader is not None and self.early_stopping.enabled:  # rank 0's value: one decision on every rank
            self.early_stopping.update(distributed.broadcast_object(metrics[f"valid_{self.early_stopping.monitor}"]))
        stop = self.stop.agreed()
        if self.options.checkpoint.every_epoch or stop or self.stop.out_of_time:
            self.state.save(validation_scores(metrics))
        if stop:
            self.stop_now("after epoch %d" % self.epoch)

    def validate(self, loader, epoch: int) -> dict[str, float]:
        """The epoch's validation. Over the network (remote shards) the epoch's training is
        checkpointed first, so that a server that stalls or goes away costs no training, and
        in one process a stop signal then ends a wait for a download at once; otherwise a stop
        signal lets validation finish first (under DDP the ranks would have to agree on leaving
        it). A run resumed from that checkpoint validates the epoch again."""
        remote = getattr(getattr(loader, "dataset", None), "remote", False)
        if not (remote and self.options.checkpoint.every_epoch):  # the epoch's checkpoint, rewritten scored after
            return self.run_eval(loader, Stage.VALID, epoch)
        self.state.save_unless_saved()
        try:
            return self.run_eval(loader, Stage.VALID, epoch,
                                 waiting=self.stop.signals.waiting if not self.dist.enabled else contextlib.nullcontext)
        except WaitInterrupted:
            self.stop_now(f"in epoch {epoch + 1}'s validation")

    def train_epoch(self, loader, epoch: int) -> float:
        """Trains from the current position of the epoch; returns its mean training loss."""
        self.set_mode(training=True)
        self.on_stage_start(Stage.TRAIN, epoch)
        self.meter = self.meter or EpochMeter(self.device)
        self.meter.start()
        step_log = StepLog(self.logger, self.logger.log_every_n_steps, self.device)
        start, step_ended = self.progress.batch_in_epoch, None
        bar = progress(limited(len(loader), self.options.limit_batches) - start, f"epoch {epoch + 1}",
                       self.dist.is_main)
        for window in step_windows(loader, self.options.grad_accumulation, start, self.options.limit_batches,
                                   self.meter.waited, self.skips.usable, self.stop.waiting):
            weights = self.stop.plan_step([len(b) for b in window.batches])
            if weights is None:  # a stop signal or the time budget: this window is left for later
                break
            self.progress.batch_in_epoch += window.fetched
            bar.update(window.fetched)
            if not window.batches:
                continue
            try:
                loss, norm = self.train_step(window.batches, weights)
                if self.threads is not None:  # times the whole step, its wait for batches included
                    step_ended = self.threads.step_done(step_ended)
            except torch.OutOfMemoryError:
                if not self.options.skip_oom or self.dist.enabled:
                    raise
                self.skips.out_of_memory(window.batches, self.device)
                continue
            self.profiler.step()
            self.meter.add_step([len(b) for b in window.batches], *padding(window.batches), window.lengths_s, loss)
            if loss is not None:
                self.on_train_step_end(self.step, loss, norm)
                step_log.add(self.step, loss, norm, sum(len(b) for b in window.batches),
                             self.optimizer.param_groups[0]["lr"], bar)
                if self.options.checkpoint.every_n_steps and self.step % self.options.checkpoint.every_n_steps == 0:
                    self.state.save()
        bar.close()
        self.meter.pause()
        self.skips.report()
        loss = self.meter.mean_loss()
        self.on_stage_end(Stage.TRAIN, loss, epoch)
        return loss

    def train_pass(self, loader, epoch: int = 0) -> float:
        """One training pass over all of ``loader`` outside ``fit`` (benchmarks, probes): from
        its first batch, with a fresh epoch meter (``self.meter`` holds the pass's figures
        until the next one). Returns the pass's mean training loss."""
        self.progress.batch_in_epoch, self.meter = 0, None
        return self.train_epoch(loader, epoch)

    def train_step(self, window: list[Batch], weights: list[float]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One optimizer step (:meth:`Optimization.step`): (the step's mean loss, or None when it was
        not applied, the model then exactly as before it; the gradient norm)."""
        return self.optimization.step(window, weights, self.fit_batch, self.state.files.latest)

    # ----------------------------------------------------------------- checkpoints
    def stop_now(self, where: str) -> None:
        """Checkpoints the position (unless the newest checkpoint holds it) and stops the run."""
        end_workers(self.loaders)  # nothing more is loaded: a second Ctrl-C must not find the process joining them
        self.state.save_unless_saved()
        self.logger.flush()
        leaving()
        raise StopRequested(self.stop.signum, f"stopped by a signal {where}; the checkpoint in "
                                              f"{self.state.files.directory} continues it: {self.resume_hint}")

    def load_weights(self, which: str) -> Path:
        """Model, feature statistics and weight average from the ``best`` checkpoint (by
        ``trainer.checkpoint.monitor``; the newest, with a warning, when none is scored),
        the ``latest`` one, the ``averaged`` one (``framework.average``) or a path. Raises
        when there is none: untrained weights are never evaluated."""
        return self.state.load_weights(which, self.device)

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """The weight average swapped in for the duration (with ``trainer.ema_decay``)."""
        return self.optimization.eval_weights()

    # ------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def run_eval(self, loader, stage: Stage, epoch: int, limit: int | None = None, record: bool = True,
                 waiting: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, float]:
        """Metrics of ``stage`` over ``loader`` (on the averaged weights with an EMA), with the
        number of examples they cover; each batch is waited for inside ``waiting()``. Raises
        when the loss is not finite or no example was scored: such a result must not pass."""
        self.set_mode(training=False)
        self.on_stage_start(stage, epoch)
        total = torch.zeros(2, device=self.device)  # sum of losses weighted by examples, examples
        limit = limit or self.options.limit_batches
        bar = progress(limited(len(loader), limit), stage.value, self.dist.is_main and record)
        with self.eval_weights():
            for i, batch in enumerate(each_waited(loader, waiting)):
                if limit and i >= limit:
                    break
                bar.update(1)
                if not self.skips.usable(batch):
                    continue
                loss = self.evaluate_batch(batch.to(self.device, non_blocking=True), stage)
                total[0] += loss.float() * len(batch)
                total[1] += len(batch)
        bar.close()
        loss = self.skips.checked_eval_loss(stage.value, *distributed.all_reduce_sum(total).tolist())
        metrics = self.on_stage_end(stage, loss, epoch)
        return {**{f"{stage.value}_{k}": float(v) for k, v in metrics.items()}, f"{stage.value}_examples": int(total[1])}

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


def validation_scores(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's validation metrics as a checkpoint's scores (``valid_cer`` -> ``cer``)."""
    return {k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")}
