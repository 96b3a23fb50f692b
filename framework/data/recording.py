"""Fixed windows cut lazily from one long HDF5 recording with per-second labels.

The recording is never loaded whole: window ``i`` is read from disk when asked for
(``audio[start:stop]``), in each DataLoader worker through its own file handle, so an
hours-long recording costs no memory. Windows are indexable, so every batching strategy,
DDP sharding and exact mid-epoch resume work as for any other dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset


class RecordingWindows(Dataset):
    """Examples ``{"id", "inputs" [samples], "label"}`` for windows of ``window`` seconds,
    ``hop`` seconds apart, within the ``[start, stop)`` fraction of the recording (for
    train/valid/test splits). A window's label is that of the second at its centre."""

    def __init__(self, path: str | Path, window: float = 1.0, hop: float = 1.0, start: float = 0.0, stop: float = 1.0,
                 sample_rate: int | None = None) -> None:
        self.path = str(path)
        with h5py.File(self.path, "r") as f:
            if f.attrs.get("format") != "framework-recording":
                raise ValueError(f"{path} is not a framework recording (attribute format={f.attrs.get('format')!r})")
            self.rate = int(f.attrs["sample_rate"])
            self.second_labels = f["labels"][:]
            total = f["audio"].shape[0] / self.rate
        if sample_rate is not None and sample_rate != self.rate:
            raise ValueError(f"{path} is at {self.rate} Hz but the config asks for {sample_rate} Hz")
        first, last = start * total, stop * total - window
        self.starts = np.arange(first, last + 1e-9, hop)
        self.window = window
        self.lengths = np.full(len(self.starts), window)
        centre = np.minimum((self.starts + window / 2).astype(int), len(self.second_labels) - 1)
        self.labels = self.second_labels[centre].astype(np.int64)
        self._audio = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_audio"] = None
        return state

    def __getitem__(self, index: int) -> dict:
        if self._audio is None or self._pid != os.getpid():
            self._audio = h5py.File(self.path, "r")["audio"]
            self._pid = os.getpid()
        i0 = int(round(self.starts[index] * self.rate))
        x = torch.from_numpy(self._audio[i0 : i0 + int(self.window * self.rate)])
        return {"id": f"t={self.starts[index]:.1f}s", "inputs": x, "label": int(self.labels[index])}
