"""The ``augment=`` config group: what a training batch goes through, in training only.

Waveforms pass speed perturbation, then additive noise, where the features are computed
(``features.where``: batch-wise on the training device, or per example in the DataLoader
workers); features then pass SpecAugment, batch-wise. Evaluation and inference never
augment. Speed perturbation makes utterances up to ``1 / min(factors)`` times longer: the
training batch sampler budgets with lengths scaled by that bound (``length_factor``), so a
batch never exceeds ``batching.max_batch_length``.
"""

from __future__ import annotations

import torch
from torch import nn

from framework.augment.noise import AddNoise
from framework.augment.specaugment import SpecAugment
from framework.augment.speed import SpeedPerturbation


class Augmentation(nn.Module):
    def __init__(self, speed: SpeedPerturbation | None = None, noise: AddNoise | None = None,
                 specaugment: SpecAugment | None = None) -> None:
        super().__init__()
        self.speed = speed
        self.noise = noise
        self.specaugment = specaugment

    @property
    def on_waveforms(self) -> bool:
        return self.speed is not None or self.noise is not None

    @property
    def length_factor(self) -> float:
        return self.speed.length_factor if self.speed is not None else 1.0

    def waveform(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in (self.speed, self.noise):
            if step is not None:
                wav, lengths = step(wav, lengths)
        return wav, lengths

    def spectrogram(self, feats: torch.Tensor) -> torch.Tensor:
        return self.specaugment(feats) if self.specaugment is not None else feats

    def describe(self) -> str:
        parts = [name for name in ("speed", "noise", "specaugment") if getattr(self, name) is not None]
        return " + ".join(parts) or "none"
