"""Manifest datasets: SpeechBrain-style JSON, JSON Lines and CSV.

Lengths come from the manifest (a duration in seconds or a length in samples), never from
decoding audio, so samplers can plan batches before a single file is opened. An entry with an
``offset`` (seconds) is the segment ``[offset, offset + duration]`` of its file, as in NeMo
manifests; only that segment is read. When audio is read, its real length must match the
declared one within ``max(LENGTH_TOLERANCE_S, LENGTH_TOLERANCE x declared)``: batches were
planned on the declared length.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from framework.data.audio import AudioError, read_audio
from framework.data.collate import SkippedExample
from framework.errors import UserError

log = logging.getLogger(__name__)

# Keys tried in order when the config does not name one.
AUDIO_KEYS = ("file_path", "wav", "audio_filepath", "audio_path", "path", "audio", "file")
TEXT_KEYS = ("words", "wrd", "text", "transcript")
DURATION_KEYS = ("duration", "duration_s")
SAMPLES_KEYS = ("length", "num_samples")
ID_KEYS = ("ID", "id", "utt_id", "key")
OFFSET_KEY = "offset"  # NeMo: seconds into the file where the entry's segment starts
# Segment bounds in other toolkits' words (seconds or samples? an end or a length?): refused, not guessed.
OTHER_TIMING_KEYS = re.compile(r"(start|stop|end|begin|onset)(_?time|_s|_sec|_seconds|_samples?)?", re.IGNORECASE)
LENGTH_TOLERANCE_S = 0.1  # how far the audio read may be from the declared length: this many seconds,
LENGTH_TOLERANCE = 0.05  # or this fraction of the declared length, whichever is larger


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class Hints:
    """How the user of the command reading a manifest sets what its error messages suggest:
    a dataset's overrides (:func:`dataset_hints`), a prepare command's flags. None: the
    command cannot set it."""

    skip_bad: str | None
    audio_key: str | None
    data_root: str | None = "dataset.data_root=DIR"
    replacement: str | None = "+dataset.replacements.{name}=VALUE"

    def or_skip(self, remedy: str) -> str:
        """``remedy``, or leaving such entries out where the command can."""
        return f"{remedy}, or pass {self.skip_bad}" if self.skip_bad else remedy

    def placeholder(self, name: str) -> str:
        """How to give placeholder ``name`` a value."""
        how = self.data_root if name == "data_root" else self.replacement and self.replacement.format(name=name)
        return f"set it with {how}" if how else "write that part of the path out in the manifest"

    def key(self, default: str) -> str:
        """How to name the manifest's audio key."""
        return f"name it with {self.audio_key}" if self.audio_key else f"rename it to {default!r}"


_split: ContextVar[str] = ContextVar("dataset_split", default="train")


@contextlib.contextmanager
def building_split(split: str) -> Iterator[None]:
    """Datasets made within it name ``dataset.<split>`` in what their errors suggest."""
    token = _split.set(split)
    try:
        yield
    finally:
        _split.reset(token)


def dataset_hints() -> Hints:
    """What a dataset's errors suggest: the overrides of the split being built (``dataset.train``
    outside :func:`building_split`)."""
    split = _split.get()
    return Hints(skip_bad=f"dataset.{split}.skip_bad=true", audio_key=f"dataset.{split}.audio_key=KEY")


@dataclass(frozen=True)
class Entry:
    id: str
    path: str
    duration: float  # seconds, of the segment when the entry has an offset
    text: str | None = None
    start: float | None = None  # the segment's bounds in the file (seconds), when the entry has an offset
    stop: float | None = None
    fields: dict[str, Any] = dataclass_field(default_factory=dict)  # the entry's other fields (speaker, label...)


