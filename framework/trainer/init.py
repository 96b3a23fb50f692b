"""Starting a run from another run's weights (``trainer.init_from``): fine-tuning.

Distinct from resuming: only model weights are taken; the optimizer, the schedule, the step
and the epoch start fresh, and the run writes its own run directory. The source is a
checkpoint file, a run directory (its best checkpoint) or its averaged checkpoint
(``<run dir>/checkpoints/averaged.pt``). The source's evaluation weights are taken: its
weight average when it kept one (``trainer.ema_decay``), the weights it was validated with.

``trainer.init`` chooses what is taken: ``include`` / ``exclude`` parameter-name patterns
(fnmatch, e.g. ``encoder.*``), ``rename`` (a prefix map from the source's names to this
model's), and ``ignore_mismatched`` (a parameter whose shape differs, e.g. the output layer
of a new alphabet, stays at its initialisation instead of being refused). ``init_report.json``
in the run directory lists what was loaded, skipped, renamed and left at initialisation.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from framework.errors import UserError
from framework.files import write_text_atomic
from framework.trainer.checkpoint import AVERAGED, load_checkpoint, materialize, run_checkpointer
from framework.trainer.state import upgrade

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # source name -> this model's name
    excluded: list[str] = field(default_factory=list)  # source names left out by include/exclude
    mismatched: list[str] = field(default_factory=list)  # skipped: another shape (ignore_mismatched)
    unused: list[str] = field(default_factory=list)  # source names this model has no parameter for
    initialised: list[str] = field(default_factory=list)  # this model's names left at their initialisation

    def summary(self) -> str:
        return (f"weights from {self.source}: {len(self.loaded)} loaded ({len(self.renamed)} renamed), "
                f"{len(self.excluded)} excluded, {len(self.mismatched)} of another shape skipped, "
                f"{len(self.unused)} unused, {len(self.initialised)} left at initialisation")


def source_checkpoint(source: str | Path) -> Path:
    """The checkpoint ``trainer.init_from`` names: a file, or a run directory's best one."""
    path = Path(source)
    if path.is_file():
        return path
    if (path / "checkpoints").is_dir():
        checkpoints = run_checkpointer(path)  # the best by the metric the run kept its best by
        found = checkpoints.best() or checkpoints.latest()
        if found is not None:
            return found
        raise UserError(f"trainer.init_from={source}: the run directory holds no checkpoint")
    if not path.exists():
        raise UserError(f"trainer.init_from={source}: no such checkpoint file or run directory")
    raise UserError(f"trainer.init_from={source}: neither a checkpoint file nor a run directory (with checkpoints/); "
                    f"an averaged checkpoint is <run dir>/checkpoints/{AVERAGED}")


def source_weights(path: Path) -> dict[str, torch.Tensor]:
    """The evaluation weights a checkpoint holds (its weight average, when it kept one)."""
    state = materialize(upgrade(load_checkpoint(path), path), parts=("model",))  # not the optimizer's shards
    if "model" not in state:
        raise UserError(f"trainer.init_from={path}: the checkpoint holds no model weights")
    weights = dict(state["model"])
    if state.get("ema"):
        weights.update(state["ema"]["averaged"])
    return weights


def initialise(module: nn.Module, source: str | Path, include: list[str], exclude: list[str],
               rename: dict[str, str], ignore_mismatched: bool) -> InitReport:
    """Copies the selected source weights into ``module`` (in place); see the module doc."""
    path = source_checkpoint(source)
    weights = source_weights(path)
    report = InitReport(str(path.resolve()))  # the file itself, wherever the run was started from
    for patterns, key in ((include, "trainer.init.include"), (exclude, "trainer.init.exclude")):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in weights):
                raise UserError(f"{key}: {pattern!r} matches no parameter of {path} (its names look like "
                                f"{', '.join(list(weights)[:3])}, ...)")
    for prefix in rename:
        if not any(name.startswith(prefix) for name in weights):
            raise UserError(f"trainer.init.rename: no parameter of {path} starts with {prefix!r}")
    own = module.state_dict()
    selected: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        if (include and not any(fnmatch.fnmatchcase(name, p) for p in include)) or \
                any(fnmatch.fnmatchcase(name, p) for p in exclude):
            report.excluded.append(name)
            continue
        target = _renamed(name, rename)
        if target != name:
            report.renamed[name] = target
        if target not in own:
            report.unused.append(name)
        elif own[target].shape != value.shape:
            report.mismatched.append(f"{target} {tuple(value.shape)} -> {tuple(own[target].shape)}")
        else:
            selected[target] = value
    if report.mismatched and not ignore_mismatched:
        raise UserError(f"trainer.init_from={path}: {len(report.mismatched)} parameter(s) have another shape here: "
                        f"{'; '.join(report.mismatched[:4])}; set trainer.init.ignore_mismatched=true to leave them "
                        "at their initialisation (a new output layer), or exclude them (trainer.init.exclude)")
    if not selected:
        raise UserError(f"trainer.init_from={path}: no parameter of the checkpoint fits this model; check "
                        "trainer.init.include / exclude / rename")
    module.load_state_dict(selected, strict=False)
    report.loaded = sorted(selected)
    report.initialised = sorted(set(own) - set(selected))
    return report


def _renamed(name: str, rename: dict[str, str]) -> str:
    for prefix, replacement in rename.items():
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    return name


def copy_run_files(source: str | Path, run_dir: Path, names: list[str]) -> list[str]:
    """Copies what the source run learnt from its data (its alphabet, its feature statistics)
    into this run directory, where the run then finds it instead of fitting it anew."""
    path = Path(source)
    source_dir = path.parent.parent if path.is_file() and path.parent.name == "checkpoints" else path
    copied = []
    for name in names:
        if (source_dir / name).is_file() and not (run_dir / name).exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_dir / name, run_dir / name)
            copied.append(name)
    return copied


def write_report(report: InitReport, run_dir: Path, copied: list[str]) -> None:
    data: dict[str, Any] = {**report.__dict__, "files_taken": copied}
    write_text_atomic(run_dir / "init_report.json", json.dumps(data, indent=1))
    log.info("%s%s", report.summary(), f"; taken from the source run: {', '.join(copied)}" if copied else "")


def take_files(init_from: str | None, run_dir: Path, options: Any, is_main: bool) -> list[str]:
    """``trainer.init.take_files`` of the run ``init_from`` names, copied into this run
    directory by rank 0 before the model is built (it reads them); every rank waits."""
    from framework.trainer import distributed

    taken = copy_run_files(init_from, run_dir, list(options.take_files)) if init_from and is_main else []
    distributed.barrier()
    return taken


def start_from(module: nn.Module, init_from: str, options: Any, run_dir: Path, is_main: bool,
               taken: list[str]) -> None:
    """``trainer.init_from`` with ``trainer.init``'s selection, reported in ``init_report.json``."""
    report = initialise(module, init_from, list(options.include), list(options.exclude), dict(options.rename),
                        options.ignore_mismatched)
    if is_main:
        write_report(report, run_dir, taken)
