"""Inference on padded batches of inputs, the same way for a run directory and an exported
artifact: ``run(inputs [B, S], lengths [B]) -> outputs`` (speech: log-probabilities
``[B, T, C]`` and frame counts ``[B]``).

A run goes through its recipe's ``compute_forward`` (features -> model), on the weights
evaluation uses (``brain.eval_weights()``); an artifact through its ``inference.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framework.brain import Stage
from framework.data.collate import Batch
from framework.export.inference import Artifact

Runner = Callable[[torch.Tensor, torch.Tensor], Any]


def is_artifact(folder: str | Path) -> bool:
    return (Path(folder) / "artifact.json").is_file()


@contextlib.contextmanager
def brain_runner(brain, forward: Callable[[Batch], Any] | None = None) -> Iterator[Runner]:
    """``forward(batch)`` (default ``compute_forward(batch, Stage.TEST)``) of a set-up Brain with
    its weights loaded, in evaluation mode, without gradients, with the weight average swapped
    in for the duration."""
    forward = forward or (lambda batch: brain.compute_forward(batch, Stage.TEST))
    brain.model.eval()
    if brain.features is not None:
        brain.features.eval()

    def run(inputs: torch.Tensor, lengths: torch.Tensor) -> Any:
        inputs, lengths = inputs.to(brain.device), lengths.to(brain.device)
        if brain.features is not None and brain.features.where == "worker" and inputs.dim() == 2:
            inputs, lengths = brain.features.extract(inputs, lengths)  # what the loader's workers do
        batch = Batch(id=[str(i) for i in range(len(lengths))], inputs=inputs, inputs_lens=lengths)
        return forward(batch)

    with torch.no_grad(), brain.eval_weights():
        yield run


def artifact_runner(artifact: Artifact) -> Runner:
    """An artifact's outputs as tensors."""

    def run(inputs: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        outputs = artifact.run(inputs.numpy(), lengths.numpy().astype(np.int64))
        return [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs]

    return run
