"""Where a recording pauses: the spans of speech between quiet stretches.

A model trained on single utterances has never seen a long recording's pauses: in one it
writes characters into the silence and runs the words on either side together.
``framework.transcribe --split-at-pauses S`` therefore cuts a recording where it is quiet for
at least ``S`` seconds and transcribes each span on its own, as the model was trained.

Quiet is relative to the recording: a 10 ms frame whose energy is more than ``QUIET_DB``
below the loud frames' (the 95th percentile) counts as quiet, so the threshold follows the
recording's gain and noise floor. Each stretch then starts where its first millisecond rises
``ONSET_RATIO_DB`` above the noise floor before it, less a lead, and keeps ``TAIL_S`` of the
quiet after it. The lead is what the model heard before speech in training
(:func:`lead_for`): a model trained on trimmed utterances (speech from their first sample,
~0.3 s of their own quiet at the end) misreads a stretch that starts a few milliseconds late
or 20 ms early (measured on the speech corpus, below), so its lead is ``ONSET_LEAD_S``; one
trained with quiet padding (``augment=quiet``) heard up to ``lead_s`` of room noise first,
and its stretches start the median of that before their onset (0.15 s with
``augment=quiet``), where a soft onset found late still has its beginning. The file is read
in blocks: memory grows with the number of 1 ms frames (8 bytes each), not with the audio.
"""

from __future__ import annotations

import numpy as np
import soundfile

FRAME_S = 0.01
FINE = 10  # 1 ms frames per frame: where a stretch starts is found to the millisecond
QUIET_DB = 35.0  # below the loud frames' energy: speech's quiet consonants stay above it, room noise below
# Measured with `python -m benchmarks.inference` on its recordings (ds2_small, speech corpus): a
# stretch that starts exactly where its utterance does gives CER 0.167 (as the utterances one by
# one), 2 ms later 0.183, 5 ms later 0.195, 5 ms earlier 0.165, 20 ms earlier 0.259.
ONSET_RATIO_DB = 6.0  # a 1 ms frame this far above the quiet before the stretch: its speech has begun
ONSET_LEAD_S = 0.005  # the lead for a model trained on trimmed utterances
TAIL_S = 0.3
BLOCK_FRAMES = 6000  # 60 s per read (of 10 ms frames)


def lead_for(median_quiet_s: float) -> float:
    """How long before its onset a stretch starts, for a model whose training utterances had a
    median of ``median_quiet_s`` of quiet before them (0: trimmed utterances)."""
    return max(median_quiet_s, ONSET_LEAD_S)


def speech_spans_of(path: str, start: float | None, stop: float | None, min_pause_s: float,
                    lead_s: float = ONSET_LEAD_S) -> list[tuple[float, float]]:
    """``(start, stop)`` seconds, from ``start``, of the stretches of ``path`` between pauses of at
    least ``min_pause_s``, each refined to its onset (started ``lead_s`` before it) and tail
    (:func:`refined`)."""
    fine = frame_energies_db(path, start, stop, FRAME_S / FINE)
    step = frame_seconds(soundfile.info(path).samplerate, FRAME_S / FINE)  # 44 samples at 44.1 kHz: not 1 ms
    n = len(fine) // FINE
    power = np.mean(10 ** (fine[: n * FINE].reshape(n, FINE) / 10), axis=1)
    return refined(speech_spans(10 * np.log10(power), min_pause_s, FINE * step), fine, step, lead_s)


def frame_seconds(rate: int, frame_s: float) -> float:
    """The length of :func:`frame_energies_db`'s frames of ``frame_s`` at ``rate``: whole samples."""
    return max(1, round(rate * frame_s)) / rate


def refined(spans: list[tuple[float, float]], fine_db: np.ndarray, step: float = FRAME_S / FINE,
            lead_s: float = ONSET_LEAD_S) -> list[tuple[float, float]]:
    """Each stretch started at the first 1 ms frame within 30 ms of its start that is
    ``ONSET_RATIO_DB`` above the quiet of the 0.2 s before (less ``lead_s``), and ended
    ``TAIL_S`` later, never into its neighbours."""
    total = len(fine_db) * step
    window = 30  # 1 ms frames each side of the 10 ms frames' start
    onsets = []
    for k, (a, b) in enumerate(spans):
        i = round(a / step)
        lo, floor = max(0, i - window), fine_db[max(0, i - 230): max(0, i - window)]
        onset = a
        if len(floor) >= 50:  # 50 ms of quiet to measure
            noise = 10 * np.log10(np.mean(10 ** (floor / 10)))
            loud = np.flatnonzero(fine_db[lo: i + window] > noise + ONSET_RATIO_DB)
            if len(loud):
                onset = min((lo + loud[0]) * step, b)
        # never into the speech before (pauses shorter than the search window)
        onsets.append(max(spans[k - 1][1] if k else 0.0, onset - lead_s))
    out: list[tuple[float, float]] = []
    for k, (_, b) in enumerate(spans):
        upper = onsets[k + 1] if k + 1 < len(spans) else total
        out.append((onsets[k], min(upper, b + TAIL_S)))
    return out


def frame_energies_db(path: str, start: float | None = None, stop: float | None = None,
                      frame_s: float = FRAME_S) -> np.ndarray:
    """Energy in dB of each ``frame_s`` frame of ``path`` (mixed to mono) from ``start`` to ``stop`` seconds."""
    with soundfile.SoundFile(path) as f:
        hop = round(frame_seconds(f.samplerate, frame_s) * f.samplerate)
        first = round(start * f.samplerate) if start else 0
        last = min(f.frames, round(stop * f.samplerate)) if stop is not None else f.frames
        f.seek(first)
        energies, remaining = [], last - first
        while remaining >= hop:
            block = f.read(min(remaining, round(f.samplerate * FRAME_S) * BLOCK_FRAMES) // hop * hop, dtype="float32",
                           always_2d=True).mean(1)
            if len(block) < hop:
                break
            remaining -= len(block)
            frames = block[: len(block) // hop * hop].reshape(-1, hop)
            energies.append(10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12))
    return np.concatenate(energies) if energies else np.zeros(0)


def speech_spans(energies_db: np.ndarray, min_pause_s: float, frame_s: float = FRAME_S) -> list[tuple[float, float]]:
    """``(start, stop)`` seconds of the stretches between pauses of at least ``min_pause_s``;
    the whole when there is no such pause or nothing loud. The stretches are not widened into
    the pauses: a model that never heard room noise writes characters into it (measured on the
    speech corpus: 0.1 s of it on each side, CER 0.28 against 0.20)."""
    n = len(energies_db)
    whole = [(0.0, n * frame_s)]
    if n == 0:
        return whole
    quiet = energies_db < np.percentile(energies_db, 95) - QUIET_DB
    if quiet.all() or not quiet.any():
        return whole
    # runs of quiet frames: [begin, end) frame indices
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    runs = edges.reshape(-1, 2)
    pauses = [(b, e) for b, e in runs if (e - b) * frame_s >= min_pause_s]
    spans, start = [], 0
    for b, e in pauses:
        if b > start:
            spans.append((start, b))
        start = e
    if start < n:
        spans.append((start, n))
    return [(b * frame_s, e * frame_s) for b, e in spans] or whole
