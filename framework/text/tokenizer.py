"""Character tokenizer; index 0 is the CTC blank."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from framework.files import write_text_atomic

BLANK = "<blank>"


class CharTokenizer:
    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols = [BLANK, *[s for s in symbols if s != BLANK]]
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], lowercase: bool = True) -> CharTokenizer:
        chars = set()
        for text in texts:
            chars.update(text.lower() if lowercase else text)
        return cls(sorted(chars))

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str, drop_unknown: bool = False) -> list[int]:
        """Symbol ids; characters outside the alphabet raise, or are left out with
        ``drop_unknown`` (evaluation transcripts may hold characters training never saw)."""
        if drop_unknown:
            return [self.index[c] for c in text.lower() if c in self.index]
        try:
            return [self.index[c] for c in text.lower()]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} in {text!r} is not in the tokenizer's alphabet") from None

    def encode_batch(self, texts: list[str], drop_unknown: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated targets and their lengths, the layout CTCLoss takes."""
        ids = [self.encode(t, drop_unknown) for t in texts]
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        return torch.tensor([t for i in ids for t in i], dtype=torch.long), lengths

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.symbols[i] for i in ids if i != 0)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps({"symbols": self.symbols[1:]}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls(json.loads(Path(path).read_text())["symbols"])
