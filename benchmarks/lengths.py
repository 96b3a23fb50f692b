"""Length distributions the benchmarks use (seconds per utterance)."""

from __future__ import annotations

import numpy as np

# DeepMark DeepSpeech2 synthetic corpus: 15 classes of 1..15 s, relative counts x 1280.
DEEPMARK_COUNTS = (3, 10, 11, 13, 14, 13, 9, 8, 5, 4, 3, 2, 2, 2, 1)
DEEPMARK_SCALE = 1280


def deepmark(scale: float = 1.0, seed: int = 0, jitter: bool = True) -> np.ndarray:
    """128,000 x scale utterances in random order. With ``jitter`` each class-c length is
    uniform in (c-1, c] s (about 194 h in all), so bucketing has real spread to handle;
    without, every utterance of class c lasts exactly c s (211 h)."""
    rng = np.random.default_rng(seed)
    parts = []
    for c, k in enumerate(DEEPMARK_COUNTS, start=1):
        n = int(round(k * DEEPMARK_SCALE * scale))
        parts.append(c - rng.random(n) if jitter else np.full(n, float(c)))
    lengths = np.concatenate(parts)
    return lengths[rng.permutation(len(lengths))]


def librispeech_like(n: int = 28539, seed: int = 0) -> np.ndarray:
    """A skewed distribution shaped like LibriSpeech train-clean-100: most utterances
    12-17 s, a tail of shorter ones; mean about 13.9 s (110 h for 28,539 utterances)."""
    rng = np.random.default_rng(seed)
    n_long = int(n * 0.82)
    long = np.clip(rng.normal(15.0, 1.0, n_long), 11.0, 17.3)
    short = np.clip(rng.lognormal(np.log(8.2), 0.45, n - n_long), 1.3, 11.0)
    lengths = np.concatenate([long, short])
    return lengths[rng.permutation(n)]
