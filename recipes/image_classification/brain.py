"""Image classification with a WideResNet, the whole story in one file.

uint8 images from HDF5 -> scaled to [-2, 2] -> (training: random shifts of up to 2 px) ->
WideResNet -> cross-entropy; accuracy on validation and test.

Run: python -m framework.train recipe=image_classification [overrides]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from framework.brain import Brain, Stage
from framework.metrics import ClassificationStats


def random_shift(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Pads by ``pad`` and crops back at a random offset per image (one gather, no loop)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=images.device)
    rows = (torch.arange(h, device=images.device)[None, :, None] + dy).expand(b, h, w)
    cols = (torch.arange(w, device=images.device)[None, None, :] + dx).expand(b, h, w)
    idx = (rows * (w + 2 * pad) + cols).reshape(b, 1, -1).expand(-1, images.shape[1], -1)
    return padded.flatten(2).gather(2, idx).reshape(images.shape)


class ImageClassifier(nn.Module):
    """``(uint8 images [B, C, H, W], lengths) -> logits``: what evaluation computes, as one
    module for ``framework.export`` (the parity check there compares it with compute_forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() / 255.0 - 0.5) / 0.25)


class ImageClassificationBrain(Brain):
    model_arguments = ("in_channels", "num_classes")

    def build_model(self, train_set) -> nn.Module:
        return instantiate(self.cfg.model, in_channels=self.cfg.in_channels, num_classes=self.cfg.num_classes)

    def compute_forward(self, batch, stage: Stage) -> torch.Tensor:
        x = batch.inputs.float() / 255.0
        if stage == Stage.TRAIN:
            x = random_shift(x)
        return self.model((x - 0.5) / 0.25)

    def inference_model(self, features: nn.Module) -> nn.Module:
        """The exported module (framework.export); images need no features."""
        return ImageClassifier(self.module)

    def compute_objectives(self, logits, batch, stage: Stage) -> torch.Tensor:
        if stage != Stage.TRAIN:
            self.stats.update(logits, batch.label)
        return F.cross_entropy(logits.float(), batch.label)

    def on_stage_start(self, stage: Stage, epoch: int) -> None:
        self.stats = ClassificationStats(self.device)

    def on_stage_end(self, stage: Stage, loss: float, epoch: int) -> dict[str, float]:
        return {"loss": loss} if stage == Stage.TRAIN else {"loss": loss, **self.stats.compute()}
