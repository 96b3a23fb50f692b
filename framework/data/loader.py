"""The one way the framework turns a dataset into batches: ``cfg.batching``'s sampler over
the dataset's lengths, the collate function, the DataLoader settings. Training, the config
summary (``framework.validate``), ``prepare stats`` and the benchmarks all build their
samplers and loaders here, so what they report is what training does.

A dataset of shards (:class:`framework.data.shards.ShardDataset`) is streamed instead: its
batches follow the sampler's settings but are planned in the order the shards are read
(:mod:`framework.data.stream`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
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


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the main process decides when to stop; a worker killed by
    a Ctrl-C or a scheduler's SIGTERM to the whole process group would only break the batch
    being loaded, so both are ignored. A SIGTERM sent by the main process itself (its shutdown
    of the workers, also as it exits after an error) still ends the worker: ignored, it would
    leave the main process waiting for the worker forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no sender to tell by (macOS): the main process' shutdown may wait
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by the thread below only
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), name="SIGTERM from the main process",
                     daemon=True).start()


def _end_on_sigterm_from(main: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main:
        pass  # the process group's stop request: the main process stops after its step
    os._exit(0)


def dataset_ids(dataset: Any) -> list[str] | None:
    """The examples' ids, where the dataset knows them without reading audio."""
    ids = getattr(dataset, "ids", None)
    if ids is None and hasattr(dataset, "entries"):  # a manifest's entries
        ids = [entry.id for entry in dataset.entries]
    return [str(i) for i in ids] if ids is not None else None
