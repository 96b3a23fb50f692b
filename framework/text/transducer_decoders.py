"""Transducer decoders with one interface: ``decode(model, encodings [B, T, J], lengths [B]) -> list[str]``,
for a model with torchaudio's RNNT interface (``predict``, ``join``; framework.models.Transducer)
whose blank is id 0.

``TransducerGreedyDecoder``: at each frame, emit the most likely label and advance the
prediction network until the blank wins (at most ``max_symbols_per_frame`` labels a frame),
for the whole batch at once. ``TransducerBeamDecoder``: torchaudio's ``RNNTBeamSearch``
(Graves 2012's beam search with hypotheses merged by label sequence), one utterance at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from torchaudio.models import RNNTBeamSearch

from framework.errors import BadValue
from framework.text.tokenizer import Tokenizer


class TransducerGreedyDecoder:
    kind = "transducer"  # decodes transducer outputs

    def __init__(self, tokenizer: Tokenizer, max_symbols_per_frame: int = 5) -> None:
        if max_symbols_per_frame < 1:
            raise BadValue(f"decoder.max_symbols_per_frame={max_symbols_per_frame}: must be >= 1")
        self.tokenizer = tokenizer
        self.max_symbols = max_symbols_per_frame

    @torch.no_grad()
    def decode(self, model: nn.Module, encodings: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in self.search(model, encodings, lengths)]

    def search(self, model: nn.Module, encodings: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Label ids of each utterance."""
        b, device = encodings.shape[0], encodings.device
        ones = torch.ones(b, dtype=torch.long, device=device)
        last = torch.zeros(b, 1, dtype=torch.long, device=device)  # the blank starts every utterance
        prediction, _, state = model.predict(last, ones, None)
        hyps: list[list[int]] = [[] for _ in range(b)]
        for t in range(int(lengths.max()) if b else 0):
            frame = encodings[:, t:t + 1]
            active = t < lengths  # utterances that still have frame t
            for _ in range(self.max_symbols):
                logits = model.join(frame, ones, prediction, ones)[0][:, 0, 0]  # [B, V]
                best = logits.argmax(-1)
                emit = active & (best != 0)
                if not bool(emit.any()):
                    break
                labels = best.tolist()
                for i in emit.nonzero()[:, 0].tolist():
                    hyps[i].append(labels[i])
                new_prediction, _, new_state = model.predict(best[:, None], ones, state)
                keep = emit[:, None, None]  # the others keep their prediction network where it was
                prediction = torch.where(keep, new_prediction, prediction)
                state = [[torch.where(keep, n, o) for n, o in zip(new, old)] for new, old in zip(new_state, state)]
                active = emit  # only an utterance that emitted may emit again at this frame
        return hyps


class BlankLast(nn.Module):
    """A transducer seen with its blank moved from the first class to the last, the layout
    torchaudio's ``RNNTBeamSearch`` assumes (it reads the blank's score at index -1):
    class ``c`` is index ``c - 1`` here, the blank index ``V - 1``. ``transcribe`` hands
    the encodings through, so the search runs on frames the encoder already produced."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def transcribe(self, sources: torch.Tensor, source_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sources, source_lengths

    def predict(self, targets: torch.Tensor, target_lengths: torch.Tensor, state):
        return self.model.predict((targets + 1) % self.num_classes, target_lengths, state)

    def join(self, source_encodings, source_lengths, target_encodings, target_lengths):
        logits, source_lengths, target_lengths = self.model.join(source_encodings, source_lengths, target_encodings,
                                                                 target_lengths)
        return torch.roll(logits.float(), -1, dims=-1), source_lengths, target_lengths


class TransducerBeamDecoder:
    kind = "transducer"

    def __init__(self, tokenizer: Tokenizer, beam_size: int = 8, max_symbols_per_frame: int = 5) -> None:
        if beam_size < 1 or max_symbols_per_frame < 1:
            raise BadValue(f"decoder.beam_size={beam_size}, decoder.max_symbols_per_frame={max_symbols_per_frame}: "
                           "both must be >= 1")
        self.tokenizer = tokenizer
        self.beam_size, self.max_symbols = beam_size, max_symbols_per_frame

    @torch.no_grad()
    def decode(self, model: nn.Module, encodings: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in self.search(model, encodings, lengths)]

    def search(self, model: nn.Module, encodings: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        classes = len(self.tokenizer)
        search = RNNTBeamSearch(BlankLast(model, classes), blank=classes - 1, step_max_tokens=self.max_symbols)
        hyps = []
        for frames, length in zip(encodings, lengths):
            best = search(frames[:length], length, self.beam_size)[0]
            hyps.append([token + 1 for token in best[0][1:]])  # after the start symbol; back to the model's ids
        return hyps