def read_manifest_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(id, fields) per row of a JSON, JSONL or CSV manifest, chosen by extension."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(), object_pairs_hook=lambda pairs: _unique(pairs, path))
            if not isinstance(data, dict):
                raise ManifestError(
                    f"{path}: a .json manifest must be an object {{id: {{...}}}}; "
                    "for one object per line use the .jsonl extension"
                )
            rows = [(str(k), v) for k, v in data.items()]
            bad = next((uid for uid, v in rows if not isinstance(v, dict)), None)
            if bad is not None:
                raise ManifestError(f"{path}: entry {bad!r} is not an object of fields ({{\"wav\": ..., ...}})")
            return rows
        if suffix in (".jsonl", ".ndjson"):
            rows, where = [], []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ManifestError(f"{path}: line {n} is not a JSON object")
                    rows.append((_row_id(obj, f"{path.stem}-{n}"), obj))
                    where.append(f"line {n}")
            _no_duplicate_ids(rows, where, path)
            return rows
        if suffix in (".csv", ".tsv"):
            with path.open(newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows = [(_row_id(r, None), r) for r in reader]
            if rows and any(i is None for i, _ in rows):
                raise ManifestError(f"{path}: a CSV manifest needs an ID column (one of {ID_KEYS})")
            _no_duplicate_ids(rows, [f"row {n}" for n in range(2, len(rows) + 2)], path)  # row 1 is the header
            return rows
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    raise ManifestError(f"{path}: unknown manifest extension {suffix!r}; use .json, .jsonl or .csv")


def _unique(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen and isinstance(value, dict):
            raise ManifestError(f"{path}: id {key!r} appears twice; ids must be unique")
        seen[key] = value
    return seen


def _no_duplicate_ids(rows: list[tuple[str, Any]], where: list[str], path: Path) -> None:
    first: dict[str, str] = {}
    for (uid, _), place in zip(rows, where):
        if uid in first:
            raise ManifestError(f"{path}: id {uid!r} appears twice ({first[uid]} and {place}); ids must be unique")
        first[uid] = place


def _row_id(row: Mapping[str, Any], default: str | None) -> str | None:
    for key in ID_KEYS:
        if key in row and row[key] not in (None, ""):
            return str(row[key])
    return default


def _pick(row: Mapping[str, Any], configured: str | None, candidates: tuple[str, ...]) -> str | None:
    if configured is not None:
        return configured
    return next((k for k in candidates if k in row), None)


def fill_placeholders(value: str, replacements: Mapping[str, str]) -> str:
    """Replaces ``{name}`` and ``$name`` with ``replacements[name]``."""
    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in replacements:
            raise KeyError(name)
        return str(replacements[name])

    return re.sub(r"\{(\w+)\}|\$(\w+)", sub, value)


def transcript_key(rows: Sequence[tuple[str, Any]]) -> str | None:
    """The manifest's transcript key: the first of ``TEXT_KEYS`` that any entry has. One
    key for the whole manifest, so an entry without it is an error, not an empty transcript."""
    return next((k for k in TEXT_KEYS if any(k in row for _, row in rows)), None)


def transcript_of(row: Mapping[str, Any], key: str, where: str, remedy: str) -> str:
    """The entry's transcript under the manifest's ``key``; an entry without one is an error."""
    if row.get(key) is None:
        raise ManifestError(f"{where} has no transcript (key {key!r}, which other entries have); {remedy}")
    return str(row[key])


def load_entries(
    path: str | Path,
    *,
    replacements: Mapping[str, str] | None = None,
    audio_key: str | None = None,
    text_key: str | None = None,
    duration_key: str | None = None,
    samples_key: str | None = None,
    sample_rate: int = 16000,
    skip_bad: bool = False,
    hints: Hints | None = None,
) -> list[Entry]:
    """Parses a manifest into entries; every problem names the file, entry and key (and says
    what to do in ``hints``' terms; a dataset's by default). With ``skip_bad`` an entry with a
    problem is left out (counted and reported) instead."""
    hints = hints or dataset_hints()
    rows = read_manifest_rows(path)
    if not rows:
        raise ManifestError(f"{path}: manifest has no entries")
    replacements = dict(replacements or {})
    base = Path(path).parent
    t_key = text_key or transcript_key(rows)
    entries, skipped = [], []
    for uid, row in rows:
        try:
            entries.append(_entry(uid, row, f"{path}: entry {uid!r}", base, replacements, audio_key, t_key,
                                  duration_key, samples_key, sample_rate, hints))
        except ManifestError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
    if skipped:
        log.warning("%s: %d bad entr%s skipped (skip_bad); first: %s", path, len(skipped),
                    "y" if len(skipped) == 1 else "ies", skipped[0])
    if not entries:
        raise ManifestError(f"{path}: no usable entries")
    return entries


def _entry(uid: str, row: Mapping[str, Any], where: str, base: Path, replacements: Mapping[str, str],
           audio_key: str | None, text_key: str | None, duration_key: str | None, samples_key: str | None,
           sample_rate: int, hints: Hints) -> Entry:
    a_key = _pick(row, audio_key, AUDIO_KEYS)
    if a_key is None or row.get(a_key) in (None, ""):
        raise ManifestError(f"{where} has no audio path (looked for key {a_key or ' / '.join(AUDIO_KEYS)}); "
                            f"{hints.key(AUDIO_KEYS[1])}")
    try:
        audio = fill_placeholders(str(row[a_key]), replacements)
    except KeyError as exc:
        raise ManifestError(f"{where}: placeholder {exc.args[0]!r} in {row[a_key]!r} has no value; "
                            f"{hints.placeholder(exc.args[0])}") from None
    if not Path(audio).is_absolute():
        audio = str(base / audio)
    d_key = _pick(row, duration_key, DURATION_KEYS)
    s_key = _pick(row, samples_key, SAMPLES_KEYS) if d_key is None else None
    timing = next((k for k in row if k not in (a_key, text_key, d_key, s_key) and OTHER_TIMING_KEYS.fullmatch(k)), None)
    if timing is not None:
        raise ManifestError(f"{where}: timing key {timing!r} is not understood; give a segment as NeMo does, "
                            f"{OFFSET_KEY!r} (seconds into the file) with 'duration' (seconds), or remove the key")
    if d_key is not None and d_key in row:
        duration, named = _float_or_none(row, d_key, where), f"{d_key}={row[d_key]!r}"
    elif s_key is not None and s_key in row:
        duration, named = _float_or_none(row, s_key, where) / sample_rate, f"{s_key}={row[s_key]!r}"
    else:
        raise ManifestError(
            f"{where} has no length: add a duration in seconds ({' / '.join(DURATION_KEYS)}) or a "
            f"length in samples ({' / '.join(SAMPLES_KEYS)}), e.g. with `python -m framework.prepare manifest`"
        )
    if duration is None or not math.isfinite(duration) or duration <= 0:
        raise ManifestError(f"{where}: {named} is not a positive length; {hints.or_skip('fix the entry or remove it')}")
    start = _float_or_none(row, OFFSET_KEY, where)
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise ManifestError(f"{where}: {OFFSET_KEY}={row[OFFSET_KEY]!r} is not a time in the file (seconds >= 0)")
    stop = None if start is None else start + duration
    text = None if text_key is None else transcript_of(row, text_key, where, hints.or_skip("add it or remove the entry"))
    used = {a_key, text_key, d_key, s_key, OFFSET_KEY, *ID_KEYS}
    fields = {k: v for k, v in row.items() if k not in used}
    return Entry(uid, audio, float(duration), text, start, stop, fields)


def read_entry(entry: Entry, sample_rate: int, *, resample: bool = True, mono: bool = True) -> torch.Tensor:
    """The entry's audio (its segment when it has an offset), as :func:`read_audio` returns it.
    Audio whose length is off the declared one by more than the tolerance is an
    :class:`AudioError` naming the file: the batches were planned on the declared length."""
    wav = read_audio(entry.path, sample_rate, start=entry.start, stop=entry.stop, resample=resample, mono=mono)
    seconds = wav.shape[-1] / sample_rate
    if abs(seconds - entry.duration) > max(LENGTH_TOLERANCE_S, LENGTH_TOLERANCE * entry.duration):
        what = "the audio" if entry.start is None else f"the segment from {OFFSET_KEY} {entry.start:g} s"
        raise AudioError(f"{entry.path}: {what} is {seconds:.2f} s long but the manifest declares {entry.duration:.2f} s; "
                         "fix the manifest (e.g. regenerate it with `python -m framework.prepare manifest`)")
    return wav


def _float_or_none(row: Mapping[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: {key}={value!r} is not a number") from None


class ManifestDataset(Dataset):
    """Examples ``{"id", "inputs", "text", <other fields>}`` read from a manifest.

    ``inputs`` is the waveform ``[samples]``; ``text`` the transcript when the manifest has
    one; every other field of the entry (a speaker id, a label...) comes under its own name
    and reaches the batch so (``batch.spkID``). ``lengths`` (seconds) drive the batch
    samplers. With ``skip_bad``, bad entries are left out when the manifest is read and
    unreadable audio becomes a :class:`SkippedExample` (counted and reported in training).
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int = 16000,
        data_root: str | None = None,
        replacements: Mapping[str, str] | None = None,
        audio_key: str | None = None,
        text_key: str | None = None,
        duration_key: str | None = None,
        samples_key: str | None = None,
        min_duration: float | None = None,
        max_duration: float | None = None,
        select_n: int | None = None,
        resample: bool = True,
        mono: bool = True,
        skip_bad: bool = False,
    ) -> None:
        self.path = str(path)
        self.sample_rate = sample_rate
        self.hints = dataset_hints()  # its split's, for the errors its workers raise
        reps = dict(replacements or {})
        if data_root is not None:
            reps.setdefault("data_root", str(Path(data_root).resolve()))
        entries = load_entries(
            path,
            replacements=reps,
            audio_key=audio_key,
            text_key=text_key,
            duration_key=duration_key,
            samples_key=samples_key,
            sample_rate=sample_rate,
            skip_bad=skip_bad,
        )
        n_all = len(entries)
        if min_duration is not None:
            entries = [e for e in entries if e.duration >= min_duration]
        if max_duration is not None:
            entries = [e for e in entries if e.duration <= max_duration]
        if select_n is not None:
            entries = entries[:select_n]
        if len(entries) < n_all:
            log.info("%s: kept %d of %d entries (duration filter / select_n)", path, len(entries), n_all)
        if not entries:
            raise ManifestError(f"{path}: no entries left after min_duration/max_duration/select_n")
        self.entries = entries
        self.lengths = np.array([e.duration for e in entries], dtype=np.float64)
        self.resample = resample
        self.mono = mono
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedExample:
        entry = self.entries[index]
        try:
            wav = read_entry(entry, self.sample_rate, resample=self.resample, mono=self.mono)
        except AudioError as exc:
            if self.skip_bad:
                return SkippedExample(entry.id, str(exc))
            raise AudioError(f"{self.path}: entry {entry.id!r}: {self.hints.or_skip(str(exc))}") from exc
        example: dict[str, Any] = {**entry.fields, "id": entry.id, "inputs": wav}
        if entry.text is not None:
            example["text"] = entry.text
        return example

    @property
    def texts(self) -> list[str]:
        return [e.text or "" for e in self.entries]

    @property
    def labels(self) -> list[Any]:
        """Each entry's ``label`` field (None where it has none), without reading audio: the
        classes of a classifier."""
        return [e.fields.get("label") for e in self.entries]
