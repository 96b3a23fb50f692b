"""What a checkpoint holds, registered by the parts that own it.

Each part of a run that must survive a restart (the model, the optimizer, the scheduler,
the loss scaler, the weight average, the sampler's position, the RNGs, the run's progress)
is registered once under a name with :meth:`TrainState.add_recoverable` (SpeechBrain's
``add_recoverable``): saving (:meth:`TrainState.save`, into the run's :class:`Checkpointer`)
calls every part's ``state_dict()``, resuming its ``load_state_dict()``. Parts registered
with ``weights=True`` are also what evaluation loads (:meth:`TrainState.load_weights`). A
part whose ``state_dict()`` returns None has nothing to save at this moment (the sampler and
the meter at an epoch boundary).

The format is versioned (``format_version``); a checkpoint of format 1 (written before this
registry, with the run's counters at the top level) is read as the same state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from framework.errors import UserError
from framework.trainer.checkpoint import SHARDED, SHARDS, Checkpointer, CheckpointError, rng_state, set_rng_state
from framework.trainer.distributed import barrier, gather_objects

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
PROGRESS_KEYS = ("epoch", "step", "batch_in_epoch", "history", "elapsed_s", "nonfinite_steps")


class Recoverable(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class Progress:
    """How far the run is: epochs completed, optimizer steps applied, micro-batches of the
    current epoch consumed, one history entry per finished epoch, training and validation
    wall time of earlier processes, non-finite steps skipped."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0
    nonfinite_steps: int = 0

    def __post_init__(self) -> None:
        self.restart_clock()

    def restart_clock(self) -> None:
        """This process's share of ``elapsed_s`` counts from now (not saved: a restart's own)."""
        self._clock_from = time.perf_counter()

    def elapsed(self) -> float:
        """Wall time of training and validation in this run, over all its processes."""
        return self.elapsed_s + time.perf_counter() - self._clock_from

    @property
    def position(self) -> tuple[int, int, int]:
        return self.epoch, self.step, self.batch_in_epoch

    def state_dict(self) -> dict[str, Any]:
        return {**asdict(self), "elapsed_s": self.elapsed()}  # this process's share included

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, list(value) if key == "history" else value)

    @property
    def mid_epoch(self) -> bool:
        return self.batch_in_epoch > 0

    def where(self) -> str:
        """The position as the logs name it, epochs counted from 1 as the epoch lines count them:
        ``epoch 4, batch 26, step 110`` in an epoch, ``end of epoch 3, step 84`` between two."""
        if self.mid_epoch:
            return f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}"
        return f"end of epoch {self.epoch}, step {self.step}" if self.epoch else f"step {self.step}"


class PerRank:
    """A part whose state differs between ranks (the RNGs, the epoch's running sums): every
    rank's state is saved (one collective, so every rank saves), and each rank restores its
    own (rank 0's when the checkpoint was written by fewer ranks)."""

    def __init__(self, part: Recoverable, rank: int) -> None:
        self.part, self.rank = part, rank

    def state_dict(self) -> list[Any] | None:
        states = gather_objects(self.part.state_dict())
        return None if all(s is None for s in states) else states

    def load_state_dict(self, states: list[Any]) -> None:
        state = states[self.rank] if self.rank < len(states) else states[0]
        if state is not None:
            self.part.load_state_dict(state)


class MidEpoch:
    """A part that exists only in the middle of an epoch (the sampler's position, the epoch's
    running sums): nothing is saved at an epoch boundary, nothing restored into one."""

    def __init__(self, progress: Progress, save: Callable[[], Any], load: Callable[[Any], None]) -> None:
        self.progress, self.save, self.load = progress, save, load

    def state_dict(self) -> Any:
        return self.save() if self.progress.mid_epoch else None

    def load_state_dict(self, state: Any) -> None:
        if self.progress.mid_epoch:
            self.load(state)


class RNGs:
    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class ModelConfig:
    """The model config the weights were written for: loading weights into another one is
    refused in one line naming the options that differ."""

    def __init__(self, node: DictConfig | dict) -> None:
        self.current = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)

    def state_dict(self) -> dict[str, Any]:
        return self.current

    def check(self, saved: dict[str, Any] | None, path: Path) -> None:
        if saved is None:
            return
        # a key that one side lacks and the other leaves null is an option added since, left off: no difference
        diff = sorted(k for k in set(saved) | set(self.current) if saved.get(k) != self.current.get(k))
        if diff:
            raise CheckpointError(f"checkpoint {path} was written for another model config (differs in: "
                                  f"{', '.join(diff)}); resume with the same model settings or start a new run")


