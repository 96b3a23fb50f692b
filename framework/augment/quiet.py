"""Quiet around each utterance: a random stretch of low noise before and after it, as a
stretch cut from a long recording has.

Corpora of single utterances are often trimmed (speech from the first sample); a model
trained only on those misreads audio whose speech starts a few milliseconds later, or after
room noise, which is what ``framework.transcribe --split-at-pauses`` feeds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from framework.data.collate import length_mask


class QuietPadding(nn.Module):
    """With probability ``p`` per example, white noise at a level drawn uniformly from
    ``level_db`` (dBFS, RMS) for a time drawn uniformly from ``[0, lead_s]`` before the
    utterance and from ``[0, tail_s]`` after it. ``wav`` must be zero-padded; the result is
    too, and an example left alone is unchanged. Examples grow by at most ``extra_s``."""

    def __init__(self, sample_rate: int, lead_s: float = 0.3, tail_s: float = 0.3,
                 level_db: Sequence[float] = (-70.0, -50.0), p: float = 1.0) -> None:
        super().__init__()
        low, high = (float(v) for v in level_db)
        if low > high:
            raise ValueError(f"quiet padding level_db=({low}, {high}) must be (low, high) with low <= high")
        if lead_s < 0 or tail_s < 0:
            raise ValueError(f"quiet padding lead_s={lead_s} and tail_s={tail_s} must not be negative")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"quiet padding p={p} must be a probability in [0, 1]")
        self.sample_rate, self.lead_s, self.tail_s, self.level_db, self.p = sample_rate, lead_s, tail_s, (low, high), p

    @property
    def extra_s(self) -> float:
        """The most seconds an example gains (a bound for batch budgets)."""
        return self.lead_s + self.tail_s

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training or self.p == 0.0 or self.extra_s == 0.0:
            return wav, lengths
        b, device = wav.shape[0], wav.device
        chosen = torch.rand(b) < self.p
        lead = (torch.rand(b) * self.lead_s * self.sample_rate).long() * chosen
        tail = (torch.rand(b) * self.tail_s * self.sample_rate).long() * chosen
        low, high = self.level_db
        level = 10 ** ((torch.rand(b) * (high - low) + low) / 20)
        lead, lengths = lead.to(device), lengths.to(device)
        new_lengths = lengths + lead + tail.to(device)
        width = int(new_lengths.max())
        # each example's samples moved right by its lead, noise around them, zeros past the end
        source = torch.arange(width, device=device)[None, :] - lead[:, None]
        inside = (source >= 0) & (source < lengths[:, None])
        moved = wav.gather(1, source.clamp(0, wav.shape[1] - 1))
        noise = torch.randn(b, width, device=device, dtype=wav.dtype) * level.to(device, wav.dtype)[:, None]
        out = torch.where(inside, moved, noise) * length_mask(new_lengths, width).to(wav.dtype)
        return out, new_lengths


def quiet_lead_of(features) -> float:
    """The median quiet that padding put before a training utterance, in seconds, for the run
    whose feature pipeline is ``features`` (0: most were not padded, or none)."""
    quiet = getattr(getattr(features, "augmentation", None), "quiet", None)
    if quiet is None or quiet.p <= 0.5:  # half or more of the leads are 0
        return 0.0
    return quiet.lead_s * (1 - 0.5 / quiet.p)  # lead ~ U[0, lead_s] with probability p, else 0
