"""The one way the framework turns a dataset into batches: ``cfg.batching``'s sampler over
the dataset's lengths, the collate function, the DataLoader settings. Training, the config
summary (``framework.validate``), ``prepare stats`` and the benchmarks all build their
samplers and loaders here, so what they report is what training does.

A dataset of shards (:class:`framework.data.shards.ShardDataset`) is streamed instead: its
batches follow the sampler's settings but are planned in the order the shards are read
(:mod:`framework.data.stream`).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from framework.data.batching import LengthBatchSampler
from framework.data.collate import collate
from framework.data.shards import ShardDataset
from framework.data.stream import ShardLoader, ShardPlan


def make_sampler(batching: DictConfig, lengths: np.ndarray, seed: int, train: bool = True,
                 ids: list[str] | None = None) -> LengthBatchSampler:
    """``batching``'s sampler over ``lengths``. Evaluation (``train=False``) keeps the data in
    order, drops nothing and shards without repeating examples across ranks."""
    overrides: dict[str, Any] = {} if train else {"shuffle": False, "drop_last": False}
    if ids is not None and "DynamicBatchSampler" in str(batching.get("_target_", "")):
        overrides["ids"] = ids  # examples left out are named by id
    return instantiate(batching, lengths=lengths, seed=seed, even=train, _convert_="all", **overrides)


def make_loader(dataset: Dataset, sampler: LengthBatchSampler, num_workers: int, seed: int,
                pin_memory: bool = False, transform: Callable | None = None) -> DataLoader | ShardLoader:
    """A DataLoader of ``sampler``'s batches of ``dataset`` (each example through
    ``transform`` in the workers, when given), padded by :func:`framework.data.collate.collate`.
    For a dataset of shards, a :class:`ShardLoader` whose ``batch_sampler`` is the stream's
    plan, made with ``sampler``'s settings, each worker reading its own shards."""
    if num_workers > 0:
        kill_workers_at_exit()
    if isinstance(dataset, ShardDataset):
        plan = ShardPlan(dataset, sampler, num_workers)
        return ShardLoader(dataset, plan, num_workers, seed, pin_memory, transform,
                           worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
    if transform is not None:
        from framework.data.mapped import MappedInputs

        dataset = MappedInputs(dataset, transform)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        # a private generator keeps the global RNG untouched, which exact resume needs
        generator=torch.Generator().manual_seed(seed),
    )


def end_workers(loaders: Iterable[Any]) -> None:
    """Ends the workers of ``loaders`` at once, when a stop signal or the time budget ends the
    run's training: torch's own shutdown would wait up to 5 s for each (longer for one stuck in
    a read), and a second Ctrl-C meanwhile would break that wait with a traceback. A loader
    stays usable: its next iteration starts new workers."""
    for loader in loaders:
        batches = getattr(loader, "_iterator", None)  # a persistent DataLoader's, a ShardLoader's running one
        if batches is not None:
            stop_workers(batches)
            loader._iterator = None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the main process decides when to stop; a worker killed by
    a Ctrl-C or a scheduler's SIGTERM to the whole process group would only break the batch
    being loaded. (Ignored for the whole process, whatever threads it started before this.)"""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def stop_workers(batches: Any) -> None:
    """Ends the workers of the DataLoader iterator ``batches`` at once: taken off torch's watch
    of its workers (which would report their deaths as a failure), then SIGKILLed (they ignore
    SIGTERM; the iterator's own shutdown would give each 5 s to finish first). A worker holds
    nothing to save."""
    from torch.utils.data._utils import signal_handling

    if getattr(batches, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False
    _kill(getattr(batches, "_workers", ()))


def _kill(processes: Iterable[Any]) -> None:
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)


def _kill_workers_left() -> None:
    """At exit, the daemonic child processes still running (DataLoader workers): multiprocessing's
    own exit handler would SIGTERM them, which the workers ignore, then wait for each, forever
    for one stuck in a read (an error ended the run with its iterator held by the traceback)."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # their deaths are expected now
    _kill(p for p in multiprocessing.active_children() if p.daemon)


_killing_at_exit = False


def kill_workers_at_exit() -> None:
    """Registers the end of the DataLoader workers left at exit, before multiprocessing's own
    exit handler (atexit runs the later registration first)."""
    import multiprocessing.util  # noqa: F401  (its exit handler registered first: ours runs before it)

    global _killing_at_exit
    if not _killing_at_exit:
        _killing_at_exit = True
        atexit.register(_kill_workers_left)


def dataset_ids(dataset: Any) -> list[str] | None:
    """The examples' ids, where the dataset knows them without reading audio."""
    ids = getattr(dataset, "ids", None)
    if ids is None and hasattr(dataset, "entries"):  # a manifest's entries
        ids = [entry.id for entry in dataset.entries]
    return [str(i) for i in ids] if ids is not None else None
