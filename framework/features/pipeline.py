"""Feature pipeline: extractor -> log -> normalisation, with the run's augmentation in training.

Every piece works on padded batches ``[B, samples]`` with lengths, so the same pipeline
runs per example in DataLoader workers (``where=worker``) or batch-wise on the training
device (``where=device``). Features are ``[B, frames, bins]``.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchaudio
from torch import nn

from framework.augment import Augmentation
from framework.data.collate import SkippedExample, length_mask
from framework.errors import UserError

log = logging.getLogger(__name__)


class Extractor(nn.Module):
    """Wraps a torchaudio transform ``[B, S] -> [B, F, T]`` with frame-length bookkeeping."""

    def __init__(self, transform: nn.Module | None, hop_length: int, n_fft: int, num_bins: int, log_compress: bool) -> None:
        super().__init__()
        self.transform = transform
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.num_bins = num_bins
        self.log_compress = log_compress

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        # torchaudio transforms pad by n_fft // 2 on both sides (center=True)
        return samples // self.hop_length + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transform is None:
            return wav, lengths
        with torch.autocast(wav.device.type, enabled=False):  # FFTs want fp32
            feats = self.transform(wav.float())
            if self.log_compress:
                feats = torch.log(feats + 1e-6)
        return feats.transpose(1, 2), self.frames(lengths)


def spectrogram(sample_rate: int = 16000, window_ms: float = 20.0, hop_ms: float = 10.0, log: bool = True) -> Extractor:
    """Linear power spectrogram; 161 bins at 16 kHz with a 20 ms window (DeepSpeech2)."""
    n_fft = int(sample_rate * window_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    t = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop, power=2.0, pad_mode="constant")
    return Extractor(t, hop, n_fft, n_fft // 2 + 1, log)


def mel(sample_rate: int = 16000, n_mels: int = 80, window_ms: float = 25.0, hop_ms: float = 10.0, log: bool = True) -> Extractor:
    """Log mel filterbank energies (``fbank``) from ``torchaudio.transforms.MelSpectrogram``."""
    n_fft = int(sample_rate * window_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    t = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, pad_mode="constant")
    return Extractor(t, hop, n_fft, n_mels, log)


fbank = mel


def mfcc(sample_rate: int = 16000, n_mfcc: int = 40, n_mels: int = 80, window_ms: float = 25.0, hop_ms: float = 10.0) -> Extractor:
    n_fft = int(sample_rate * window_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    t = torchaudio.transforms.MFCC(
        sample_rate=sample_rate, n_mfcc=n_mfcc, melkwargs={"n_fft": n_fft, "hop_length": hop, "n_mels": n_mels, "pad_mode": "constant"}
    )
    return Extractor(t, hop, n_fft, n_mfcc, log_compress=False)


def raw() -> Extractor:
    """No features: the model receives the waveform."""
    return Extractor(None, 1, 1, 1, log_compress=False)


class UtteranceNorm(nn.Module):
    """Zero mean, unit variance per utterance and bin, over valid frames only."""

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = length_mask(lengths, feats.shape[1])[..., None].to(feats.dtype)
        n = mask.sum(1, keepdim=True).clamp(min=1)
        mean = (feats * mask).sum(1, keepdim=True) / n
        var = ((feats - mean) ** 2 * mask).sum(1, keepdim=True) / n
        return (feats - mean) / (var + 1e-5).sqrt() * mask


class GlobalNorm(nn.Module):
    """Mean/variance per bin over the training set, computed once and saved as a file."""

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_bins))
        self.register_buffer("std", torch.ones(num_bins))
        self.register_buffer("fitted", torch.tensor(False))
        self._checked = False  # `fitted` lives on the device: read it once, not every batch

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self._checked:
            if not self.fitted:
                raise RuntimeError("global normalisation statistics were not computed; call FeaturePipeline.fit_stats first")
            self._checked = True
        mask = length_mask(lengths, feats.shape[1])[..., None].to(feats.dtype)
        return (feats - self.mean) / self.std * mask


class FeaturePipeline(nn.Module):
    """[waveform augmentation] -> extractor -> normalisation -> [SpecAugment]; the
    augmentation (``augment=``, :class:`framework.augment.Augmentation`) only when a
    training batch asks for it.

    ``where="worker"``: :meth:`per_example` runs in DataLoader workers and batches arrive
    as features. ``where="device"``: :meth:`forward` runs on the training device.
    """

    def __init__(
        self,
        extractor: Extractor,
        normalize: Literal["none", "utterance", "global"] = "utterance",
        where: Literal["worker", "device"] = "device",
        augmentation: Augmentation | None = None,
    ) -> None:
        super().__init__()
        if normalize not in ("none", "utterance", "global"):
            raise ValueError(f"features.normalize must be none, utterance or global, got {normalize!r}")
        if where not in ("worker", "device"):
            raise ValueError(f"features.where must be worker or device, got {where!r}")
        self.extractor = extractor
        self.normalize = normalize
        self.norm = {"none": None, "utterance": UtteranceNorm(), "global": GlobalNorm(extractor.num_bins)}[normalize]
        self.where = where
        self.augmentation = augmentation

    @property
    def num_bins(self) -> int:
        return self.extractor.num_bins

    def extract(self, inputs: torch.Tensor, lengths: torch.Tensor, augment: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``[B, S]`` -> normalised features ``[B, T, F]``, the waveforms augmented
        first when ``augment``. Features computed earlier (``[B, T, F]``, e.g. read from an
        HDF5 file of features) are only normalised."""
        aug = self.augmentation if augment else None
        if inputs.dim() == 2 and self.extractor.transform is not None:
            if aug is not None and aug.on_waveforms:
                inputs, lengths = aug.waveform(inputs, lengths)
            inputs, lengths = self.extractor(inputs, lengths)
        elif aug is not None and aug.on_waveforms:
            raise UserError(f"augment={aug.describe()} changes waveforms, but the training data arrive as features; "
                            "use augment=specaugment (or none), or train from audio")
        if self.norm is not None:
            inputs = self.norm(inputs, lengths)
        return inputs, lengths

    def per_example(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """One waveform ``[S]`` (or feature matrix ``[T, F]``) to features ``[T, F]``, for
        DataLoader workers."""
        feats, _ = self.extract(x[None], torch.tensor([x.shape[0]]), augment)
        return feats[0]

    def forward(
        self, inputs: torch.Tensor, lengths: torch.Tensor, augment: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features for a padded batch (complete already when ``where=worker``), augmented
        when ``augment`` (a training batch)."""
        if self.where == "device":
            inputs, lengths = self.extract(inputs, lengths, augment)
        if augment and self.augmentation is not None:
            inputs = self.augmentation.spectrogram(inputs)
        return inputs, lengths

    def for_loader(self, train: bool, seconds: np.ndarray
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, np.ndarray]:
        """What a DataLoader of this run needs from the pipeline: the per-example transform
        its workers run (a CPU copy; None when features are computed on the device), and the
        lengths, in seconds, to which augmentation can lengthen ``seconds`` (speed
        perturbation, quiet padding), for the batch budget."""
        transform = None
        if self.where == "worker":
            transform = functools.partial(copy.deepcopy(self).cpu().per_example, augment=train)
        return transform, self.augmentation.longest(seconds) if train and self.augmentation is not None else seconds

    def describe(self) -> str:
        kind = type(self.extractor.transform).__name__ if self.extractor.transform is not None else "raw audio"
        augmented = self.augmentation.describe() if self.augmentation is not None else "none"
        return f"{kind}: {self.num_bins} bins, normalize={self.normalize}, where={self.where}, augment={augmented}"

    def load_stats(self, path: str | Path) -> None:
        """Global normalisation statistics from ``path`` (what :meth:`fit_stats` saved); a
        no-op for other normalisations."""
        if not isinstance(self.norm, GlobalNorm):
            return
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} not found: features.normalize=global needs the statistics the training run "
                            "saved there; they are only computed from training data, by framework.train")
        try:
            state = torch.load(path, weights_only=True)
            mean, std = state["mean"], state["std"]
            self.norm.mean.copy_(mean)
            self.norm.std.copy_(std)
        except Exception as exc:
            raise UserError(f"{path} is damaged or not a feature-statistics file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to recompute it from the "
                            "training data") from None
        self.norm.fitted.fill_(True)

    @torch.no_grad()
    def fit_stats(self, dataset, path: str | Path, max_examples: int = 1000) -> None:
        """Computes global mean/std over up to ``max_examples`` training examples (raw
        waveforms or precomputed features), saves them to ``path`` and uses them."""
        if not isinstance(self.norm, GlobalNorm):
            return
        path = Path(path)
        total = torch.zeros(self.num_bins, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        frames = 0
        for i in range(min(len(dataset), max_examples)):
            example = dataset[i]
            if isinstance(example, SkippedExample):
                continue
            x = example["inputs"]
            feats, _ = self.extractor(x[None], torch.tensor([x.shape[0]])) if x.dim() == 1 else (x[None], None)
            f = feats[0].double()
            total += f.sum(0)
            total_sq += (f**2).sum(0)
            frames += f.shape[0]
        mean = total / max(frames, 1)
        std = (total_sq / max(frames, 1) - mean**2).clamp(min=1e-10).sqrt()
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"mean": mean.float(), "std": std.float(), "frames": frames}, tmp)
        tmp.replace(path)
        log.info("global feature statistics over %d frames saved to %s", frames, path)
        self.load_stats(path)
