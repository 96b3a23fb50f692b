"""Speed perturbation (Ko et al., 2015): per example, resample by a random factor, which
changes tempo and pitch together; factor 1.1 makes an utterance 1/1.1 as long."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torchaudio.transforms import Resample


class SpeedPerturbation(nn.Module):
    """With probability ``p`` per example, a factor drawn uniformly from ``factors``;
    otherwise the example is kept as it is. ``wav`` must be zero-padded.

    Each example is resampled alone over its valid samples, with the sinc kernel that
    torchaudio's ``Resample`` precomputes once per factor (torchaudio's ``SpeedPerturbation``
    draws one factor for a whole batch). On CPU this measured faster than resampling the
    zero-padded examples that share a factor together, and it is exact by construction:
    a new length is ``ceil(length / factor)``, at most ``ceil(length * length_factor)``.
    """

    def __init__(self, sample_rate: int, factors: Sequence[float] = (0.9, 1.0, 1.1), p: float = 1.0) -> None:
        super().__init__()
        if not factors or min(factors) <= 0:
            raise ValueError(f"speed perturbation factors must be positive numbers, got {list(factors)}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"speed perturbation p={p} must be a probability in [0, 1]")
        self.factors = tuple(float(f) for f in factors)
        self.p = p
        # factor = source rate / target rate, as a reduced fraction at the sample rate's
        # resolution (int(0.95 * 16000), as torchaudio computes it, truncates to 15199)
        ratios = [Fraction(round(f * sample_rate), sample_rate) for f in self.factors]
        self.resamplers = nn.ModuleList(Resample(r.numerator, r.denominator) for r in ratios)
        for resampler in self.resamplers:
            if hasattr(resampler, "kernel"):  # derived from the factor: keep it out of state dicts
                kernel = resampler.kernel
                del resampler.kernel
                resampler.register_buffer("kernel", kernel, persistent=False)

    @property
    def length_factor(self) -> float:
        """The largest length multiplier this can produce (a bound for batch budgets)."""
        return max(1.0 / min(self.factors), 1.0)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long, device=wav.device)
        if not self.training or self.p == 0.0:
            return wav, lengths
        b = wav.shape[0]
        choice = torch.randint(len(self.factors), (b,))
        choice[torch.rand(b) >= self.p] = -1  # kept as it is
        if all(c < 0 or self.factors[c] == 1.0 for c in choice.tolist()):
            return wav, lengths
        pieces = [
            wav[i, :n] if c < 0 else self.resamplers[c](wav[i, :n])
            for i, (n, c) in enumerate(zip(lengths.tolist(), choice.tolist()))
        ]
        new_lengths = torch.tensor([len(piece) for piece in pieces], dtype=lengths.dtype, device=lengths.device)
        return pad_sequence(pieces, batch_first=True), new_lengths
