"""Gradient accumulation: group micro-batches into optimizer steps and weight their losses.

Each micro-batch's loss is a mean over its examples; weighting it by
``examples_in_micro_batch * world_size / examples_in_step_on_all_ranks`` makes the
accumulated (and DDP-averaged) gradient equal to that of one big batch, also when
dynamic batches differ in size. The last window of an epoch may be shorter; it is
stepped, not dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def windows(batches: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of ``size`` items; the last group may be shorter."""
    if size < 1:
        raise ValueError(f"trainer.grad_accumulation must be >= 1, got {size}")
    window: list[T] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def loss_weights(sizes: list[int], global_total: int | None = None, world_size: int = 1) -> list[float]:
    """Weights for the micro-batch losses of one step (see the module doc)."""
    total = global_total if global_total is not None else sum(sizes)
    return [n * world_size / total for n in sizes]


@dataclass
class Window:
    """The micro-batches of one optimizer step."""

    batches: list[Any]  # the usable ones (examples the dataset could not read left out)
    fetched: int  # micro-batches taken from the loader, for the epoch position
    lengths_s: float  # sum of the examples' lengths, for throughput


def limited(n: int, limit: int | None) -> int:
    """``n`` batches, or fewer under ``limit`` (``trainer.limit_batches``)."""
    return min(n, limit or n)


def step_windows(loader: Iterable[Any], size: int, start: int, limit: int | None,
                 waited: Callable[[float], None], usable: Callable[[Any], bool],
                 waiting: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> Iterator[Window]:
    """The rest of an epoch from micro-batch ``start`` (up to ``limit`` in all), in windows of
    ``size`` micro-batches; ``waited`` receives the seconds spent waiting for each batch, which
    runs inside ``waiting()``. A stop signal or the time budget ending a wait
    (:class:`WaitInterrupted`) ends the windows with an empty one, whose step the loop's stop
    check refuses."""
    batches = itertools.islice(loader, max(0, limit - start)) if limit else loader
    sampler = getattr(loader, "batch_sampler", None)
    lengths = getattr(getattr(loader, "dataset", None), "lengths", None)
    plan = sampler.rank_batches()[start:] if hasattr(sampler, "rank_batches") else None
    position, interrupted = 0, []
    for raw in windows(_timed(batches, waited, waiting, interrupted), size):
        seconds = 0.0
        if plan is not None and lengths is not None:
            seconds = float(sum(lengths[plan[position + i]].sum() for i in range(len(raw))))
        position += len(raw)
        yield Window([b for b in raw if usable(b)], len(raw), seconds)
    if interrupted:
        yield Window([], 0, 0.0)


def _timed(batches: Iterable[T], waited: Callable[[float], None], waiting: Callable[[], AbstractContextManager],
           interrupted: list[bool]) -> Iterator[T]:
    from framework.trainer.stopping import WaitInterrupted, each_waited

    t0 = time.perf_counter()
    try:
        for batch in each_waited(batches, waiting):
            waited(time.perf_counter() - t0)
            yield batch
            t0 = time.perf_counter()
    except WaitInterrupted:
        waited(time.perf_counter() - t0)  # the time budget's end may have come in a long wait: it counts
        interrupted.append(True)
