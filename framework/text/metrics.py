"""Character and word error rates."""

from __future__ import annotations

from collections.abc import Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


class ErrorRate:
    """Accumulates edits / reference length over many (reference, hypothesis) pairs.

    ``unit="char"`` gives CER, ``unit="word"`` WER."""

    def __init__(self, unit: str = "char") -> None:
        if unit not in ("char", "word"):
            raise ValueError(f"unit must be char or word, got {unit!r}")
        self.unit = unit
        self.edits = 0
        self.total = 0

    def _split(self, text: str) -> Sequence[str]:
        return text.split() if self.unit == "word" else text

    def update(self, refs: Sequence[str], hyps: Sequence[str]) -> list[int]:
        """Adds the pairs; returns each pair's edits (for per-utterance reports)."""
        edits = []
        for ref, hyp in zip(refs, hyps):
            r = self._split(ref)
            edits.append(edit_distance(r, self._split(hyp)))
            self.total += len(r)
        self.edits += sum(edits)
        return edits

    @property
    def value(self) -> float:
        return self.edits / max(self.total, 1)
