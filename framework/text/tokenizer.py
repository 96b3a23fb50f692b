"""Tokenizers: text <-> label ids, id 0 the blank of CTC and of the transducer.

:class:`Tokenizer` is what recipes and decoders use of one; :class:`CharTokenizer` spells
in characters, :class:`framework.text.subword.SentencePieceTokenizer` in subword pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from framework.files import write_text_atomic

BLANK = "<blank>"


class Tokenizer:
    """The interface: ``symbols[i]`` names id ``i`` (``symbols[0]`` is the blank) and
    ``surface[i]`` is the text it stands for (``""`` for the blank; a leading space marks
    a unit that starts a word). Transcripts are compared after :meth:`normalize`, which
    is what ``decode(encode(text))`` gives back."""

    symbols: list[str]
    surface: list[str]

    def __len__(self) -> int:
        return len(self.symbols)

    def normalize(self, text: str) -> str:
        raise NotImplementedError

    def encode(self, text: str, drop_unknown: bool = False) -> list[int]:
        """Label ids; what the units cannot spell raises ValueError, or is left out with
        ``drop_unknown`` (evaluation transcripts may hold characters training never saw)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def spell(self, word: str) -> list[str] | None:
        """The symbols that spell ``word`` (for a decoder's lexicon); None when it cannot be spelled."""
        raise NotImplementedError

    def unknown(self, text: str) -> list[str]:
        """The characters of ``text`` that no unit covers."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        raise NotImplementedError

    def encode_batch(self, texts: list[str], drop_unknown: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated targets and their lengths, the layout CTCLoss takes."""
        ids = [self.encode(t, drop_unknown) for t in texts]
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        return torch.tensor([t for i in ids for t in i], dtype=torch.long), lengths


class CharTokenizer(Tokenizer):
    """The characters of the (lowercased) training transcripts."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols = [BLANK, *[s for s in symbols if s != BLANK]]
        self.surface = ["", *self.symbols[1:]]
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], lowercase: bool = True) -> CharTokenizer:
        chars = set()
        for text in texts:
            chars.update(text.lower() if lowercase else text)
        return cls(sorted(chars))

    def normalize(self, text: str) -> str:
        return text.lower()

    def encode(self, text: str, drop_unknown: bool = False) -> list[int]:
        if drop_unknown:
            return [self.index[c] for c in text.lower() if c in self.index]
        try:
            return [self.index[c] for c in text.lower()]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} in {text!r} is not in the tokenizer's alphabet") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.symbols[i] for i in ids if i != 0)

    def spell(self, word: str) -> list[str] | None:
        letters = list(word.lower())
        return letters if all(c in self.index and c != " " for c in letters) else None

    def unknown(self, text: str) -> list[str]:
        return [c for c in text.lower() if c not in self.index]

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps({"symbols": self.symbols[1:]}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls(json.loads(Path(path).read_text())["symbols"])
