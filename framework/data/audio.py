"""Reading audio with soundfile: whole files or segments, resampled and mixed down on request."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, eq=False)  # an array field: no value equality
class PCM:
    """Integer PCM samples and their full scale (2^15 or 2^23), not yet made float. A batch
    scales them straight into its padded rows (:func:`framework.data.collate.pad_sequences`),
    so no float copy of each example is made, filled, copied and freed on the way."""

    samples: np.ndarray  # [samples], int16 or int32
    full_scale: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.samples.shape

    def scaled(self, out: np.ndarray | None = None) -> np.ndarray:
        """``samples / full_scale`` as float32 (a power of two: exact, as a division), into
        ``out`` where given. Converted, then scaled in place while the row is in cache: half
        the time of one ``np.multiply`` casting as it goes."""
        if out is None:
            out = self.samples.astype(np.float32)
        else:
            out[...] = self.samples
        out *= np.float32(1 / self.full_scale)
        return out


def pcm_wav(data: bytes | memoryview) -> PCM | None:
    """The samples of a mono 16- or 24-bit PCM WAV held in ``data`` (a view into it for
    16-bit), or None for any other WAV, which the caller decodes with soundfile. About 100x
    cheaper than soundfile's read from memory for the short utterances of a shard."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt " and size >= 16:
            fmt = (int.from_bytes(data[body:body + 2], "little"), int.from_bytes(data[body + 2:body + 4], "little"),
                   int.from_bytes(data[body + 14:body + 16], "little"))  # format tag, channels, bits per sample
        elif chunk == b"data":
            if fmt is None or fmt[0] not in (1, 0xFFFE) or fmt[1] != 1 or body + size > len(data):
                return None
            if fmt[2] == 16 and size % 2 == 0:
                return PCM(np.frombuffer(data, "<i2", size // 2, body), 2**15)
            if fmt[2] == 24 and size % 3 == 0:
                # each sample as the top 3 bytes of the int32 that starts one byte before it, shifted
                # down with its sign (the byte before, the previous sample's or the header's, drops out)
                words = np.ndarray((size // 3,), "<i4", data, body - 1, (3,))
                return PCM(words >> 8, 2**23)
            return None
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None
