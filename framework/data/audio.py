"""Reading audio with soundfile: whole files or segments, resampled and mixed down on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from framework.errors import UserError


class AudioError(UserError, RuntimeError):
    """An audio file that cannot be used; the message names the file and says what to do."""


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample_rate, channels) read from the header only."""
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioError(_describe(path, exc)) from exc
    return info.frames, info.samplerate, info.channels


def read_audio(
    path: str | Path,
    sample_rate: int,
    *,
    start: float | None = None,
    stop: float | None = None,
    resample: bool = True,
    mono: bool = True,
) -> torch.Tensor:
    """Float32 waveform, shape ``[samples]`` when ``mono`` else ``[channels, samples]``.

    ``start``/``stop`` are in seconds; only that segment is read (soundfile seeks). A file at
    another rate is resampled with torchaudio when ``resample`` is on, and refused otherwise.
    Errors name the file and what to fix; a caller that can leave the file out says how.
    """
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate = f.samplerate
            first = int(round(start * rate)) if start else 0
            last = int(round(stop * rate)) if stop is not None else f.frames
            if start and first >= f.frames:
                raise AudioError(f"{path}: a segment from {start:g} s, past the end of the file ({f.frames / rate:g} s); "
                                 "fix its offset in the manifest")
            if first:
                f.seek(first)
            data = f.read(frames=max(last - first, 0), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(_describe(path, exc)) from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples (empty file or empty segment); remove it from the manifest")
    if not np.isfinite(data).all():  # float WAV/FLAC can hold them; one would poison the model
        raise AudioError(f"{path}: contains NaN or infinite samples; replace the file")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # [channels, samples]
    if mono:
        wav = wav.mean(0)
    if rate != sample_rate:
        if not resample:
            raise AudioError(
                f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz; set resample=true "
                "or convert the file"
            )
        wav = AF.resample(wav, rate, sample_rate)
    return wav


def _describe(path: str | Path, exc: Exception) -> str:
    if not Path(path).exists():
        return f"{path}: audio file not found; check the manifest path or its data_root placeholder"
    return f"{path}: cannot read audio ({exc}); the file is damaged or not audio: replace it"
