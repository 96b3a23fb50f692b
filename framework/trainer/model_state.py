"""The model and the optimizer as checkpoint parts, whether the model is sharded or not.

Unsharded (one process, DDP) they save and load as ``module.state_dict()`` and
``optimizer.state_dict()`` always did. Sharded (``trainer.strategy=fsdp``) each rank's part
is its shards, DTensors from ``torch.distributed.checkpoint.state_dict`` with the optimizer's
state keyed by parameter name; :meth:`framework.trainer.state.TrainState.save` hands the
parts marked ``sharded`` to :meth:`framework.trainer.checkpoint.Checkpointer.save_shards`.
Loading takes any of the formats into either kind of model: a :class:`Shards` reference
(written by sharded ranks, any number of them) and a whole state, keyed by position (a
single process' optimizer) or by name (a sharded run's, read whole).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from framework.trainer.checkpoint import Shards
from framework.trainer.fsdp import is_sharded, share_rank0_buffers


def _whole():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True)  # every rank passes the whole state; each keeps its shards


class ModelState:
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def sharded(self) -> bool:
        return is_sharded(self.module)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.sharded:
            return self.module.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        # buffers are whole on every rank, and torch.distributed.checkpoint writes one rank's
        # copy (whichever it chooses): make that rank 0's, as evaluation uses
        share_rank0_buffers(self.module)
        return get_model_state_dict(self.module)

    def load_state_dict(self, state: dict[str, torch.Tensor] | Shards) -> None:
        if not self.sharded:
            self.module.load_state_dict(state.read() if isinstance(state, Shards) else state)
            return
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        if isinstance(state, Shards):
            shards = get_model_state_dict(self.module)
            state.load_into(shards)
            set_model_state_dict(self.module, shards)
        else:
            set_model_state_dict(self.module, state, options=_whole())


class OptimizerState:
    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = module, optimizer

    @property
    def sharded(self) -> bool:
        return is_sharded(self.module)

    def names(self) -> list[str]:
        """The parameters' names in the optimizer's order (across its groups)."""
        by_id = {id(p): name for name, p in self.module.named_parameters()}
        return [by_id[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer)

    def load_state_dict(self, state: dict[str, Any] | Shards) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        if isinstance(state, Shards) and self.sharded:
            shards = get_optimizer_state_dict(self.module, self.optimizer)
            state.load_into(shards)
            set_optimizer_state_dict(self.module, self.optimizer, shards)
            return
        state = state.read() if isinstance(state, Shards) else state
        if self.sharded:
            set_optimizer_state_dict(self.module, self.optimizer, self._by_name(state), options=_whole())
        else:
            self.optimizer.load_state_dict(self._by_position(state))

    def _by_name(self, state: dict[str, Any]) -> dict[str, Any]:
        if _keyed_by_name(state):
            return state
        names = self.names()
        try:
            return {"state": {names[int(i)]: s for i, s in state["state"].items()},
                    "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                     for g in state["param_groups"]]}
        except IndexError:
            raise ValueError("the optimizer state holds more parameters than this model") from None

    def _by_position(self, state: dict[str, Any]) -> dict[str, Any]:
        if not _keyed_by_name(state):
            return state
        position = {name: i for i, name in enumerate(self.names())}
        try:
            return {"state": {position[name]: s for name, s in state["state"].items()},
                    "param_groups": [{**g, "params": [position[n] for n in g["params"]]}
                                     for g in state["param_groups"]]}
        except KeyError as exc:
            raise ValueError(f"the optimizer state holds parameter {exc.args[0]!r}, which this model lacks") from None


def _keyed_by_name(state: dict[str, Any]) -> bool:
    return any(isinstance(p, str) for g in state.get("param_groups", []) for p in g.get("params", []))
