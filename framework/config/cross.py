"""Checks across keys: settings that must agree with each other, with the files they name or
with the machine (a checkpoint to resume, a time budget for a time-keyed schedule, fp16 on a
CPU, settings that would keep no checkpoint), and the optimizer's parameter groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from framework.config.schema import check_num_threads, parse_duration
from framework.config.signature import resolved, suggest
from framework.errors import Problem


def check_settings(cfg: DictConfig, problems: list[Problem]) -> None:
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return
    resume = resolved(trainer, "resume")
    if resume not in (None, "auto") and isinstance(resume, str) and not Path(resume).is_file():
        problems.append(Problem("trainer.resume", f"trainer.resume={resume}: no such checkpoint file; give a "
                                                  "checkpoint path, auto (this run dir's newest) or null"))
    max_time = resolved(trainer, "max_time")
    if max_time is not None:
        try:
            parse_duration(max_time)
        except ValueError as exc:
            problems.append(Problem("trainer.max_time", str(exc)))
    scheduler = cfg.get("scheduler")
    if isinstance(scheduler, DictConfig) and resolved(scheduler, "over") == "time" and max_time is None:
        problems.append(Problem("scheduler.over", "scheduler.over=time follows the time budget: set trainer.max_time "
                                                  "(e.g. trainer.max_time=10m)"))
    init_from = resolved(trainer, "init_from")
    if isinstance(init_from, str) and not Path(init_from).exists():
        problems.append(Problem("trainer.init_from", f"trainer.init_from={init_from}: no such checkpoint file or run "
                                                     "directory"))
    threads = resolved(trainer, "num_threads")
    try:
        check_num_threads(threads)
    except ValueError as exc:
        problems.append(Problem("trainer.num_threads", f"{exc}"))
    if resolved(trainer, "precision") == "fp16" or resolved(trainer, "eval_precision") == "fp16":
        import torch

        device = resolved(trainer, "device")
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            problems.append(Problem("trainer.precision", "trainer.precision=fp16 needs a CUDA device (this run uses "
                                                         "the CPU); use trainer.precision=bf16 or fp32"))
    if resolved(trainer, "strategy") == "fsdp":
        _check_fsdp(trainer, problems)
    _check_checkpoints_kept(trainer, problems)


def _check_fsdp(trainer: DictConfig, problems: list[Problem]) -> None:
    """What sharded training does not do (yet): say so before a run starts."""
    refused = [("ema_decay", resolved(trainer, "ema_decay") is not None, "the weight average is not sharded"),
               ("unfreeze_at", resolved(trainer, "unfreeze_at") is not None, "frozen modules stay frozen when sharded"),
               ("precision", "fp16" in (resolved(trainer, "precision"), resolved(trainer, "eval_precision")),
                "fp16's loss scaling is not sharded; use trainer.precision=bf16"),
               ("eval_precision", resolved(trainer, "precision") == "bf16" and resolved(trainer, "eval_precision") == "fp32",
                "under trainer.precision=bf16 the shards gather bf16 parameters for evaluation too")]
    for key, present, why in refused:
        if present:
            problems.append(Problem(f"trainer.{key}", f"trainer.{key} with trainer.strategy=fsdp: {why}; use "
                                                      "trainer.strategy=ddp for it"))


def _check_checkpoints_kept(trainer: DictConfig, problems: list[Problem]) -> None:
    """Settings under which a run would keep no checkpoint: its trained weights would be lost."""
    ck = trainer.get("checkpoint")
    if not isinstance(ck, DictConfig):
        return
    if resolved(ck, "keep_last") == 0 and resolved(ck, "keep_best") == 0:
        problems.append(Problem("trainer.checkpoint.keep_last", "trainer.checkpoint.keep_last=0 with keep_best=0 "
                                "keeps no checkpoint: the trained model would be deleted as soon as it is written; "
                                "keep at least one (e.g. trainer.checkpoint.keep_last=1)"))
    if resolved(ck, "every_epoch") is False and not resolved(ck, "every_n_steps"):
        problems.append(Problem("trainer.checkpoint.every_epoch", "trainer.checkpoint.every_epoch=false with "
                                "every_n_steps=0 writes no checkpoint: nothing trained would be kept; set "
                                "every_epoch=true or every_n_steps to a number of steps"))


GROUP_KEYS = {"match": str, "lr_scale": (int, float), "layer_decay": (int, float)}


def check_groups(groups: Any, problems: list[Problem]) -> None:
    """``optimizer.groups``: a list of ``{match, lr_scale, layer_decay}`` (the last two optional, > 0)."""
    if groups is None:
        return
    if not isinstance(groups, ListConfig):
        problems.append(Problem("optimizer.groups", "optimizer.groups: expected a list of {match: pattern, lr_scale: "
                                                    "number}"))
        return
    for i, entry in enumerate(groups):
        key = f"optimizer.groups[{i}]"
        if not isinstance(entry, DictConfig) or "match" not in entry:
            problems.append(Problem(key, f"{key}: expected {{match: pattern, lr_scale: number}}"))
            continue
        for name in entry:
            kind = GROUP_KEYS.get(str(name))
            value = entry[name]
            if kind is None:
                problems.append(Problem(key, f"{key}.{name}: unknown key; {suggest(str(name), list(GROUP_KEYS), key + '.')}"))
            elif not isinstance(value, kind) or isinstance(value, bool) or (kind is not str and value <= 0):
                problems.append(Problem(key, f"{key}.{name}={value!r}: expected "
                                             f"{'a pattern' if kind is str else 'a number > 0'}"))
