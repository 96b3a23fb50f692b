"""Activation checkpointing of chosen blocks with ``torch.utils.checkpoint`` (non-reentrant).

The recomputation in the backward pass runs batch norm in training mode a second time;
its running statistics are restored afterwards so they are updated once per step, as
without checkpointing. Dropout masks match because checkpoint replays the RNG state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def _checkpointed(module: nn.Module):
    forward = module.forward

    def run(*args, **kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        return checkpoint(
            forward, *args, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _frozen_norm_stats(module)), **kwargs,
        )

    return run


def apply_activation_checkpointing(model: nn.Module, blocks: Sequence[str]) -> list[str]:
    """Wraps the submodules named in ``blocks`` (e.g. ``rnns`` for DeepSpeech2's recurrent
    stack; each child of a ModuleList/Sequential becomes one checkpointed block).
    Returns the names of the wrapped modules."""
    wrapped = []
    for name in blocks:
        try:
            target = model.get_submodule(name)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise ValueError(
                f"trainer.activation_checkpointing names {name!r}, which {type(model).__name__} does not have; "
                f"its blocks are: {children}"
            ) from None
        parts = list(target.named_children()) if isinstance(target, (nn.ModuleList, nn.Sequential)) else [("", target)]
        for child_name, child in parts:
            child.forward = _checkpointed(child)
            wrapped.append(f"{name}.{child_name}" if child_name else name)
    return wrapped
