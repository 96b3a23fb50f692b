"""``python -m framework.prepare lm TRANSCRIPTS out.arpa``: a word n-gram LM of transcripts.

TRANSCRIPTS is a manifest (.json, .jsonl, .csv, .tsv; the transcript under one of the
manifest keys ``words``, ``wrd``, ``text``, ``transcript``) or a text file of one sentence
per line. Words are lowercased, as the character tokenizer lowercases transcripts,
so the LM's words are the ones the decoder spells.
"""

from __future__ import annotations

from pathlib import Path

from framework.data.manifest import TEXT_KEYS, ManifestError, read_manifest_rows, transcript_key, transcript_of
from framework.errors import UserError
from framework.text.ngram import estimate, write_arpa

MANIFEST_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv")


def read_sentences(path: str | Path) -> list[list[str]]:
    """Lowercased words of each transcript; errors name the file (and entry)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: transcripts file not found")
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        rows = read_manifest_rows(path)
        key = transcript_key(rows)
        if key is None:
            raise ManifestError(f"{path}: no entry has a transcript (looked for {' / '.join(TEXT_KEYS)})")
        texts = [transcript_of(row, key, f"{path}: entry {uid!r}", "add it or remove the entry") for uid, row in rows]
    else:
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    sentences = [words for words in (t.lower().split() for t in texts) if words]
    if not sentences:
        raise ManifestError(f"{path}: no transcripts with words")
    return sentences


def build_lm(transcripts: str | Path, out: str | Path, order: int = 3) -> None:
    if order < 1:
        raise UserError(f"--order must be >= 1, got {order}")
    sentences = read_sentences(transcripts)
    model = estimate(sentences, order)
    write_arpa(model, out)
    sizes = [sum(len(g) == k for g in model.logprob) for k in range(1, order + 1)]
    print(f"{out}: {order}-gram of {len(sentences)} sentences, {sum(map(len, sentences))} words; "
          + ", ".join(f"{n} {k}-grams" for k, n in enumerate(sizes, 1)))
