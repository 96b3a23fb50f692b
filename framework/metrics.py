"""Classification metrics accumulated on the device and reduced over DDP ranks once."""

from __future__ import annotations

import torch

from framework.trainer.distributed import all_reduce_sum


class ClassificationStats:
    """Accuracy, plus precision / recall / F1 of class ``positive`` when given."""

    def __init__(self, device: torch.device, positive: int | None = None) -> None:
        self.positive = positive
        self.counts = torch.zeros(5, dtype=torch.float64, device=device)  # correct, total, tp, fp, fn

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred = logits.argmax(-1)
        self.counts[0] += (pred == labels).sum()
        self.counts[1] += labels.numel()
        if self.positive is not None:
            p, t = pred == self.positive, labels == self.positive
            self.counts[2] += (p & t).sum()
            self.counts[3] += (p & ~t).sum()
            self.counts[4] += (~p & t).sum()

    def compute(self) -> dict[str, float]:
        correct, total, tp, fp, fn = all_reduce_sum(self.counts.clone()).tolist()
        out = {"accuracy": correct / max(total, 1)}
        if self.positive is not None:
            precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            out.update(precision=precision, recall=recall, f1=2 * precision * recall / max(precision + recall, 1e-12))
        return out
