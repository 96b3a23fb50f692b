"""How the model runs in a process: activation checkpointing of the chosen blocks, the
data-parallel wrapper under torchrun, ``torch.compile``."""

from __future__ import annotations

import logging

import torch
from torch import nn

from framework.config.schema import TrainerConfig
from framework.trainer.activation_checkpointing import apply_activation_checkpointing
from framework.trainer.distributed import DistEnv

log = logging.getLogger(__name__)


def wrap_model(module: nn.Module, options: TrainerConfig, dist: DistEnv) -> nn.Module:
    """What runs forward in training: ``module`` (changed in place by activation
    checkpointing) inside DistributedDataParallel when there are several ranks, compiled
    when ``trainer.compile``. State dicts are taken from ``module`` itself."""
    if options.activation_checkpointing:
        wrapped = apply_activation_checkpointing(module, list(options.activation_checkpointing))
        log.info("activation checkpointing: %s", ", ".join(wrapped))
    model = module
    if dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    return torch.compile(model) if options.compile else model
