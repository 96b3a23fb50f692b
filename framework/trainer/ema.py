"""Exponential moving average of the weights (``trainer.ema_decay``).

Updated after every applied optimizer step; validation, test and inference use the
averaged weights, and checkpoints keep them. Floating-point parameters and buffers
(batch-norm running statistics too) are averaged; integer buffers follow the model. The
decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first
steps' random weights fade quickly (short runs would otherwise evaluate an average
dominated by them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightEMA:
    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be between 0 and 1 (exclusive), got {decay}")
        self.decay = decay
        self.updates = 0
        state = module.state_dict()
        self.names = [k for k, v in state.items() if v.is_floating_point()]
        self._live = [state[k] for k in self.names]  # share storage with the module's tensors
        self.averaged = [t.detach().clone() for t in self._live]

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.averaged, self._live, 1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The module holds the averaged weights inside the block, its own ones again after."""
        with torch.no_grad():
            own = [t.clone() for t in self._live]
            torch._foreach_copy_(self._live, self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._live, own)

    def averaged_state(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.averaged))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "averaged": self.averaged_state()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        with torch.no_grad():
            for name, tensor in zip(self.names, self.averaged):
                tensor.copy_(state["averaged"][name])
