"""Sound classification: is there an event in this second of a long recording? Which keyword,
speaker or event class is this clip?

windows read lazily from an HDF5 recording (``dataset=recording``), or clips with a ``label``
field from a manifest (``dataset=manifest``) -> log-mel features -> a 1-channel image ->
WideResNet -> one of the training set's classes; accuracy, and with two classes the
precision, recall and F1 of the second in sorted order (``1``: an event).

The classes (the training labels, sorted) are saved in the run dir as ``classes.json``, so
evaluation maps labels to the same outputs.

Run: python -m framework.train recipe=sound_event [overrides]
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from framework.brain import Brain, Stage
from framework.errors import UserError
from framework.files import write_text_atomic
from framework.metrics import ClassificationStats
from framework.trainer import distributed


class EventClassifier(nn.Module):
    """``(waveform windows [B, S], lengths) -> logits``: features as a 1-channel image, then the
    model, as evaluation computes them, as one module for ``framework.export``."""

    def __init__(self, features: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, _ = self.features(inputs, lengths)
        return self.model(feats.transpose(1, 2).unsqueeze(1))


class SoundEventBrain(Brain):
    model_arguments = ("in_channels", "num_classes")

    def build_model(self, train_set) -> nn.Module:
        path = self.run_dir / "classes.json"
        if train_set is not None:
            labels = getattr(train_set, "labels", None)
            if labels is None or any(label is None for label in labels):
                raise UserError("the training set has examples without a label: classification needs a `label` field "
                                "in its manifest (a `label` column of the --table of `python -m framework.prepare "
                                "manifest`)")
            classes = sorted({str(label) for label in labels})
            if len(classes) < 2:
                raise UserError(f"the training set has one class only ({classes[0]!r}): a classifier needs two or more")
            if self.dist.is_main and not path.is_file():
                write_text_atomic(path, json.dumps(classes))
            distributed.barrier()  # every rank, whether or not rank 0 had to write it
        if not path.is_file():
            raise UserError(f"{path} not found: the run's classes are saved there by framework.train; evaluation "
                            "needs the run directory of a training run")
        self.classes = json.loads(path.read_text())
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        return instantiate(self.cfg.model, in_channels=1, num_classes=len(self.classes))

    def targets(self, batch, stage: Stage) -> torch.Tensor:
        """The batch's labels as class indices."""
        labels = batch.label.tolist() if isinstance(batch.label, torch.Tensor) else batch.label
        unknown = next((label for label in labels if str(label) not in self.class_index), None)
        if unknown is not None:
            raise UserError(f"{stage.value} label {str(unknown)!r} is not a class of the training set "
                            f"({', '.join(self.classes)}); every class must have training examples")
        return torch.tensor([self.class_index[str(label)] for label in labels], device=self.device)

    def compute_forward(self, batch, stage: Stage) -> torch.Tensor:
        feats, _ = self.features(batch.inputs, batch.inputs_lens, augment=stage == Stage.TRAIN)
        return self.model(feats.transpose(1, 2).unsqueeze(1))  # [B, 1, bins, frames]

    def inference_model(self, features: nn.Module) -> nn.Module:
        """The exported module (framework.export), around the exportable ``features``."""
        return EventClassifier(features, self.module)

    def compute_objectives(self, logits, batch, stage: Stage) -> torch.Tensor:
        targets = self.targets(batch, stage)
        if stage != Stage.TRAIN:
            self.stats.update(logits, targets)
        return F.cross_entropy(logits.float(), targets)

    def on_stage_start(self, stage: Stage, epoch: int) -> None:
        self.stats = ClassificationStats(self.device, positive=1 if len(self.classes) == 2 else None)

    def on_stage_end(self, stage: Stage, loss: float, epoch: int) -> dict[str, float]:
        return {"loss": loss} if stage == Stage.TRAIN else {"loss": loss, **self.stats.compute()}