class TrainState:
    """The registry of what a checkpoint holds (see the module doc), saved into ``files``."""

    def __init__(self, files: Checkpointer, progress: Progress, is_main: bool = True) -> None:
        self.files, self.progress, self.is_main = files, progress, is_main
        self.parts: dict[str, Recoverable] = {}
        self.weight_parts: list[str] = []
        self.model_config: ModelConfig | None = None
        self.saved_at: tuple[int, int, int] | None = None  # the progress position of the newest checkpoint

    def add_recoverable(self, name: str, part: Recoverable, weights: bool = False) -> None:
        if name in self.parts:
            raise ValueError(f"a part named {name!r} is already registered")
        self.parts[name] = part
        if weights:
            self.weight_parts.append(name)

    def state_dict(self) -> dict[str, Any]:
        """Every part's state (call on every rank: per-rank parts gather)."""
        state: dict[str, Any] = {"format_version": FORMAT_VERSION}
        if self.model_config is not None:
            state["model_config"] = self.model_config.state_dict()
        for name, part in self.parts.items():
            value = part.state_dict()
            if value is not None:
                state[name] = value
        return state

    def save(self, metrics: dict[str, float] | None = None) -> None:
        """A checkpoint of every part (call on every rank; rank 0 writes it, every rank its
        shards of the parts marked ``sharded``), scored by the validation ``metrics`` when given."""
        state = self.state_dict()
        sharded = {name: state.pop(name) for name in list(state) if getattr(self.parts.get(name), "sharded", False)}
        if sharded:
            shards = self.files.save_shards(sharded, self.progress.step)
            state.update({SHARDS: shards, **{name: {SHARDED: name} for name in sharded}})
        if self.is_main:
            path = self.files.save(state, self.progress.step, metrics)
            log.info("checkpoint %s (%s)", path.name, self.progress.where())
        self.saved_at = self.progress.position
        barrier()

    def save_unless_saved(self) -> None:
        """A checkpoint of the current position, unless the newest one holds it."""
        if self.saved_at != self.progress.position:
            self.save()

    def load_state_dict(self, state: dict[str, Any], path: Path, names: list[str] | None = None) -> None:
        """Restores the registered parts (or only ``names``) from a checkpoint's state."""
        state = upgrade(state, path)
        if self.model_config is not None:
            self.model_config.check(state.get("model_config"), path)
        # the run's settings first: a refused setting is named before any part fails to fit
        for name in sorted(names if names is not None else list(self.parts), key=lambda n: n != "settings"):
            if name in state and state[name] is not None and name in self.parts:
                try:
                    self.parts[name].load_state_dict(state[name])
                except (RuntimeError, KeyError, ValueError) as exc:
                    if isinstance(exc, UserError):
                        raise
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise CheckpointError(f"checkpoint {path}: its {name} state does not fit this run ({first}); "
                                          f"use the settings the run was trained with") from None

    def load_weights(self, which: str, device: Any) -> Path:
        """What evaluation restores, the parts registered with ``weights=True``, from the
        checkpoint ``which`` names (see :meth:`Checkpointer.load_named`); the progress takes
        its step. Returns its path."""
        path, state = self.files.load_named(which, device)
        self.load_state_dict(state, path, self.weight_parts)
        step = (upgrade(state, path).get("progress") or {}).get("step")
        self.progress.step = step if step is not None else self.progress.step
        log.info("weights from %s (step %s%s)", path, step, ", averaged" if "ema" in self.parts else "")
        return path

    def resume(self, target: str | None, device: Any) -> None:
        """Restores every part from the checkpoint ``trainer.resume`` names (null: none;
        ``auto``: this run dir's newest, if any; or a path)."""
        from framework.trainer.resume import checkpoint_to_resume

        found = checkpoint_to_resume(target, self.files, device)
        if found is not None:
            self.load_state_dict(found[1], found[0])
            if found[0].parent.resolve() == self.files.directory.resolve():
                self.saved_at = self.progress.position  # stopped before a step: nothing new to save
            log.info("resumed from %s: %s", found[0], self.progress.where())


def upgrade(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A checkpoint's state in the current format."""
    version = state.get("format_version", 1)
    if version == FORMAT_VERSION:
        return state
    if version == 1:  # the run's counters at the top level, the RNG of rank 0 only
        upgraded = {k: v for k, v in state.items() if k not in PROGRESS_KEYS}
        upgraded["progress"] = {k: state[k] for k in PROGRESS_KEYS if k in state}
        if "rng" in state:
            upgraded["rng"] = [state["rng"]]
        if state.get("meter") is not None:
            upgraded["meter"] = [state["meter"]]
        return upgraded
    raise CheckpointError(f"checkpoint {path} has format version {version}; this framework reads versions 1 to "
                          f"{FORMAT_VERSION}: use the framework version that wrote it, or a newer one")
