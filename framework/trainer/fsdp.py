"""Sharded data parallelism (``trainer.strategy=fsdp``) through PyTorch's ``fully_shard``.

Under torchrun, every rank keeps only its shard of each parameter, gradient and optimizer
state (DDP keeps all of them on every rank): ``fully_shard`` is applied to each unit
(``trainer.fsdp_units``, module-name patterns; by default every block of the model's
``nn.ModuleList`` stacks, e.g. ``blocks.0``, ``rnns.3``), then to the whole model, which
shards what no unit holds. A unit's parameters are gathered for its forward and backward
and freed after; activation checkpointing, applied before sharding, composes with it.
With ``trainer.precision=bf16`` the units gather their parameters in bf16 (FSDP's
``MixedPrecisionPolicy``: half the all-gather traffic and the unsharded parameters' memory)
and reduce gradients in fp32; the sharded parameters and the optimizer stay fp32. Batch-norm
layers are units of their own that keep fp32 parameters beside their fp32 running statistics
(the CPU kernels refuse bf16 weights with fp32 statistics), and autocast stays on to cast
activations where a bf16 unit meets an fp32 one. Evaluation uses the same bf16 parameters.

Checkpoints are sharded: every rank writes its own shards of the model and the optimizer
with ``torch.distributed.checkpoint`` (:mod:`framework.trainer.checkpoint`, parts in
:mod:`framework.trainer.model_state`), nothing is gathered; a checkpoint written by N
sharded ranks loads at another world size, in one process, or under DDP, and the other way
round.

Evaluation gathers every unit's parameters once for the whole pass (:func:`unsharded`):
evaluation shards the data without duplicates, so ranks may run different numbers of
batches, and a sharded forward would wait for a rank that has none left.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Iterator

import torch
from torch import nn

from framework.errors import UserError

log = logging.getLogger(__name__)


def default_units(module: nn.Module) -> list[str]:
    """Every element of the model's ``nn.ModuleList`` stacks (the encoder's blocks)."""
    return [f"{name}.{i}" if name else str(i) for name, m in module.named_modules()
            if isinstance(m, nn.ModuleList) for i in range(len(m))]


def shard(module: nn.Module, patterns: list[str], device: torch.device,
          param_dtype: torch.dtype | None = None) -> nn.Module:
    """``module`` sharded in place over all ranks (a no-op when it already is); with
    ``param_dtype``, parameters gathered in that dtype (batch norms' in fp32)."""
    from torch.distributed import get_world_size
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(module, FSDPModule):
        return module
    names = [name for name, _ in module.named_modules() if name]
    units = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)] if patterns else default_units(module)
    if patterns and not units:
        raise UserError(f"trainer.fsdp_units={list(patterns)} matches no module of {type(module).__name__} (its "
                        f"modules: {', '.join(n for n in names if '.' not in n)})")
    units = [u for u in units if not any(u.startswith(other + ".") for other in units)]  # outermost only
    mesh = init_device_mesh(device.type, (get_world_size(),))
    policy, precision = {}, ""
    if param_dtype is not None:
        # innermost first, as fully_shard requires: each batch norm a unit that stays fp32
        norms = [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for name in norms:
            fully_shard(module.get_submodule(name), mesh=mesh,
                        mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32))
        units = [u for u in units if u not in norms]
        policy = {"mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)}
        precision = (f"; parameters gathered in {str(param_dtype).removeprefix('torch.')} ({len(norms)} batch norms "
                     "in fp32), gradients reduced in fp32")
    for name in units:
        fully_shard(module.get_submodule(name), mesh=mesh, **policy)
    fully_shard(module, mesh=mesh, **policy)
    log.info("fsdp: %d units and the model sharded over %d ranks%s", len(units), get_world_size(), precision)
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Gradients reduced across ranks after this backward or not (accumulation's earlier micro-batches)."""
    if enabled:
        return contextlib.nullcontext()
    if is_sharded(model):
        return _no_reduce(model)
    return model.no_sync()  # DDP


@contextlib.contextmanager
def _no_reduce(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def share_rank0_buffers(module: nn.Module) -> None:
    """Rank 0's buffers on every rank (collective)."""
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Every unit's parameters gathered for the block (no collective inside it), and rank
    0's buffers on every rank: FSDP does not synchronise buffers as DDP does, so each rank's
    batch-norm statistics follow its own batches, and evaluation, like a checkpoint, uses
    rank 0's."""
    from torch.distributed.fsdp import FSDPModule

    share_rank0_buffers(module)
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
