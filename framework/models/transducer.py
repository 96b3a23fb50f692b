"""A transducer (RNN-T, Graves 2012): an acoustic encoder, an LSTM prediction network over the
labels emitted so far, and a joiner that scores every (frame, label position) pair.

The encoder is any of the framework's CTC acoustic models (a Conformer, DeepSpeech2) built
with ``num_classes=joint_dim``: its output layer becomes the projection of each frame into
the joint space. The prediction network starts from the blank (id 0) and projects its LSTM
output into the same space; the joiner adds the two, applies tanh and a linear layer over
the labels. The interface is ``torchaudio.models.RNNT``'s (``transcribe``, ``predict``,
``join``), which torchaudio's beam search drives.

Memory: the joiner's output, ``[B, T, U + 1, V]`` for B utterances of T encoder frames and
U labels over V classes, is the largest tensor of a step, and its gradient is as large.
T and U both grow with an utterance's duration, so a batch's joint grows with
``B x duration^2`` (budget it with ``batching.quadratic``; docs/asr.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from framework.errors import BadValue

State = list[list[torch.Tensor]]  # torchaudio's predictor state: one list of tensors, batch first


class Predictor(nn.Module):
    """Embedding -> LSTM -> linear to the joint space, over labels ``[B, U]``. The state is
    ``[[h, c]]`` with ``h``, ``c`` ``[B, num_layers, hidden_size]`` (batch first, as
    torchaudio's beam search slices and stacks it)."""

    def __init__(self, num_classes: int, embedding_dim: int, hidden_size: int, num_layers: int, output_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, output_dim)

    def forward(self, input: torch.Tensor, lengths: torch.Tensor,
                state: State | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        hidden = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state[0])
        x, (h, c) = self.lstm(self.embedding(input), hidden)
        return self.output(self.dropout(x)), lengths, [[h.transpose(0, 1), c.transpose(0, 1)]]


class Joiner(nn.Module):
    """``tanh(encodings + predictions)`` -> linear over the labels, for every pair of a frame
    and a label position: ``[B, T, J]`` and ``[B, U, J]`` -> ``[B, T, U, V]``."""

    def __init__(self, joint_dim: int, num_classes: int) -> None:
        super().__init__()
        self.output = nn.Linear(joint_dim, num_classes)

    def forward(self, encodings: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(encodings.unsqueeze(2) + predictions.unsqueeze(1)))


class Transducer(nn.Module):
    """``forward(features [B, T, F], lengths [B], targets [B, U], target_lengths [B])`` ->
    ``(joint [B, T', U + 1, V], encodings [B, T', J], lengths' [B], ctc_logits)``:
    the joiner's output for the transducer loss (targets padded with anything; the blank
    is prepended here), the encoder's frames (for decoding) and, in training with
    ``ctc_head``, ``[B, T', V]`` logits of a linear CTC head on the encoder's frames for an
    auxiliary CTC loss (None otherwise).

    ``encoder`` builds the acoustic model from ``num_bins`` and ``num_classes`` (a partial
    of a CTC model's class: ``_partial_: true`` in its config); the blocks that activation
    checkpointing can wrap are then the encoder's, e.g. ``encoder.blocks`` of a Conformer.
    """

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        num_bins: int = 80,
        num_classes: int = 29,
        joint_dim: int = 256,
        embedding_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
        ctc_head: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise BadValue(f"dropout={dropout} must be in [0, 1): the probability of zeroing an activation")
        self.encoder = encoder(num_bins=num_bins, num_classes=joint_dim)
        if getattr(self.encoder, "intermediate_layer", None):
            raise BadValue(f"model.encoder.intermediate_layer={self.encoder.intermediate_layer}: a transducer has no "
                           "intermediate CTC head; leave it null (model.ctc_head adds a CTC head on the encoder)")
        self.predictor = Predictor(num_classes, embedding_dim, hidden_size, num_layers, joint_dim, dropout)
        self.joiner = Joiner(joint_dim, num_classes)
        self.ctc_head = nn.Linear(joint_dim, num_classes) if ctc_head else None
        self.num_classes = num_classes

    def transcribe(self, sources: torch.Tensor, source_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frames in the joint space, ``[B, T', J]``, and their lengths."""
        return self.encoder(sources, source_lengths)

    def predict(self, targets: torch.Tensor, target_lengths: torch.Tensor,
                state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Prediction network outputs ``[B, U, J]`` after each label of ``targets``, from ``state``."""
        return self.predictor(targets, target_lengths, state)

    def join(self, source_encodings: torch.Tensor, source_lengths: torch.Tensor, target_encodings: torch.Tensor,
             target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.joiner(source_encodings, target_encodings), source_lengths, target_lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        encodings, lengths = self.transcribe(features, lengths)
        predictions, _, _ = self.predict(F.pad(targets, (1, 0), value=0), target_lengths + 1, None)
        joint = self.joiner(encodings, predictions)
        ctc_logits = self.ctc_head(encodings) if self.ctc_head is not None and self.training else None
        return joint, encodings, lengths, ctc_logits
