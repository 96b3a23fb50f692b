"""Schemas of the config nodes that have no ``_target_``: the trainer and the logger's shared settings.

Each is the one home of its options' defaults, documentation, allowed values and ranges;
the YAML files of those groups extend it (``defaults: [/schema/trainer@_here_]``). Nodes
with a ``_target_`` need no schema: :mod:`framework.config.validate` checks them against
their target's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

# Annotations use typing.Optional/List: OmegaConf reads them at runtime on Python 3.10.
# ruff: noqa: UP006, UP007, UP045

T = TypeVar("T")


def option(default: Any, doc: str, choices: tuple | None = None, min: float | None = None,
           min_exclusive: bool = False, max: float | None = None, max_exclusive: bool = False) -> Any:
    """A field with its documentation and the allowed values or range the config check enforces."""
    meta = {"doc": doc, "choices": choices, "min": min, "min_exclusive": min_exclusive, "max": max,
            "max_exclusive": max_exclusive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CheckpointConfig:
    every_epoch: bool = option(True, "write a checkpoint after every epoch's validation")
    every_n_steps: int = option(0, "also every N optimizer steps (0: off)", min=0)
    keep_last: int = option(2, "newest checkpoints kept", min=0)
    keep_best: int = option(1, "best checkpoints by `monitor` kept as well", min=0)
    monitor: str = option("loss", "validation metric that picks the best checkpoint (without the valid_ prefix)")
    mode: str = option("min", "whether a lower or a higher `monitor` is better", choices=("min", "max"))


@dataclass
class InitConfig:
    include: list[str] = option([], "parameter-name patterns taken from trainer.init_from (empty: all), e.g. "
                                    "[encoder.*]")
    exclude: list[str] = option([], "parameter-name patterns left at their initialisation, e.g. [classifier.*]")
    rename: dict[str, str] = option({}, "prefix map from the source's parameter names to this model's, e.g. "
                                        "{encoder.: model.encoder.}")
    ignore_mismatched: bool = option(False, "parameters of another shape (a new output layer) stay at their "
                                            "initialisation instead of being refused")
    take_files: list[str] = option([], "files of the source run used instead of fitting them anew, e.g. "
                                       "[tokenizer.json, lexicon.txt] (keeps the output layer) or [feature_stats.pt]")


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = option(None, "stop after this many validations in a row without an improvement of "
                                           "checkpoint.monitor (null: never)", min=1)
    min_delta: float = option(0.0, "what counts as an improvement: a change by more than this", min=0)


@dataclass
class TrainerConfig:
    """The trainer's options: the one place their defaults live (conf/trainer/default.yaml
    extends this schema). The Brain reads them as this dataclass (``brain.options``)."""

    device: str = option("auto", "auto picks cuda when available", choices=("auto", "cpu", "cuda"))
    max_epochs: int = option(12, "epochs to train", min=1)
    limit_batches: Optional[int] = option(None, "stop each epoch and evaluation after this many batches", min=1)
    precision: str = option("fp32", "training precision; fp16 needs CUDA", choices=("fp32", "bf16", "fp16"))
    eval_precision: Optional[str] = option(None, "evaluation precision (default: as training)",
                                           choices=("fp32", "bf16", "fp16"))
    grad_accumulation: int = option(1, "micro-batches per optimizer step", min=1)
    max_grad_norm: Optional[float] = option(5.0, "global-norm clipping; null turns it off", min=0, min_exclusive=True)
    num_workers: int = option(0, "DataLoader worker processes", min=0)
    num_threads: Any = option("auto", "torch CPU threads: auto (cores this process may use, shared among local "
                                      "ranks) or a number")
    nonfinite_patience: int = option(10, "skipped non-finite steps tolerated before the run stops", min=0)
    max_time: Optional[str] = option(None, "stop training once this wall time (training and validation) is spent, "
                                           "e.g. 10m, 1h30m, 90s; then validate, checkpoint and test")
    resume: Optional[str] = option(None, "null, auto (the newest checkpoint of this run dir) or a checkpoint path")
    init_from: Optional[str] = option(None, "start from another run's weights (fine-tuning): a checkpoint, a run dir "
                                            "(its best checkpoint) or <run dir>/checkpoints/averaged.pt")
    init: InitConfig = field(default_factory=InitConfig)
    freeze: list[str] = option([], "module-name patterns not trained, e.g. [encoder.conv*]")
    unfreeze_at: Optional[int] = option(None, "optimizer step at which the frozen modules join training", min=1)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ema_decay: Optional[float] = option(None, "exponential moving average of the weights, used for validation, "
                                              "test and inference; e.g. 0.999", min=0, min_exclusive=True, max=1,
                                       max_exclusive=True)
    activation_checkpointing: list[str] = option([], "blocks recomputed in the backward pass, e.g. [rnns]")
    skip_oom: bool = option(True, "skip a batch that runs out of CUDA memory (single process only)")
    strategy: str = option("ddp", "under torchrun: ddp (every rank holds the whole model) or fsdp (parameters, "
                                  "gradients and optimizer state sharded over the ranks)", choices=("ddp", "fsdp"))
    fsdp_units: list[str] = option([], "with strategy=fsdp, module-name patterns sharded as units (default: the "
                                       "blocks of the model's ModuleLists)")
    tf32: bool = option(False, "TensorFloat-32 matmuls and convolutions on Ampere+ GPUs")
    compile: bool = option(False, "torch.compile the model")
    profile: int = option(0, "torch.profiler over this many training steps after 2 warm-up steps: a trace and a "
                             "table of the slowest operators in <run dir>/profile (0: off)", min=0)


@dataclass
class LoggerConfig:
    """Settings every tracker shares. The trackers themselves are the ``_target_`` nodes of
    ``loggers`` (conf/logger/<option>.yaml), checked against their classes' signatures."""

    tensorboard: bool = option(True, "false leaves loggers.tensorboard out (commands that only probe set it)")
    log_every_n_steps: int = option(10, "training scalars every N optimizer steps", min=1)
    upload_checkpoint: bool = option(False, "send the best checkpoint's file at the end to the trackers that keep "
                                            "files (MLflow, W&B); otherwise only its path")


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``1h30m``, ``2h`` (or a number of seconds) -> seconds; ValueError otherwise."""
    import re

    spec = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        seconds = float(spec)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", spec)
        if not spec or parts is None:
            raise ValueError(f"trainer.max_time={text!r}: expected a duration such as 90s, 10m or 1h30m")
        h, m, s = (float(x or 0) for x in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise ValueError(f"trainer.max_time={text!r}: must be longer than 0")
    return seconds


def check_num_threads(setting: Any) -> None:
    """``trainer.num_threads``: ``auto`` or a whole number >= 1 (ValueError otherwise)."""
    whole = (isinstance(setting, int) and not isinstance(setting, bool)) or (isinstance(setting, str) and setting.isdigit())
    if setting != "auto" and (not whole or int(setting) < 1):
        raise ValueError(f"trainer.num_threads must be auto or a whole number >= 1, got {setting!r}")


def register() -> None:
    """``/schema/trainer`` and ``/schema/logger`` in Hydra's ConfigStore, which the YAML files
    of those groups extend (so Hydra types their values)."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)


def typed(schema: type[T], node: Any) -> T:
    """A config node as its schema's dataclass, defaults filled in (also for a run's saved,
    untyped config.yaml)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def trainer_options(node: Any) -> TrainerConfig:
    return typed(TrainerConfig, node)
