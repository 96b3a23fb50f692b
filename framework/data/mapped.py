"""A dataset whose examples' ``inputs`` pass through a function, e.g. feature extraction in
DataLoader workers (``features.where=worker``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from framework.data.collate import SkippedExample


class MappedInputs(Dataset):
    """``dataset`` with ``fn`` applied to each example's ``inputs``; ``lengths`` (what the
    batch samplers read) and every other attribute come from ``dataset``."""

    def __init__(self, dataset: Dataset, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.dataset = dataset
        self.fn = fn

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedExample:
        example = self.dataset[index]
        if isinstance(example, SkippedExample):
            return example
        return {**example, "inputs": self.fn(example["inputs"])}

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)
