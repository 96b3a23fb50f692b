"""Gradient accumulation: group micro-batches into optimizer steps and weight their losses.

Each micro-batch's loss is a mean over its examples; weighting it by
``examples_in_micro_batch * world_size / examples_in_step_on_all_ranks`` makes the
accumulated (and DDP-averaged) gradient equal to that of one big batch, also when
dynamic batches differ in size. The last window of an epoch may be shorter; it is
stepped, not dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

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
