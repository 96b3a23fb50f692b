"""The Brain: the training loop and the hooks a recipe overrides.

A recipe subclasses :class:`Brain` and implements ``compute_forward`` and
``compute_objectives`` (and, for its metrics, ``on_stage_start`` / ``on_stage_end``).
Everything else (precision, accumulation, clipping, checkpoints, resume, DDP, logging)
lives in :mod:`framework.trainer` and is driven from here by ``cfg.trainer``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import time
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from framework.data.batching import LengthBatchSampler
from framework.data.collate import Batch, collate
from framework.trainer import distributed
from framework.trainer.accumulation import loss_weights, windows
from framework.trainer.activation_checkpointing import apply_activation_checkpointing
from framework.trainer.checkpoint import Checkpointer, CheckpointError, load_checkpoint, rng_state, set_rng_state
from framework.trainer.logs import TensorBoardLogger, progress, setup_file_logging
from framework.trainer.precision import Precision

log = logging.getLogger(__name__)


class Stage(Enum):
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class NonFiniteLossError(RuntimeError):
    pass


class Brain:
    """Owns the model, optimizer and loop for one run directory.

    ``cfg`` is the composed run config (``cfg.trainer``, ``cfg.model``, ``cfg.optimizer``,
    ``cfg.scheduler``, ``cfg.batching``, ``cfg.features``, ``cfg.logger``).
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None, log_name: str = "train") -> None:
        self.cfg = cfg
        self.trainer_cfg = cfg.trainer
        self.dist = distributed.init_distributed(cfg.trainer.device)
        self.device = self.dist.device
        self.run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        setup_file_logging(self.run_dir, self.dist.rank, self.dist.world_size, log_name)
        self.precision = Precision(cfg.trainer.precision, self.device, cfg.trainer.get("eval_precision"))
        self.features: nn.Module | None = instantiate(cfg.features).to(self.device) if cfg.get("features") else None
        ck = cfg.trainer.checkpoint
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", ck.keep_last, ck.keep_best, ck.monitor, ck.mode)
        self.logger = TensorBoardLogger(
            self.run_dir, enabled=self.dist.is_main and cfg.logger.tensorboard, log_every_n_steps=cfg.logger.log_every_n_steps
        )
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # micro-batches of the current epoch consumed
        self.nonfinite_steps = 0
        self.oom_skipped = 0
        self.skipped_examples: list[tuple[str, str]] = []
        self._train_sampler: LengthBatchSampler | None = None

    # ----------------------------------------------------------------- hooks to override
    def build_model(self, train_set) -> nn.Module:
        """The model; the default instantiates ``cfg.model``."""
        return instantiate(self.cfg.model)

    def compute_forward(self, batch: Batch, stage: Stage) -> Any:
        raise NotImplementedError("a recipe's Brain implements compute_forward(batch, stage)")

    def compute_objectives(self, outputs: Any, batch: Batch, stage: Stage) -> torch.Tensor:
        """The loss, a mean over the batch's examples."""
        raise NotImplementedError("a recipe's Brain implements compute_objectives(outputs, batch, stage)")

    def on_fit_start(self) -> None:
        pass

    def on_stage_start(self, stage: Stage, epoch: int) -> None:
        pass

    def on_stage_end(self, stage: Stage, loss: float, epoch: int) -> dict[str, float]:
        """Metrics of the stage (``loss`` is already averaged over all ranks)."""
        return {"loss": loss}

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
        overrides: dict[str, Any] = {"lengths": dataset.lengths, "seed": self.cfg.seed, "even": train}
        if not train:
            overrides["shuffle"] = False
            overrides["drop_last"] = False
        if self.features is not None and self.features.where == "worker" and getattr(dataset, "transform", 1) is None:
            # a CPU copy of the pipeline runs in the workers; the batch arrives as features
            dataset.transform = copy.deepcopy(self.features).cpu().per_example
        sampler: LengthBatchSampler = instantiate(self.cfg.batching, **overrides)
        workers = self.trainer_cfg.num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            # a private generator keeps the global RNG untouched, which exact resume needs
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def setup(self, train_set) -> None:
        """Builds model, optimizer and scheduler once; resumes when configured."""
        if self.model is not None:
            return
        if self.features is not None and train_set is not None:
            self.fit_feature_stats(train_set)
        tcfg = self.trainer_cfg
        if tcfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model = self.build_model(train_set).to(self.device)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("model %s: %.2f M trainable parameters", type(model).__name__, n_params / 1e6)
        if tcfg.activation_checkpointing:
            wrapped = apply_activation_checkpointing(model, list(tcfg.activation_checkpointing))
            log.info("activation checkpointing: %s", ", ".join(wrapped))
        self.module = model  # unwrapped, for state dicts
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model = torch.compile(model) if tcfg.compile else model
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = instantiate(self.cfg.optimizer, params=params)

    def fit_feature_stats(self, train_set) -> None:
        """Global normalisation statistics: computed once by rank 0, saved in the run
        directory, read by every rank (and by resumed runs)."""
        path = self.run_dir / "feature_stats.pt"
        if self.dist.is_main:
            self.features.fit_stats(train_set, path)
        distributed.barrier()
        self.features.fit_stats(train_set, path)

    def _make_scheduler(self, steps_per_epoch: int) -> None:
        if not self.cfg.get("scheduler") or self.scheduler is not None:
            return
        total = max(1, steps_per_epoch * self.trainer_cfg.max_epochs)
        self.scheduler = instantiate(self.cfg.scheduler, optimizer=self.optimizer, total_steps=total)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        sampler_state = self._train_sampler.state_dict(consumed=self.batch_in_epoch) if self._train_sampler else None
        return {
            "model": self.module.state_dict(),
            "features": self.features.state_dict() if self.features is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.precision.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "sampler": sampler_state,
            "rng": rng_state(),
            "model_config": OmegaConf.to_container(self.cfg.model, resolve=True),
        }

    def save_checkpoint(self, metrics: dict[str, float] | None = None) -> None:
        if self.dist.is_main:
            path = self.checkpointer.save(self.state_dict(), self.step, metrics)
            log.info("checkpoint %s (epoch %d, step %d)", path.name, self.epoch, self.step)
        distributed.barrier()

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        saved = state.get("model_config")
        current = OmegaConf.to_container(self.cfg.model, resolve=True)
        if saved is not None and saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise CheckpointError(
                f"checkpoint {path} was written for another model config (differs in: {', '.join(diff)}); "
                "resume with the same model settings or start a new run"
            )
        self.module.load_state_dict(state["model"])
        if self.features is not None and state.get("features"):
            self.features.load_state_dict(state["features"])
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
        if state.get("sampler") and self._train_sampler is not None and self.batch_in_epoch:
            self._train_sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        log.info("resumed from %s: epoch %d, step %d, batch %d of the epoch", path, self.epoch, self.step, self.batch_in_epoch)

    def resume(self) -> None:
        """``trainer.resume``: null (start fresh), ``auto`` (latest in this run dir, if any)
        or a checkpoint path (must exist)."""
        target = self.trainer_cfg.resume
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

    def load_weights(self, which: str | None) -> Path | None:
        """Model (and feature statistics) from the ``best`` or ``latest`` checkpoint or a
        path; None keeps the current weights."""
        if not which:
            return None
        path = {"best": self.checkpointer.best, "latest": self.checkpointer.latest}.get(which, lambda: Path(which))()
        if path is None:
            log.warning("no checkpoint in %s: using the current weights", self.checkpointer.directory)
            return None
        state = load_checkpoint(path, self.device)
        self.module.load_state_dict(state["model"])
        if self.features is not None and state.get("features"):
            self.features.load_state_dict(state["features"])
        log.info("weights from %s", path)
        return path

    # -------------------------------------------------------------------------- loops
    def fit(self, train_set, valid_set=None) -> dict[str, float]:
        """Trains for ``trainer.max_epochs`` epochs; returns the last validation metrics."""
        self.setup(train_set)
        train_loader = train_set if isinstance(train_set, DataLoader) else self.make_dataloader(train_set, Stage.TRAIN)
        self._train_sampler = train_loader.batch_sampler
        valid_loader = None
        if valid_set is not None:
            valid_loader = valid_set if isinstance(valid_set, DataLoader) else self.make_dataloader(valid_set, Stage.VALID)
        accum = self.trainer_cfg.grad_accumulation
        per_epoch = min(len(self._train_sampler), self.trainer_cfg.limit_batches or len(self._train_sampler))
        self._make_scheduler(math.ceil(per_epoch / accum))
        self.resume()
        self.on_fit_start()
        metrics: dict[str, float] = {}
        for epoch in range(self.epoch, self.trainer_cfg.max_epochs):
            self._train_sampler.set_epoch(epoch)
            train_loss = self.train_epoch(train_loader, epoch)
            self.epoch = epoch + 1
            self.batch_in_epoch = 0
            metrics = {"train_loss": train_loss}
            if valid_loader is not None:
                metrics.update(self.run_eval(valid_loader, Stage.VALID, epoch))
            self.logger.scalars({f"epoch/{k}": v for k, v in metrics.items()}, self.step)
            log.info("epoch %d/%d: %s", self.epoch, self.trainer_cfg.max_epochs, _fmt(metrics))
            if self.trainer_cfg.checkpoint.every_epoch:
                self.save_checkpoint({k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")})
        self.logger.flush()
        return metrics

    def train_epoch(self, loader: DataLoader, epoch: int) -> float:
        assert self.model is not None and self.optimizer is not None
        self.model.train()
        if self.features is not None:
            self.features.train()
        self.on_stage_start(Stage.TRAIN, epoch)
        tcfg = self.trainer_cfg
        total_loss = torch.zeros((), device=self.device)
        window_loss = torch.zeros((), device=self.device)
        n_batches = n_steps = n_micro = 0  # finite steps, all steps, micro-batches
        examples = padded = real = 0
        log_every = self.logger.log_every_n_steps
        t_log, ex_log = time.perf_counter(), 0
        total = min(len(loader), tcfg.limit_batches or len(loader))
        bar = progress(total - self.batch_in_epoch, f"epoch {epoch + 1}", self.dist.is_main)
        params = [p for p in self.module.parameters() if p.requires_grad]
        limit = tcfg.limit_batches
        batches = itertools.islice(loader, max(0, limit - self.batch_in_epoch)) if limit else loader
        for raw_window in windows(batches, tcfg.grad_accumulation):
            self.batch_in_epoch += len(raw_window)
            bar.update(len(raw_window))
            window = [b for b in raw_window if self._usable(b)]
            sizes = [len(b) for b in window]
            global_total = None
            if self.dist.enabled:
                global_total = int(distributed.all_reduce_sum(torch.tensor(sum(sizes), device=self.device)).item())
            if global_total == 0 or (not window and not self.dist.enabled):
                continue
            if not window:  # DDP cannot skip a step on one rank: the others would wait for it
                raise RuntimeError(
                    f"rank {self.dist.rank}: every example of a step was unreadable (skip_bad) while other ranks had "
                    f"data; first: {self.skipped_examples[-1][0] if self.skipped_examples else '?'}. Clean the "
                    "manifest (python -m framework.prepare manifest ... --skip-bad) before a distributed run"
                )
            for batch in window:
                held, used = _padding(batch)
                padded += held
                real += used
            try:
                step_loss = self.accumulate(window, loss_weights(sizes, global_total, self.dist.world_size))
            except torch.OutOfMemoryError:
                if not tcfg.skip_oom or self.dist.enabled:
                    raise
                self._skip_oom(window)
                continue
            finite, norm = self.optimizer_step(params, step_loss)
            if finite:
                total_loss += step_loss
                window_loss += step_loss
                n_batches += 1
            self.optimizer.zero_grad(set_to_none=True)
            n_steps += 1
            n_micro += len(window)
            examples += sum(sizes)
            ex_log += sum(sizes)
            if finite and self.step % log_every == 0:
                now = time.perf_counter()
                value = (window_loss / log_every).item()
                rate = ex_log / max(now - t_log, 1e-9)
                values = {"train/loss": value, "train/lr": self.optimizer.param_groups[0]["lr"], "train/examples_per_s": rate}
                if norm is not None:
                    values["train/grad_norm"] = float(norm)
                self.logger.scalars(values, self.step)
                bar.set_postfix(loss=f"{value:.3f}", ex_s=f"{rate:.0f}")
                window_loss.zero_()
                t_log, ex_log = now, 0
            every = tcfg.checkpoint.every_n_steps
            if every and finite and self.step % every == 0:
                self.save_checkpoint()
        bar.close()
        if self.oom_skipped:
            log.warning("%d step(s) skipped for running out of memory so far", self.oom_skipped)
        if self.skipped_examples:
            log.warning(
                "%d example(s) skipped as unreadable so far (skip_bad); first: %s",
                len(self.skipped_examples), "; ".join(f"{i}: {why}" for i, why in self.skipped_examples[:3]),
            )
        padding = 1 - real / padded if padded else 0.0
        self.logger.scalars({"epoch/padding_fraction": padding, "epoch/mean_batch_size": examples / max(n_micro, 1)}, self.step)
        log.info("epoch %d: %d steps, padding %.1f%%, mean batch size %.1f", epoch + 1, n_steps, 100 * padding,
                 examples / max(n_micro, 1))
        mean = distributed.all_reduce_sum(torch.stack([total_loss, torch.tensor(float(n_batches), device=self.device)]))
        train_loss = (mean[0] / mean[1].clamp(min=1)).item()
        self.on_stage_end(Stage.TRAIN, train_loss, epoch)
        return train_loss

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

    def optimizer_step(self, params: list[nn.Parameter], step_loss: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        """Clips, then applies the step unless the loss or gradients are not finite (then
        counts it against ``trainer.nonfinite_patience``). Returns (applied, grad norm)."""
        norm = self.precision.clip(self.optimizer, params, self.trainer_cfg.max_grad_norm)
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

    def _skip_oom(self, window: list[Batch]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.oom_skipped += 1
        shapes = [tuple(b["inputs"].shape) for b in window if "inputs" in b]
        log.warning("out of memory on a batch of inputs %s: skipped (%d so far, trainer.skip_oom=true)",
                    shapes, self.oom_skipped)

    def _usable(self, batch: Batch) -> bool:
        if batch.get("skipped"):
            self.skipped_examples.extend(batch["skipped"])
        return len(batch) > 0

    def _nonfinite_step(self) -> None:
        self.nonfinite_steps += 1
        patience = self.trainer_cfg.nonfinite_patience
        log.warning("non-finite loss or gradient at step %d: step skipped (%d so far)", self.step, self.nonfinite_steps)
        if self.nonfinite_steps > patience:
            raise NonFiniteLossError(
                f"{self.nonfinite_steps} steps had a non-finite loss or gradient (trainer.nonfinite_patience="
                f"{patience}); stopping. The last good checkpoint in {self.checkpointer.directory} is intact: "
                "lower the learning rate, set trainer.max_grad_norm, or use bf16 instead of fp16"
            )

    @torch.no_grad()
    def run_eval(self, loader: DataLoader, stage: Stage, epoch: int) -> dict[str, float]:
        self.model.eval()
        if self.features is not None:
            self.features.eval()
        self.on_stage_start(stage, epoch)
        total = torch.zeros(2, device=self.device)  # sum of losses weighted by examples, examples
        limit = self.trainer_cfg.limit_batches
        bar = progress(min(len(loader), limit or len(loader)), stage.value, self.dist.is_main)
        for batch in itertools.islice(loader, limit) if limit else loader:
            bar.update(1)
            if not self._usable(batch):
                continue
            n = len(batch)
            loss = self.evaluate_batch(batch.to(self.device, non_blocking=True), stage)
            total[0] += loss.float() * n
            total[1] += n
        bar.close()
        distributed.all_reduce_sum(total)
        loss = (total[0] / total[1].clamp(min=1)).item()
        metrics = self.on_stage_end(stage, loss, epoch)
        return {f"{stage.value}_{k}": float(v) for k, v in metrics.items()}

    def evaluate(self, test_set, load: str | None = "best") -> dict[str, float]:
        """Metrics on ``test_set`` with the ``best`` (by ``trainer.checkpoint.monitor``) or
        ``latest`` checkpoint loaded, or the current weights when ``load`` is None."""
        self.setup(test_set)
        self.load_weights(load)
        loader = test_set if isinstance(test_set, DataLoader) else self.make_dataloader(test_set, Stage.TEST)
        metrics = self.run_eval(loader, Stage.TEST, self.epoch)
        self.logger.scalars(metrics, self.step)
        self.logger.flush()
        log.info("test: %s", _fmt(metrics))
        return metrics


def _padding(batch: Batch) -> tuple[int, int]:
    """(elements held, real elements) of the batch's inputs."""
    lens = batch.get("inputs_lens")
    if lens is None:
        return 0, 0
    return int(lens.max()) * len(lens), int(lens.sum())


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
