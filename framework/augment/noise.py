"""Additive noise at a random signal-to-noise ratio per example: noise from a manifest of
noise recordings (a random segment, looped when shorter than the utterance), or generated
white or pink noise when no manifest is given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio.functional as AF
from torch import nn

from framework.data.audio import AudioError, read_audio
from framework.data.collate import length_mask
from framework.data.manifest import Entry, ManifestError, load_entries

COLORS = ("white", "pink")


class AddNoise(nn.Module):
    """With probability ``p`` per example, noise at an SNR drawn uniformly from ``snr_db``
    (dB, over the example's valid samples). Lengths are unchanged and padding stays zero.

    ``noise_manifest``: a JSON / JSONL / CSV manifest of noise files with durations (e.g.
    from ``python -m framework.prepare manifest``); files at another rate are resampled to
    ``sample_rate``. Without one, ``color`` noise is generated on the batch's device.
    """

    def __init__(
        self,
        snr_db: Sequence[float] = (0.0, 15.0),
        p: float = 0.5,
        noise_manifest: str | Path | None = None,
        sample_rate: int = 16000,
        color: str = "white",
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in snr_db)
        if low > high:
            raise ValueError(f"snr_db=({low}, {high}) must be (low, high) with low <= high")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"add-noise p={p} must be a probability in [0, 1]")
        if color not in COLORS:
            raise ValueError(f"noise color must be one of {COLORS}, got {color!r}")
        self.snr_db = (low, high)
        self.p = p
        self.sample_rate = sample_rate
        self.color = color
        self.manifest = str(noise_manifest) if noise_manifest is not None else None
        self.entries = self._load(self.manifest) if self.manifest is not None else None

    def _load(self, path: str) -> list[Entry]:
        entries = load_entries(path, sample_rate=self.sample_rate)
        for e in entries:
            if not Path(e.path).is_file():
                raise ManifestError(f"{path}: entry {e.id!r}: noise file {e.path} not found; fix the path or remove the entry")
        return entries

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long, device=wav.device)
        if not self.training or self.p == 0.0:
            return wav, lengths
        rows = (torch.rand(wav.shape[0]) < self.p).nonzero().flatten()
        if not len(rows):
            return wav, lengths
        low, high = self.snr_db
        snr = torch.rand(len(rows)) * (high - low) + low
        rows = rows.to(wav.device)
        row_lengths = lengths[rows]
        noise = self._noise(row_lengths, wav.shape[1], wav.device, wav.dtype)
        has_energy = noise.abs().amax(-1) > 0  # silent noise cannot reach any SNR: leave those examples alone
        out = wav.clone()
        out[rows] = torch.where(
            has_energy[:, None], AF.add_noise(wav[rows], noise, snr.to(wav.device, wav.dtype), row_lengths), wav[rows]
        )
        return out, lengths

    def _noise(self, lengths: torch.Tensor, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[n, width]`` noise, zero beyond each length."""
        if self.entries is None:
            noise = torch.randn(len(lengths), width, device=device, dtype=dtype)
            if self.color == "pink":  # power 1/f: shape white noise's spectrum by 1/sqrt(f), no DC
                spectrum = torch.fft.rfft(noise)
                f = torch.arange(spectrum.shape[-1], device=device, dtype=dtype)
                noise = torch.fft.irfft(spectrum * torch.where(f > 0, f.clamp(min=1).rsqrt(), 0.0), n=width)
        else:
            noise = torch.zeros(len(lengths), width, dtype=dtype)
            for i, n in enumerate(lengths.tolist()):
                noise[i, :n] = self._read_noise(n)
            noise = noise.to(device)
        return noise * length_mask(lengths, width)

    def _read_noise(self, n: int) -> torch.Tensor:
        """``n`` samples of a random noise file: a random segment, or the file looped."""
        entry = self.entries[int(torch.randint(len(self.entries), ()))]
        available = int(entry.duration * self.sample_rate)
        start = entry.start or 0.0
        if available > n:
            start += int(torch.randint(available - n + 1, ())) / self.sample_rate
            stop = start + n / self.sample_rate
        else:
            stop = entry.stop
        try:
            noise = read_audio(entry.path, self.sample_rate, start=start or None, stop=stop)
        except AudioError as exc:
            raise AudioError(f"noise manifest {self.manifest}: entry {entry.id!r}: {exc}") from exc
        return noise.repeat(-(-n // len(noise)))[:n]
