"""The units a speech recognition run transcribes in (``tokenizer=`` in conf/tokenizer/):
characters, or subword pieces learnt with sentencepiece.

A run learns its tokenizer from the training transcripts when it starts (or takes a
sentencepiece model made ahead of time by ``python -m framework.prepare tokenizer``) and
keeps it in the run directory, as ``file_name``; evaluation, transcription and resumed
runs load it from there, so they decode with the units the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from framework.errors import BadValue, UserError
from framework.text.subword import ModelType, SentencePieceTokenizer, sentencepiece
from framework.text.tokenizer import CharTokenizer, Tokenizer


class CharUnits:
    """``tokenizer=char``: the characters of the training transcripts."""

    file_name = "tokenizer.json"

    def fit(self, texts: Sequence[str]) -> CharTokenizer:
        return CharTokenizer.from_texts(texts)

    def load(self, path: Path) -> CharTokenizer:
        return CharTokenizer.load(path)

    def check(self, tokenizer: Tokenizer, path: Path) -> None:
        """Characters have no settings that a resumed run could change."""


class SubwordUnits:
    """``tokenizer=bpe|unigram``: ``vocab_size`` sentencepiece pieces learnt from the training
    transcripts, or the model at ``path`` (from ``python -m framework.prepare tokenizer``; of
    that type and size, and able to spell the training transcripts). The model's output has
    one class more than the pieces: the blank."""

    file_name = "tokenizer.model"

    def __init__(self, type: ModelType = "bpe", vocab_size: int = 256, path: str | None = None) -> None:
        sentencepiece()  # a missing package is named now, before any data is read
        if path is not None and not Path(path).is_file():
            raise BadValue(f"tokenizer.path={path}: no such file; make one with python -m framework.prepare tokenizer "
                           f"MANIFEST {path} --type {type} --vocab-size N, or leave tokenizer.path null to learn the "
                           "units from the training transcripts")
        self.type, self.vocab_size, self.path = type, vocab_size, path

    def fit(self, texts: Sequence[str]) -> SentencePieceTokenizer:
        if self.path is None:
            return SentencePieceTokenizer.train(texts, self.type, self.vocab_size)
        tokenizer = SentencePieceTokenizer.load(self.path)
        pieces = len(tokenizer) - 1
        if (tokenizer.model_type, pieces) != (self.type, self.vocab_size):  # the run's config must say what it uses
            raise UserError(f"tokenizer.path={self.path} holds {pieces} {tokenizer.model_type} pieces; use it with "
                            f"tokenizer={tokenizer.model_type} tokenizer.vocab_size={pieces}")
        unknown = sorted({c for t in texts for c in tokenizer.unknown(t)})
        if unknown:  # training targets must be spelled whole
            raise UserError(f"tokenizer.path={self.path}: its pieces cannot spell {''.join(unknown)!r} of the training "
                            "transcripts; make it from the training manifest (python -m framework.prepare tokenizer)")
        return tokenizer

    def load(self, path: Path) -> SentencePieceTokenizer:
        return SentencePieceTokenizer.load(path)

    def check(self, tokenizer: SentencePieceTokenizer, path: Path) -> None:
        """A resumed run must ask for the units it was started with (its model is trained on them)."""
        if self.path is not None:
            if Path(self.path).read_bytes() != tokenizer.model_proto:
                raise UserError(f"tokenizer.path={self.path}: not the model this run started with ({path}); resume "
                                "with the same tokenizer or start a new run")
            return
        pieces = len(tokenizer) - 1
        if (tokenizer.model_type, pieces) != (self.type, self.vocab_size):
            raise UserError(f"tokenizer={self.type} tokenizer.vocab_size={self.vocab_size}: this run started with "
                            f"tokenizer={tokenizer.model_type} tokenizer.vocab_size={pieces} ({path}); resume with "
                            "those or start a new run")


RUN_FILES = (CharUnits.file_name, SubwordUnits.file_name)
