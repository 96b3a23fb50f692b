"""Where a recording pauses: the spans of speech between quiet stretches.

A model trained on single utterances has never seen a long recording's pauses: in one it
writes characters into the silence and runs the words on either side together.
``framework.transcribe --split-at-pauses S`` therefore cuts a recording where it is quiet for
at least ``S`` seconds and transcribes each span on its own, as the model was trained.

Quiet is relative to the recording: a 10 ms frame whose energy is more than ``QUIET_DB``
below the loud frames' (the 95th percentile) counts as quiet, so the threshold follows the
recording's gain and noise floor. The file is read in blocks: memory grows with the number of
10 ms frames (4 bytes each), not with the audio.
"""

from __future__ import annotations

import numpy as np
import soundfile

FRAME_S = 0.01
QUIET_DB = 35.0  # below the loud frames' energy: speech's quiet consonants stay above it, room noise below
BLOCK_FRAMES = 6000  # 60 s per read


def frame_energies_db(path: str, start: float | None = None, stop: float | None = None) -> np.ndarray:
    """Energy in dB of each 10 ms frame of ``path`` (mixed to mono) from ``start`` to ``stop`` seconds."""
    with soundfile.SoundFile(path) as f:
        hop = max(1, round(f.samplerate * FRAME_S))
        first = round(start * f.samplerate) if start else 0
        last = min(f.frames, round(stop * f.samplerate)) if stop is not None else f.frames
        f.seek(first)
        energies, remaining = [], last - first
        while remaining >= hop:
            block = f.read(min(remaining, hop * BLOCK_FRAMES) // hop * hop, dtype="float32", always_2d=True).mean(1)
            if len(block) < hop:
                break
            remaining -= len(block)
            frames = block[: len(block) // hop * hop].reshape(-1, hop)
            energies.append(10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12))
    return np.concatenate(energies) if energies else np.zeros(0)


def speech_spans(energies_db: np.ndarray, min_pause_s: float) -> list[tuple[float, float]]:
    """``(start, stop)`` seconds of the stretches between pauses of at least ``min_pause_s``;
    the whole when there is no such pause or nothing loud. The stretches are not widened into
    the pauses: a model that never heard room noise writes characters into it (measured on the
    speech corpus: 0.1 s of it on each side, CER 0.28 against 0.20)."""
    n = len(energies_db)
    whole = [(0.0, n * FRAME_S)]
    if n == 0:
        return whole
    quiet = energies_db < np.percentile(energies_db, 95) - QUIET_DB
    if quiet.all() or not quiet.any():
        return whole
    # runs of quiet frames: [begin, end) frame indices
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    runs = edges.reshape(-1, 2)
    pauses = [(b, e) for b, e in runs if (e - b) * FRAME_S >= min_pause_s]
    spans, start = [], 0
    for b, e in pauses:
        if b > start:
            spans.append((start, b))
        start = e
    if start < n:
        spans.append((start, n))
    return [(b * FRAME_S, e * FRAME_S) for b, e in spans] or whole
