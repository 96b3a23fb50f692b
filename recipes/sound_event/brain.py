"""Sound event detection: is there an event in this second of a long recording?

windows read lazily from an HDF5 recording -> log-mel features -> a 1-channel image ->
WideResNet -> event / no event; accuracy, precision, recall and F1 of the event class.

Run: python -m framework.train recipe=sound_event [overrides]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from framework.brain import Brain, Stage
from framework.metrics import ClassificationStats


class EventClassifier(nn.Module):
    """``(waveform windows [B, S], lengths) -> logits``: features as a 1-channel image, then the
    model, as evaluation computes them, as one module for ``framework.export``."""

    def __init__(self, features: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, _ = self.features(inputs, lengths)
        return self.model(feats.transpose(1, 2).unsqueeze(1))


class SoundEventBrain(Brain):
    model_arguments = ("in_channels", "num_classes")

    def build_model(self, train_set) -> nn.Module:
        return instantiate(self.cfg.model, in_channels=1, num_classes=2)

    def compute_forward(self, batch, stage: Stage) -> torch.Tensor:
        feats, _ = self.features(batch.inputs, batch.inputs_lens, augment=stage == Stage.TRAIN)
        return self.model(feats.transpose(1, 2).unsqueeze(1))  # [B, 1, bins, frames]

    def inference_model(self, features: nn.Module) -> nn.Module:
        """The exported module (framework.export), around the exportable ``features``."""
        return EventClassifier(features, self.module)

    def compute_objectives(self, logits, batch, stage: Stage) -> torch.Tensor:
        if stage != Stage.TRAIN:
            self.stats.update(logits, batch.label)
        return F.cross_entropy(logits.float(), batch.label)

    def on_stage_start(self, stage: Stage, epoch: int) -> None:
        self.stats = ClassificationStats(self.device, positive=1)

    def on_stage_end(self, stage: Stage, loss: float, epoch: int) -> dict[str, float]:
        return {"loss": loss} if stage == Stage.TRAIN else {"loss": loss, **self.stats.compute()}
