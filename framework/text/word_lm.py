"""A word n-gram for flashlight's lexicon-free CTC decoder, which queries its LM on every token.

Units (characters or subword pieces) extend the word being spelled at no cost; a space, a
piece that starts a word, or the end of the utterance completes it and KenLM scores it (a
word the LM never saw as ``<unk>``). Needs flashlight-text.
"""

from __future__ import annotations

from pathlib import Path

from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary
from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

from framework.text.ngram import UNK, read_arpa


class WordBoundaryLM(CTCDecoderLM):
    """flashlight merges hypotheses whose LM states are the same object, so each state is a
    node of a trie over token sequences (``state.child(token)``), mapped here to
    (KenLM state, the word spelled so far). ``units[i]`` is the text of token ``i``; a leading
    space (the space itself, or a piece that starts a word) ends the word before it."""

    def __init__(self, path: str | Path, units: list[str], word_score: float = 0.0, lm_weight: float = 1.0) -> None:
        CTCDecoderLM.__init__(self)
        path = str(path)
        with open(path, "rb") as f:
            if b"\\data\\" not in f.read(4096):
                raise ValueError(f"{path}: lexicon-free decoding reads the LM's words from its ARPA file; give the "
                                 "ARPA file, or a lexicon with this KenLM binary")
        self.words = Dictionary(read_arpa(path, max_order=1).vocabulary)
        self.kenlm = KenLM(path, self.words)
        self.unk = self.words.get_index(UNK)
        self.units = units
        # flashlight multiplies what score() returns by lm_weight; the word score is not to be scaled.
        self.bonus = word_score / lm_weight if lm_weight else 0.0
        self.states: dict = {}

    def _complete(self, ken, word: str):
        index = self.words.get_index(word) if self.words.contains(word) else self.unk
        ken, score = self.kenlm.score(ken, index)
        return ken, score + self.bonus

    def start(self, start_with_nothing: bool):
        state = CTCDecoderLMState()
        # A new utterance: forget the last one's trie.
        self.states = {state: (self.kenlm.start(False), "")}
        self.steps: dict = {}  # (state, token) -> (child state, score), what score() returns
        return state

    def score(self, state, token: int):
        step = self.steps.get((state, token))
        if step is None:  # flashlight asks again for most (state, token) pairs, frame after frame
            ken, word = self.states[state]
            score = 0.0
            text = self.units[token]
            if text.startswith(" "):
                if word:
                    ken, score = self._complete(ken, word)
                word = text[1:]
            else:
                word += text
            child = state.child(token)
            self.states[child] = (ken, word)
            step = self.steps[(state, token)] = (child, score)
        return step

    def finish(self, state):
        ken, word = self.states[state]
        score = 0.0
        if word:
            ken, score = self._complete(ken, word)
        return state, score + self.kenlm.finish(ken)[1]
