"""How the model runs in a process: activation checkpointing of the chosen blocks, the
data-parallel wrapper or sharding under torchrun, ``torch.compile``."""

from __future__ import annotations

import logging

import torch
from torch import nn

from framework.config.schema import TrainerConfig
from framework.trainer.activation_checkpointing import apply_activation_checkpointing
from framework.trainer.distributed import DistEnv
from framework.trainer.fsdp import shard
from framework.trainer.precision import DTYPES

log = logging.getLogger(__name__)


def checkpoint_activations(module: nn.Module, options: TrainerConfig) -> None:
    """Recomputes ``trainer.activation_checkpointing``'s blocks in the backward pass (in place, once)."""
    if options.activation_checkpointing:
        wrapped = apply_activation_checkpointing(module, list(options.activation_checkpointing))
        log.info("activation checkpointing: %s", ", ".join(wrapped))


def say_strategy(options: TrainerConfig, dist: DistEnv) -> None:
    """A sharded run in one process trains the whole model: said once, as it is not what was asked."""
    if options.strategy == "fsdp" and not dist.enabled:
        log.info("trainer.strategy=fsdp in one process: nothing to shard over, the model trains whole (start "
                 "several ranks with torchrun to shard it)")


def wrap_model(module: nn.Module, options: TrainerConfig, dist: DistEnv) -> nn.Module:
    """What runs forward in training: with several ranks, ``module`` inside
    DistributedDataParallel (over the parameters that train now) or sharded in place
    (``trainer.strategy=fsdp``, :mod:`framework.trainer.fsdp`); compiled when
    ``trainer.compile``. State dicts are taken from ``module`` itself."""
    model = module
    if dist.enabled and options.strategy == "fsdp":
        model = shard(module, list(options.fsdp_units), dist.device, DTYPES[options.precision])
    elif dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    # dynamic=False: one graph per batch shape. With symbolic shapes (the default after a second
    # shape) inductor's backward of the masked convolutions fails a stride check in torch 2.11.
    return torch.compile(model, dynamic=False) if options.compile else model
