"""The ``augment=`` config group: what a training batch goes through, in training only.

Waveforms pass speed perturbation, then quiet padding, then additive noise, where the
features are computed (``features.where``: batch-wise on the training device, or per example
in the DataLoader workers); features then pass SpecAugment, batch-wise. Evaluation and
inference never augment. Speed perturbation makes utterances up to ``1 / min(factors)`` times
longer and quiet padding adds up to ``lead_s + tail_s``: the training batch sampler budgets
with each length so bounded (:meth:`Augmentation.longest`), so a batch never exceeds
``batching.max_batch_length``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from framework.augment.noise import AddNoise
from framework.augment.quiet import QuietPadding
from framework.augment.specaugment import SpecAugment
from framework.augment.speed import SpeedPerturbation


class Augmentation(nn.Module):
    def __init__(self, speed: SpeedPerturbation | None = None, noise: AddNoise | None = None,
                 specaugment: SpecAugment | None = None, quiet: QuietPadding | None = None) -> None:
        super().__init__()
        self.speed = speed
        self.quiet = quiet
        self.noise = noise
        self.specaugment = specaugment

    @property
    def on_waveforms(self) -> bool:
        return any(step is not None for step in (self.speed, self.quiet, self.noise))

    def longest(self, seconds: np.ndarray) -> np.ndarray:
        """The longest each example of ``seconds`` can become."""
        factor = self.speed.length_factor if self.speed is not None else 1.0
        return seconds * factor + (self.quiet.extra_s if self.quiet is not None else 0.0)

    def waveform(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in (self.speed, self.quiet, self.noise):
            if step is not None:
                wav, lengths = step(wav, lengths)
        return wav, lengths

    def spectrogram(self, feats: torch.Tensor) -> torch.Tensor:
        return self.specaugment(feats) if self.specaugment is not None else feats

    def describe(self) -> str:
        parts = [name for name in ("speed", "quiet", "noise", "specaugment") if getattr(self, name) is not None]
        return " + ".join(parts) or "none"
