"""Subword units: a sentencepiece model (BPE or unigram) behind the :class:`Tokenizer` interface.

Id 0 is the blank; id ``i + 1`` is sentencepiece's piece ``i``, so any sentencepiece model
works as it is. Models trained here have one special piece, ``<unk>`` (no ``<s>`` / ``</s>``),
cover every character of the transcripts (``character_coverage=1``) and normalise nothing
themselves: text is lowercased and its whitespace collapsed first (:meth:`normalize`), so
decoding an encoding gives back exactly the normalised text. Pieces never cross a space;
a piece that starts a word begins with ``▁``. Needs ``pip install 'framework[subword]'``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from framework.errors import UserError
from framework.files import write_atomic
from framework.text.tokenizer import BLANK, Tokenizer

WORD_START = "\u2581"  # sentencepiece's mark of a piece that starts a word
MISSING_SENTENCEPIECE = ("subword tokenizers need sentencepiece: pip install 'framework[subword]' (or pip install "
                         "sentencepiece), or use tokenizer=char")
ModelType = Literal["bpe", "unigram"]


class MissingSentencePiece(UserError, ImportError):
    """sentencepiece is not installed (a one-line error naming the extra)."""


def sentencepiece():
    try:
        import sentencepiece as spm
    except ImportError as exc:
        raise MissingSentencePiece(MISSING_SENTENCEPIECE) from exc
    return spm


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model, from its serialized bytes (the ``.model`` file)."""

    def __init__(self, model_proto: bytes) -> None:
        spm = sentencepiece()
        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        sp = self.processor
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        self.symbols = [BLANK, *pieces]
        # <unk> and control pieces stand for no text: decoding leaves them out
        self.textless = {0} | {i + 1 for i in range(len(pieces)) if sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i)}
        self.surface = ["" if i in self.textless else s.replace(WORD_START, " ") for i, s in enumerate(self.symbols)]
        self.characters = set("".join(self.surface)) | {" "}

    @classmethod
    def train(cls, texts: Iterable[str], model_type: ModelType = "bpe", vocab_size: int = 256,
              option: str = "tokenizer.vocab_size") -> SentencePieceTokenizer:
        """Learns ``vocab_size`` pieces (``<unk>`` included) from ``texts``. A size the text
        cannot give is a :class:`UserError` naming ``option`` and the size that works."""
        spm = sentencepiece()
        if vocab_size < 1:
            raise UserError(f"{option}={vocab_size}: must be >= 1")
        sentences = [s for s in (normalize(t) for t in texts) if s]
        if not sentences:
            raise UserError("no transcripts to learn subword units from")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=model, model_type=model_type, vocab_size=vocab_size,
                character_coverage=1.0, normalization_rule_name="identity", unk_id=0, bos_id=-1, eos_id=-1,
                num_threads=1, minloglevel=2,
            )
        except RuntimeError as exc:
            raise _vocab_size_error(str(exc), option, vocab_size) or exc from None
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        write_atomic(path, lambda f: f.write(self.model_proto))

    @property
    def model_type(self) -> str:
        """``bpe``, ``unigram``, ... as the model was trained."""
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_proto)
        return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()

    def normalize(self, text: str) -> str:
        return normalize(text)

    def encode(self, text: str, drop_unknown: bool = False) -> list[int]:
        ids = self.processor.encode(normalize(text))
        unk = self.processor.unk_id()
        if unk in ids and not drop_unknown:
            raise ValueError(f"character(s) {''.join(self.unknown(text))!r} in {text!r} are not in the tokenizer's "
                             "pieces")
        return [i + 1 for i in ids if i != unk]

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode([i - 1 for i in ids if i not in self.textless])

    def spell(self, word: str) -> list[str] | None:
        ids = self.processor.encode(normalize(word))
        if not ids or self.processor.unk_id() in ids:
            return None
        return [self.symbols[i + 1] for i in ids]

    def unknown(self, text: str) -> list[str]:
        return [c for c in normalize(text) if c not in self.characters]


def normalize(text: str) -> str:
    """Lowercased, runs of whitespace made one space, none at the ends."""
    return " ".join(text.lower().split())


def _vocab_size_error(message: str, option: str, vocab_size: int) -> UserError | None:
    """sentencepiece's refusal of a vocabulary size, as one line naming the option and the size that works."""
    high = re.search(r"Vocabulary size too high .*value <= (\d+)", message)
    if high:
        return UserError(f"{option}={vocab_size}: too large for the training transcripts; the largest that works is "
                         f"{high.group(1)}")
    low = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if low:
        return UserError(f"{option}={vocab_size}: too small for the characters of the training transcripts; the "
                         f"smallest that works is {low.group(1)}")
    return None
