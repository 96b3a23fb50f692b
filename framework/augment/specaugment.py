"""SpecAugment (Park et al., 2019): frequency and time masks on features ``[B, T, F]``."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class SpecAugment(nn.Module):
    """``freq_masks`` frequency masks of up to ``freq_width`` bins and ``time_masks`` time
    masks of up to ``time_width`` frames (torchaudio), a different mask per example, each
    example masked with probability ``p``. Identity in eval mode."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: int = 20,
                 p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"specaugment p={p} must be a probability in [0, 1]")
        self.p = p
        self.freq = nn.ModuleList(
            torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True) for _ in range(freq_masks)
        )
        self.time = nn.ModuleList(torchaudio.transforms.TimeMasking(time_width, iid_masks=True) for _ in range(time_masks))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T] as torchaudio expects
        for mask in (*self.freq, *self.time):
            x = mask(x)
        masked = x.squeeze(1).transpose(1, 2)
        if self.p == 1.0:
            return masked
        chosen = (torch.rand(feats.shape[0]) < self.p).to(feats.device)
        return torch.where(chosen[:, None, None], masked, feats)
