"""The parameters an optimizer trains, and their count."""

from __future__ import annotations

from torch import nn


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model))
