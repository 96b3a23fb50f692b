"""Word n-gram language models: interpolated modified Kneser-Ney estimation, ARPA files.

No package on PyPI fits this job: ``kenlm`` ships only the query side (not ``lmplz``),
``nltk.lm`` writes no ARPA, and the small ARPA builders either normalise incorrectly or
leave out ``<unk>``, which decoders need. The estimator is the textbook one (Chen & Goodman
1998, as in KenLM's ``lmplz``), in pure Python, for corpora of transcripts (a 3-gram of
half a million words: about 40 s on one core, estimation and writing); for larger text use
``lmplz``, whose ARPA files load the same.

- Each sentence is ``<s> w1 .. wn </s>``; the vocabulary is every word seen, ``</s>`` and
  ``<unk>`` (the probability of unseen words; ``<s>`` is only a context, log10 p = -99).
- The highest order uses counts; lower orders use continuation counts (how many different
  words precede the n-gram), except n-grams starting with ``<s>``, which keep their counts.
- Three discounts per order (for counts 1, 2 and 3+) from the counts of counts; where a
  corpus is too small to estimate them, KenLM's fallback 0.5, 1, 1.5.
- Interpolated: p(w|h) = (a(hw) - D) / a(h.) + gamma(h) p(w|h'), down to a uniform
  distribution over the vocabulary. Written in ARPA's backoff form, where gamma(h) is the
  backoff weight of h, so every context's distribution sums to 1.
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from framework.files import write_atomic

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
NEVER = -99.0  # log10 probability ARPA files give <s>, which is never predicted

Ngram = tuple[str, ...]


@dataclass
class NgramModel:
    """An n-gram model in backoff form: log10 p of each listed n-gram, log10 backoff of each context."""

    order: int
    logprob: dict[Ngram, float] = field(default_factory=dict)
    backoff: dict[Ngram, float] = field(default_factory=dict)

    @property
    def vocabulary(self) -> list[str]:
        return [g[0] for g in self.logprob if len(g) == 1]

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context); words outside the vocabulary are ``<unk>``."""
        known = self.logprob
        word = word if (word,) in known else UNK
        history = tuple(w if (w,) in known else UNK for w in context[max(0, len(context) - self.order + 1):])
        penalty = 0.0
        for start in range(len(history) + 1):  # the longest listed n-gram, plus the backoffs of the contexts skipped
            h = history[start:]
            p = known.get((*h, word))
            if p is not None:
                return penalty + p
            penalty += self.backoff.get(h, 0.0)
        raise ValueError(f"{word!r} has no unigram probability; the model has no {UNK}")

    def sentence_log10(self, words: Sequence[str]) -> float:
        """log10 p of ``<s> words </s>``."""
        tokens = [BOS, *words, EOS]
        return sum(self.log10_prob(tokens[i], tokens[max(0, i - self.order + 1):i]) for i in range(1, len(tokens)))

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """Per-token perplexity, ``</s>`` counted as a token (as KenLM and SRILM do), unknown words as ``<unk>``."""
        total, count = 0.0, 0
        for words in sentences:
            total += self.sentence_log10(words)
            count += len(words) + 1
        return 10 ** (-total / max(count, 1))


def discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the counts of one order's n-grams;
    the fallback where the counts of counts cannot give them (0 < Dj <= j)."""
    n = Counter(c for c in counts if c <= 4)
    n1, n2, n3, n4 = (n[k] for k in (1, 2, 3, 4))
    if not (n1 and n2 and n3 and n4):
        return FALLBACK_DISCOUNTS
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    return d if all(0 < dj <= j for j, dj in enumerate(d, 1)) else FALLBACK_DISCOUNTS


def estimate(sentences: Iterable[Sequence[str]], order: int = 3) -> NgramModel:
    """An interpolated modified Kneser-Ney model of ``sentences`` (each a list of words)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    counts: list[Counter[Ngram]] = [Counter() for _ in range(order)]  # counts[k - 1]: k-grams
    for words in sentences:
        tokens = (BOS, *words, EOS)
        for k in range(1, order + 1):
            grams = counts[k - 1]
            for i in range(len(tokens) - k + 1):
                grams[tokens[i:i + k]] += 1
    if not counts[0]:
        raise ValueError("no sentences to estimate a language model from")

    # Adjusted counts: counts at the highest order and for n-grams starting with <s>,
    # continuation counts (distinct left neighbours) below.
    adjusted: list[dict[Ngram, int]] = [dict(counts[-1])]
    for k in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in counts[k])
        adjusted.insert(0, {g: (c if g[0] == BOS else left[g]) for g, c in counts[k - 1].items()})
    unigrams = adjusted[0]
    del unigrams[(BOS,)]  # a context only
    unigrams.setdefault((UNK,), 0)

    model = NgramModel(order)
    uniform = 1.0 / len(unigrams)
    for k, grams in enumerate(adjusted, 1):
        d = (0.0, *discounts(grams.values()))
        total: dict[Ngram, int] = defaultdict(int)
        mass: dict[Ngram, float] = defaultdict(float)  # discounted away from each context
        for g, a in grams.items():
            total[g[:-1]] += a
            mass[g[:-1]] += d[min(a, 3)]
        gamma = {h: mass[h] / total[h] for h in total}
        for g, a in grams.items():
            h = g[:-1]
            lower = uniform if k == 1 else 10 ** model.logprob[g[1:]]
            model.logprob[g] = math.log10((a - d[min(a, 3)]) / total[h] + gamma[h] * lower)
        if k > 1:
            model.backoff.update((h, math.log10(w)) for h, w in gamma.items())
    model.logprob[(BOS,)] = NEVER
    return model


def write_arpa(model: NgramModel, path: str | Path) -> None:
    """Writes ``model`` in ARPA format, atomically (a temporary file renamed into place)."""
    # KenLM loads bigram models and up: a unigram model is written with an empty 2-gram section.
    by_order: list[list[Ngram]] = [[] for _ in range(max(model.order, 2))]
    for g in model.logprob:
        by_order[len(g) - 1].append(g)

    def fill(raw: BinaryIO) -> None:
        f = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        f.write("\\data\\\n")
        f.writelines(f"ngram {k}={len(grams)}\n" for k, grams in enumerate(by_order, 1))
        for k, grams in enumerate(by_order, 1):
            f.write(f"\n\\{k}-grams:\n")
            for g in sorted(grams):
                bo = model.backoff.get(g)
                f.write(f"{model.logprob[g]:.7f}\t{' '.join(g)}" + (f"\t{bo:.7f}\n" if bo is not None else "\n"))
        f.write("\n\\end\\\n")
        f.flush()
        f.detach()  # the raw file stays open for write_atomic's fsync

    write_atomic(path, fill)


def read_arpa(path: str | Path, max_order: int | None = None) -> NgramModel:
    """Reads an ARPA file, up to ``max_order`` (``1``: just the vocabulary and unigrams);
    a malformed one raises ValueError naming the file and line."""
    path = Path(path)
    model: NgramModel | None = None
    k, started = 0, False
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            started = started or line == "\\data\\"  # text before it is a comment
            if not started or not line or line in ("\\data\\", "\\end\\") or line.startswith("ngram "):
                continue
            if line.startswith("\\") and line.endswith("-grams:"):
                k = int(line[1:-7]) if line[1:-7].isdigit() else 0
                if max_order is not None and k > max_order:
                    break
                model = model or NgramModel(0)
                continue
            fields = line.split()
            if model is None or not k or len(fields) not in (k + 1, k + 2):
                raise ValueError(f"{path}:{n}: expected 'log10p w1..w{k or 'n'} [backoff]', got {line[:80]!r}")
            model.order = max(model.order, k)  # of the n-grams there are, not of the sections
            g = tuple(fields[1:k + 1])
            model.logprob[g] = float(fields[0])
            if len(fields) == k + 2:
                model.backoff[g] = float(fields[-1])
    if model is None:
        raise ValueError(f"{path}: not an ARPA file (no \\1-grams: section)")
    return model
