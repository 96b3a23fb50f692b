"""CTC decoders with one interface: ``decode(log_probs [B, T, C], lengths [B]) -> list[str]``.

``GreedyDecoder`` takes the best label of each frame. ``BeamSearchDecoder`` is flashlight's
beam search (through ``torchaudio.models.decoder.ctc_decoder``; ``pip install 'framework[lm]'``)
with an optional lexicon and an optional word n-gram language model (an ARPA file from
``python -m framework.prepare lm``, or any KenLM ARPA / binary file).

How the word n-gram is applied:

- With a lexicon (a words file, a list of words, or the training transcripts' words):
  flashlight's lexicon decoder. Hypotheses only spell lexicon words (a trie of their
  spellings in the tokenizer's units, characters or the subword pieces its encoding
  gives, a space between words optional); the LM scores each word as it is completed,
  ``word_score`` is added per word. A closed vocabulary: best when test words are known.
- Without a lexicon: flashlight's lexicon-free decoder, which would query an LM on every
  unit (a word LM would take single letters for words). So the word LM is wrapped: a unit
  extends the word being spelled at no cost; a space, a subword piece that starts a word,
  or the end of the utterance completes it, and the LM scores the word (words it never saw at ``<unk>``'s
  probability) plus ``word_score``. An open vocabulary: the acoustics may still spell new
  words, at a price. The LM's words are read from its ARPA file; a KenLM binary, whose
  vocabulary cannot be read here, needs a lexicon.
- ``lm_weight`` scales the LM's log10 probabilities (acoustic scores are natural logs);
  without an LM and a lexicon the search is plain CTC beam search, which agrees with
  greedy decoding wherever one path dominates.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from framework.text.ctc import greedy_decode
from framework.text.ngram import UNK
from framework.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MISSING_FLASHLIGHT = ("beam search needs flashlight-text: pip install 'framework[lm]' (or pip install flashlight-text), "
                      "or decode with decoder=greedy")


class GreedyDecoder:
    """Best path: the most likely label of each frame, repeats merged, blanks removed."""

    kind = "ctc"  # decodes CTC outputs

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in greedy_decode(log_probs, lengths)]


def training_words(texts: Iterable[str]) -> list[str]:
    """The lexicon of transcripts: their distinct words, lowercased (as the tokenizer does), sorted."""
    return sorted({w for text in texts for w in text.lower().split()})


class BeamSearchDecoder:
    """CTC beam search with an optional lexicon and word n-gram LM (see the module docstring).

    ``lexicon``: None (lexicon-free), a file with one word per line (the first field of each
    line, so flashlight's ``word spelling`` files work too) or a list of words, e.g.
    ``training_words(train_set.texts)``. Words the tokenizer cannot spell (characters outside
    its units) are left out. ``lm``: None or an ARPA / KenLM binary path.
    ``word_score`` is added per word; lexicon-free decoding applies it only with an LM (and lm_weight > 0).
    """

    kind = "ctc"

    def __init__(
        self,
        tokenizer: Tokenizer,
        beam_size: int = 50,
        lexicon: str | Path | Sequence[str] | None = None,
        lm: str | Path | None = None,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        beam_threshold: float = 50.0,
        beam_size_token: int | None = None,
        sil_score: float = 0.0,
        log_add: bool = False,
    ) -> None:
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as exc:  # torchaudio wraps flashlight's ImportError in a RuntimeError
            raise ImportError(MISSING_FLASHLIGHT) from exc
        if lexicon == "train":
            raise ValueError("lexicon: train stands for the training transcripts' words; the recipe passes them as "
                             "lexicon=training_words(train_set.texts)")
        if lm is not None and not Path(lm).is_file():
            raise FileNotFoundError(f"language model {lm} not found; build one with "
                                    f"python -m framework.prepare lm TRANSCRIPTS {lm}")

        symbols = list(tokenizer.symbols)
        blank, space = symbols[0], " "
        self.sil = "|" if "|" not in symbols else "<space>"
        # Flashlight needs a word separator token; units without a space (subword pieces, or an
        # alphabet without one) get one the model never emits.
        self.extra_sil = space not in symbols
        tokens = [self.sil if s == space else s for s in symbols] + ([self.sil] if self.extra_sil else [])
        self.units = [*tokenizer.surface, *([space] if self.extra_sil else [])]  # the text of each token

        options = dict(tokens=tokens, nbest=1, beam_size=beam_size, beam_size_token=beam_size_token,
                       beam_threshold=beam_threshold, lm_weight=lm_weight, word_score=word_score,
                       sil_score=sil_score, log_add=log_add, blank_token=blank, sil_token=self.sil, unk_word=UNK)
        self.lexicon_words: list[str] | None = None
        if lexicon is not None:
            spellings = self._spellable(lexicon, tokenizer)
            self.lexicon_words = list(spellings)
            with tempfile.TemporaryDirectory() as tmp:  # flashlight reads lexicons from a file
                path = Path(tmp) / "lexicon.txt"
                path.write_text("".join(f"{w}\t{' '.join(s)}\n" for w, s in spellings.items()), encoding="utf-8")
                self.decoder = ctc_decoder(lexicon=str(path), lm=None if lm is None else str(lm), **options)
        else:
            options.pop("word_score")  # applied by the wrapped LM, per word
            word_lm = None
            if lm is not None:
                from framework.text.word_lm import WordBoundaryLM

                word_lm = WordBoundaryLM(lm, self.units, word_score, lm_weight)
            self.decoder = ctc_decoder(lexicon=None, lm=word_lm, **options)

    @staticmethod
    def _spellable(lexicon: str | Path | Sequence[str], tokenizer: Tokenizer) -> dict[str, list[str]]:
        """Each word of the lexicon the tokenizer can spell, with its spelling."""
        if isinstance(lexicon, (str, Path)):
            path = Path(lexicon)
            if not path.is_file():
                raise FileNotFoundError(f"lexicon {path} not found; give a file of words, one per line")
            words = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            words = [str(w) for w in lexicon]
        words = sorted({w.lower() for w in words})
        spellings = {w: s for w, s in ((w, tokenizer.spell(w)) for w in words) if s}
        if len(spellings) < len(words):
            log.warning("lexicon: %d of %d words have characters outside the tokenizer's units and are left out",
                        len(words) - len(spellings), len(words))
        if not spellings:
            raise ValueError(f"lexicon {lexicon if isinstance(lexicon, (str, Path)) else '(list)'} has no word the "
                             "tokenizer's units can spell")
        return spellings

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().to("cpu", torch.float32)
        if self.extra_sil:
            emissions = torch.cat([emissions, torch.full_like(emissions[..., :1], -1e30)], dim=-1)
        hyps = self.decoder(emissions.contiguous(), lengths.detach().to("cpu", torch.int64))
        texts = []
        for best in hyps:
            if not best:
                texts.append("")
            elif self.lexicon_words is not None:
                texts.append(" ".join(best[0].words))
            else:
                texts.append(" ".join("".join(self.units[int(i)] for i in best[0].tokens).split()))
        return texts
