"""Sharded data parallelism (``trainer.strategy=fsdp``) through PyTorch's ``fully_shard``.

Under torchrun, every rank keeps only its shard of each parameter, gradient and optimizer
state (DDP keeps all of them on every rank): ``fully_shard`` is applied to each unit
(``trainer.fsdp_units``, module-name patterns; by default every block of the model's
``nn.ModuleList`` stacks, e.g. ``blocks.0``, ``rnns.3``), then to the whole model, which
shards what no unit holds. A unit's parameters are gathered for its forward and backward
and freed after; activation checkpointing, applied before sharding, composes with it.
Mixed precision is autocast's, as under DDP: parameters are gathered and gradients reduced
in fp32. (FSDP's own bf16 parameter policy would run batch-norm layers with bf16 weights
beside fp32 running statistics, which the CPU kernels refuse.)

Checkpoints stay the run's ordinary single files, written by rank 0: the model's and the
optimizer's full states are gathered through ``torch.distributed.checkpoint.state_dict``
and stored exactly as a single process stores them (the optimizer's state indexed by
parameter position), so a checkpoint written by N sharded ranks loads in one process, under
DDP or at another world size, and the other way round.

Evaluation gathers every unit's parameters once for the whole pass (:func:`unsharded`):
evaluation shards the data without duplicates, so ranks may run different numbers of
batches, and a sharded forward would wait for a rank that has none left.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from framework.errors import UserError

log = logging.getLogger(__name__)


def default_units(module: nn.Module) -> list[str]:
    """Every element of the model's ``nn.ModuleList`` stacks (the encoder's blocks)."""
    return [f"{name}.{i}" if name else str(i) for name, m in module.named_modules()
            if isinstance(m, nn.ModuleList) for i in range(len(m))]


def shard(module: nn.Module, patterns: list[str], device: torch.device) -> nn.Module:
    """``module`` sharded in place over all ranks (a no-op when it already is)."""
    from torch.distributed import get_world_size
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module, FSDPModule):
        return module
    names = [name for name, _ in module.named_modules() if name]
    units = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)] if patterns else default_units(module)
    if patterns and not units:
        raise UserError(f"trainer.fsdp_units={list(patterns)} matches no module of {type(module).__name__} (its "
                        f"modules: {', '.join(n for n in names if '.' not in n)})")
    units = [u for u in units if not any(u.startswith(other + ".") for other in units)]  # outermost only
    mesh = init_device_mesh(device.type, (get_world_size(),))
    for name in units:
        fully_shard(module.get_submodule(name), mesh=mesh)
    fully_shard(module, mesh=mesh)
    log.info("fsdp: %d units and the model sharded over %d ranks", len(units), get_world_size())
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


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Every unit's parameters gathered for the block (no collective inside it), and rank
    0's buffers on every rank: FSDP does not synchronise buffers as DDP does, so each rank's
    batch-norm statistics follow its own batches, and evaluation, like a checkpoint, uses
    rank 0's."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
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


def _full(rank0_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # saving: gathered onto rank 0's CPU (the others get nothing); loading: every rank holds it all
    return StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)


class ShardedModelState:
    """The model as a checkpoint part: its full state (call on every rank)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module, options=_full(True))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.module, state, options=_full(False))


class ShardedOptimizerState:
    """The optimizer as a checkpoint part, in the format of ``optimizer.state_dict()`` (state
    keyed by parameter position across the groups), whatever the world size."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = module, optimizer

    def names(self) -> list[str]:
        by_id = {id(p): name for name, p in self.module.named_parameters()}
        return [by_id[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(self.module, self.optimizer, options=_full(True))
        if not full:  # not rank 0
            return {}
        position = {name: i for i, name in enumerate(self.names())}
        return {"state": {position[name]: s for name, s in full["state"].items()},
                "param_groups": [{**g, "params": [position[n] for n in g["params"]]} for g in full["param_groups"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        names = self.names()
        try:
            full = {"state": {names[int(i)]: s for i, s in state["state"].items()},
                    "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                     for g in state["param_groups"]]}
        except IndexError:
            raise ValueError("the optimizer state holds more parameters than this model") from None
        set_optimizer_state_dict(self.module, self.optimizer, full, options=_full(False))
