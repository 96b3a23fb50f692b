"""``python -m framework.prepare tokenizer TRANSCRIPTS OUT --type bpe --vocab-size N``: subword
units learnt ahead of time, for runs to share (``tokenizer=bpe tokenizer.path=OUT``).

TRANSCRIPTS is read as ``framework.prepare lm`` reads it (a manifest or a text file of one
sentence per line); OUT is a sentencepiece ``.model`` file, made as a run would make it from
its training transcripts.
"""

from __future__ import annotations

from pathlib import Path

from framework.prepare.lm import read_sentences
from framework.text.subword import ModelType, SentencePieceTokenizer


def build_tokenizer(transcripts: str | Path, out: str | Path, model_type: ModelType = "bpe",
                    vocab_size: int = 256) -> None:
    texts = [" ".join(words) for words in read_sentences(transcripts)]
    SentencePieceTokenizer.train(texts, model_type, vocab_size, option="--vocab-size").save(out)
    print(f"{out}: {model_type} tokenizer of {vocab_size} pieces from {len(texts)} transcripts; train with "
          f"tokenizer={model_type} tokenizer.vocab_size={vocab_size} tokenizer.path={out}")
