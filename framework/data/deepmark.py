"""The DeepMark DeepSpeech2 synthetic corpus: random spectrograms of 15 length classes.

Exactly as the benchmark specifies: classes of 1..15 s (100..1500 frames of 161 bins),
``counts[c] * 10 * 128 * scale`` utterances per class, label lengths fixed per class,
spectrogram values standard normal and labels uniform over the 28 non-blank characters
(29 symbols with the CTC blank). One random block of features and one of labels are
generated once from ``seed``; every utterance is a slice of them, so reading costs nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

COUNTS = (3, 10, 11, 13, 14, 13, 9, 8, 5, 4, 3, 2, 2, 2, 1)
LABEL_LENGTHS = (7, 17, 35, 48, 62, 78, 93, 107, 120, 134, 148, 163, 178, 193, 209)
SCALE = 10 * 128  # utterances per count unit at scale 1
FRAMES_PER_SECOND = 100
NUM_BINS = 161
ALPHABET = "abcdefghijklmnopqrstuvwxyz '"  # 28 characters + blank = 29 output symbols


class DeepMarkDataset(Dataset):
    """Examples ``{"id", "inputs" [frames, 161], "tokens" [label_len], "text"}``.

    ``lengths`` are in seconds (1.0 .. 15.0), the unit the batch samplers budget in.
    ``scale=1`` gives the benchmark's 128,000 utterances; ``scale=0.01`` gives 1,280.
    """

    def __init__(self, scale: float = 1.0, seed: int = 0, block_frames: int = 1 << 16) -> None:
        per_class = [max(1, int(round(c * SCALE * scale))) for c in COUNTS]
        self.classes = np.repeat(np.arange(len(COUNTS)), per_class)
        self.lengths = (self.classes + 1).astype(np.float64)  # seconds
        rng = np.random.default_rng(seed)
        frames = FRAMES_PER_SECOND * len(COUNTS)
        self.block = torch.from_numpy(rng.standard_normal((block_frames + frames, NUM_BINS), dtype=np.float32))
        self.labels = torch.from_numpy(rng.integers(1, len(ALPHABET) + 1, size=block_frames + max(LABEL_LENGTHS)))
        self.offsets = rng.integers(0, block_frames, size=(len(self.classes), 2))

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> dict:
        c = int(self.classes[index])
        start, label_start = (int(o) for o in self.offsets[index])
        frames = (c + 1) * FRAMES_PER_SECOND
        tokens = self.labels[label_start : label_start + LABEL_LENGTHS[c]]
        return {
            "id": f"deepmark-{index}",
            "inputs": self.block[start : start + frames],
            "tokens": tokens,
            "text": "".join(ALPHABET[t - 1] for t in tokens.tolist()),
        }

    @property
    def texts(self) -> list[str]:
        """Every utterance's transcript (what a recipe builds its alphabet from)."""
        return [self[i]["text"] for i in range(len(self))]

    @property
    def feature_config(self) -> dict:
        """What the random inputs stand for: 161-bin spectrograms, 10 ms frames."""
        return {"_target_": "framework.features.spectrogram", "sample_rate": 16000, "window_ms": 20.0, "hop_ms": 10.0}

    def class_counts(self) -> list[int]:
        return np.bincount(self.classes, minlength=len(COUNTS)).tolist()
