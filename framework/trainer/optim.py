"""Optimizers that need more than a ``_target_``."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw8bit(params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas=(0.9, 0.999), weight_decay: float = 0.01,
              eps: float = 1e-8) -> torch.optim.Optimizer:
    """8-bit AdamW from bitsandbytes (``pip install 'framework[bnb]'``); CUDA only."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError(
            "optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes (GPU machines only), "
            "or use optimizer=adamw"
        ) from None
    params = list(params)
    if not params or params[0].device.type != "cuda":
        raise ValueError("optimizer=adamw8bit runs on CUDA only; this model is on the CPU: use optimizer=adamw")
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
