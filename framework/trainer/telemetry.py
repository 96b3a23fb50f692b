"""What the loop reports beside the epoch meter: the training scalars every
``logger.log_every_n_steps`` steps, and the steps and examples it had to skip (unreadable
examples, out-of-memory batches, non-finite steps), with the patience for the last."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from framework.data.collate import Batch, SkippedExample
from framework.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class StepLog:
    """Training scalars averaged over the steps since the last report: loss, learning rate,
    examples per second, gradient norm. The loss stays on the device until a report, so
    steps between reports do not wait for it."""

    def __init__(self, logger: Any, every_n_steps: int, device: torch.device) -> None:
        self.logger, self.every = logger, every_n_steps
        self.loss = torch.zeros((), device=device)
        self.steps = self.examples = 0
        self.since = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor | None, examples: int, lr: float,
            bar: Any) -> None:
        self.loss += loss
        self.steps += 1
        self.examples += examples
        if step % self.every:
            return
        now = time.perf_counter()
        value = (self.loss / self.steps).item()
        rate = self.examples / max(now - self.since, 1e-9)
        values = {"train/loss": value, "train/lr": lr, "train/examples_per_s": rate}
        if norm is not None:
            values["train/grad_norm"] = float(norm)
        self.logger.scalars(values, step)
        bar.set_postfix(loss=f"{value:.3f}", ex_s=f"{rate:.0f}")
        self.loss.zero_()
        self.steps = self.examples = 0
        self.since = now


class Skips:
    """Examples and steps the loop left out, counted over the run and reported per epoch."""

    def __init__(self, nonfinite_patience: int, precision: str) -> None:
        self.patience = nonfinite_patience
        self.precision = precision
        self.examples: list[SkippedExample] = []
        self.oom_steps = 0

    def usable(self, batch: Batch) -> bool:
        """Counts the batch's unreadable examples (``skip_bad``); whether any example is left."""
        self.examples.extend(batch.skipped)
        return len(batch) > 0

    def out_of_memory(self, window: list[Batch], device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        self.oom_steps += 1
        shapes = [tuple(b["inputs"].shape) for b in window if "inputs" in b]
        log.warning("out of memory on a batch of inputs %s: skipped (%d so far, trainer.skip_oom=true)", shapes,
                    self.oom_steps)

    def nonfinite(self, step: int, count: int, latest_checkpoint: Any) -> None:
        """A step with a non-finite loss or gradient was not applied (``count`` so far); past
        the patience the run stops."""
        log.warning("non-finite loss or gradient at step %d: step skipped (%d so far)", step, count)
        if count <= self.patience:
            return
        where = (f"the newest checkpoint, {latest_checkpoint}, holds the weights before" if latest_checkpoint
                 else "no checkpoint was written")
        remedy = {"fp16": "use bf16 instead of fp16",
                  "bf16": "train in fp32 (trainer.precision=fp32)"}.get(self.precision, "check the data for "
                                                                                       "non-finite values")
        raise NonFiniteLossError(
            f"{count} steps had a non-finite loss or gradient (trainer.nonfinite_patience={self.patience}); "
            f"stopping ({where}): lower the learning rate, set trainer.max_grad_norm, or {remedy}")

    def report(self) -> None:
        if self.oom_steps:
            log.warning("%d step(s) skipped for running out of memory so far", self.oom_steps)
        if self.examples:
            log.warning("%d example(s) skipped as unreadable so far (skip_bad); first: %s", len(self.examples),
                        "; ".join(f"{s.id}: {s.reason}" for s in self.examples[:3]))

    def check_epoch(self, epoch: int, steps: int) -> None:
        """An epoch that made no optimizer step is an error, not a result."""
        if steps == 0:
            raise UserError(f"epoch {epoch + 1} made no optimizer step: every batch of the training set was empty "
                            f"or left out ({len(self.examples)} unreadable example(s), see the warnings above); "
                            "check the data and the batching settings")

    def checked_eval_loss(self, stage: str, loss_sum: float, examples: float) -> float:
        """The mean loss of an evaluation; no example scored, or a loss that is not finite, is
        an error: such a result must not be reported."""
        if examples == 0:
            raise UserError(f"no example of the {stage} set was scored: every batch was empty or unreadable "
                            f"({len(self.examples)} unreadable example(s) so far); check the {stage} data")
        loss = loss_sum / examples
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"the {stage} loss is {loss}: the model's outputs are not finite (its weights "
                                     "or batch-norm statistics are damaged, or the data holds non-finite values); "
                                     "this result is not reported")
        return loss


def record_epoch(epoch: int, progress: Any, meter: Any, metrics: dict[str, float], logger: Any,
                 max_epochs: int) -> dict[str, float]:
    """The epoch's history entry (its metrics and the meter's figures), logged and sent to
    the trackers."""
    figures = meter.summary()  # over every rank
    entry = {"epoch": epoch + 1, "step": progress.step, "elapsed_s": progress.elapsed(),
             "train_s": sum(h["epoch_s"] for h in progress.history) + figures["epoch_s"], **metrics, **figures}
    progress.history.append(entry)
    logger.scalars({f"epoch/{k}": v for k, v in entry.items() if k not in ("epoch", "step")}, progress.step)
    log_epoch(entry, max_epochs, metrics)
    return entry


def log_epoch(entry: dict[str, float], max_epochs: int, metrics: dict[str, float]) -> None:
    from framework.trainer.logs import format_metrics

    log.info("epoch %d/%d: %d steps in %.1f s (%.0f examples/s, %.0f audio s/s, data wait %.0f%%), padding %.1f%%, "
             "batch size %.1f; %s", entry["epoch"], max_epochs, entry["steps"], entry["epoch_s"],
             entry["examples_per_s"], entry["audio_s_per_s"], 100 * entry["data_wait_fraction"],
             100 * entry["padding_fraction"], entry["mean_batch_size"], format_metrics(metrics))
