"""Greedy (best path) CTC decoding."""

from __future__ import annotations

import torch


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """``log_probs [B, T, C]`` -> label ids per example, repeats merged and blanks removed."""
    best = log_probs.argmax(-1).cpu()
    lengths = lengths.cpu()
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    return [best[i, : lengths[i]][keep[i, : lengths[i]]].tolist() for i in range(best.shape[0])]
