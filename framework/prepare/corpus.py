"""Building manifests from a corpus folder, and packing manifests into HDF5.

Both read audio headers (in threads) or audio (in processes) with a progress bar, write
under a temporary name and rename at the end, and with ``skip_bad`` skip unreadable entries,
reporting how many and which. A failure or a stop signal (:mod:`framework.prepare.signals`)
ends the workers and removes the temporary files; an earlier output stays as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import uuid
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from framework.data.audio import AudioError, audio_info
from framework.data.hdf5 import HDF5Writer, combine_shards
from framework.data.manifest import Hints, ManifestError, load_entries, read_entry
from framework.files import write_text_atomic
from framework.prepare.signals import signals_held, worker_signals

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
TABLE_ID_KEYS = ("ID", "id", "file", "filename")
TABLE_TEXT_KEYS = ("words", "text", "transcript")  # the first present becomes the manifest's "words"
# what the error messages of `prepare hdf5` suggest: its flags
HDF5_HINTS = Hints(skip_bad="--skip-bad", data_root="--data-root DIR", replacement=None, audio_key=None)


class Skipped:
    """Entries left out under ``skip_bad``; reported at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, uid: str, reason: str) -> None:
        self.items.append((uid, reason))

    def report(self, what: str) -> None:
        if self.items:
            first = "; ".join(f"{uid} ({why})" for uid, why in self.items[:5])
            print(f"skipped {len(self.items)} bad entr{'y' if len(self.items) == 1 else 'ies'} while {what}: {first}")


# ------------------------------------------------------------------------ manifests
def librispeech_entries(root: Path) -> list[dict]:
    """LibriSpeech layout: ``speaker/chapter/speaker-chapter.trans.txt`` with one
    ``ID TRANSCRIPT`` per line, audio ``speaker/chapter/ID.flac``."""
    rows = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for n, line in enumerate(trans.read_text().splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.partition(" ")
            if not text:
                raise ManifestError(f"{trans}:{n}: expected 'ID TRANSCRIPT', got {line!r}")
            rows.append({"id": uid, "path": trans.parent / f"{uid}.flac", "fields": {"words": text.strip()}})
    if not rows:
        raise ManifestError(f"{root}: no *.trans.txt files found; is this a LibriSpeech-style folder?")
    return rows


def generic_entries(root: Path, table: Path | None) -> list[dict]:
    """Audio files anywhere under ``root``, with the fields of their row in ``table``: a CSV
    with an ID (or file) column, matched on the file name stem, and any others. A transcript
    column (words, text or transcript) becomes ``words``; the others keep their names
    (``label``, the class of a classifier; a speaker id...)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ManifestError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    by_stem: dict[str, dict[str, str]] = {}
    if table is not None:
        with open(table, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if table.suffix == ".tsv" else ",")
            columns = reader.fieldnames or []
            key = next((k for k in TABLE_ID_KEYS if k in columns), None)
            if key is None or len(columns) < 2:
                raise ManifestError(f"{table}: needs an ID (or file) column and another (text, label...); has {columns}")
            text = next((k for k in TABLE_TEXT_KEYS if k in columns), None)
            for row in reader:
                by_stem[Path(row[key]).stem] = {"words" if k == text else k: v for k, v in row.items() if k != key}
    rows = []
    for path in files:
        row = {"id": path.stem, "path": path}
        if table is not None:
            if path.stem not in by_stem:
                raise ManifestError(f"{table}: no row for audio file {path} (ID {path.stem!r})")
            row["fields"] = by_stem[path.stem]
        rows.append(row)
    return rows


def _probe(path: str) -> tuple[str, float | None, str | None]:
    try:
        frames, rate, _ = audio_info(path)
        if frames == 0:
            return path, None, f"{path}: no audio samples (empty file)"
        return path, frames / rate, None
    except AudioError as exc:
        return path, None, str(exc)


def build_manifest(
    root: str | Path, out: str | Path, layout: str = "librispeech", table: str | Path | None = None,
    workers: int = 2, skip_bad: bool = False, absolute: bool = False,
) -> Path:
    """Writes a manifest (format from ``out``'s extension: .json, .jsonl or .csv) with
    durations read from the audio headers in ``workers`` threads (libsndfile reads them
    without the GIL; no process is forked from this one, which holds torch's threads)."""
    root, out = Path(root).resolve(), Path(out)
    if layout == "librispeech":
        rows = librispeech_entries(root)
    elif layout == "generic":
        rows = generic_entries(root, Path(table) if table else None)
    else:
        raise ValueError(f"layout must be librispeech or generic, got {layout!r}")
    paths = [str(r["path"]) for r in rows]
    with ThreadPool(max(1, workers)) as pool:  # on a stop signal, a thread stuck on a file ends with the process
        probed = list(tqdm(pool.imap(_probe, paths, chunksize=16), total=len(paths), desc="reading headers",
                           disable=not os.isatty(2)))
    skipped = Skipped()
    entries = []
    for row, (path, duration, error) in zip(rows, probed):
        if error:
            if not skip_bad:
                raise AudioError(f"{error} (entry {row['id']!r}); fix or remove it, or pass --skip-bad")
            skipped.add(row["id"], error)
            continue
        rel = str(Path(path)) if absolute else "{data_root}/" + str(Path(path).relative_to(root))
        entries.append((row["id"], {"wav": rel, "duration": round(duration, 4), **row.get("fields", {})}))
    _write_manifest(out, entries)
    skipped.report("building the manifest")
    hours = sum(e["duration"] for _, e in entries) / 3600
    print(f"wrote {out}: {len(entries)} entries, {hours:.2f} h"
          + ("" if absolute else f"; train with dataset.data_root={root}"))
    return out


def _write_manifest(out: Path, entries: list[tuple[str, dict]]) -> None:
    suffix = out.suffix.lower()
    f = io.StringIO()
    if suffix == ".json":
        json.dump(dict(entries), f, indent=1, ensure_ascii=False)
    elif suffix == ".jsonl":
        for uid, e in entries:
            f.write(json.dumps({"id": uid, **e}, ensure_ascii=False) + "\n")
    elif suffix == ".csv":
        writer = csv.DictWriter(f, fieldnames=["ID", *entries[0][1].keys()])
        writer.writeheader()
        for uid, e in entries:
            writer.writerow({"ID": uid, **e})
    else:
        raise ManifestError(f"{out}: unknown manifest extension {suffix!r}; use .json, .jsonl or .csv")
    write_text_atomic(out, f.getvalue())


# ----------------------------------------------------------------------------- HDF5
_progress = None  # a shared counter, handed to each worker process when it starts


def _init_worker(counter) -> None:
    global _progress
    _progress = counter
    worker_signals()


def _pack_shard(job: tuple) -> tuple[str, list[tuple[str, str]]]:
    shard_path, entries, sample_rate, extractor, skip_bad = job
    skipped = []
    with HDF5Writer(shard_path, "audio" if extractor is None else "features", _attrs(sample_rate, extractor)) as w:
        for e in entries:
            try:
                wav = read_entry(e, sample_rate)
            except AudioError as exc:
                if not skip_bad:
                    raise AudioError(f"entry {e.id!r}: {HDF5_HINTS.or_skip(str(exc))}") from None
                skipped.append((e.id, str(exc)))
                continue
            finally:
                with _progress.get_lock():
                    _progress.value += 1
            data = wav.numpy()
            if extractor is not None:
                feats, _ = extractor(wav[None], torch.tensor([len(wav)]))
                data = feats[0].numpy()
            w.add(e.id, data, e.duration, text=e.text)
    return shard_path, skipped


def _attrs(sample_rate: int, extractor) -> dict:
    attrs = {"sample_rate": sample_rate}
    if extractor is not None:
        attrs["frames_per_second"] = sample_rate / extractor.hop_length
        attrs["num_bins"] = extractor.num_bins
    return attrs


def pack_hdf5(
    manifest: str | Path, out: str | Path, *, data_root: str | None = None, sample_rate: int = 16000,
    extractor=None, features_config: dict | None = None, workers: int = 2, combine: str = "copy",
    skip_bad: bool = False,
) -> Path:
    """Packs a manifest's audio (``extractor=None``) or features into ``out``: ``workers``
    processes each write a shard, then the shards are combined (``copy``: one
    self-contained file; ``virtual``: ``out`` reads the shards kept in ``out.shards/<build>/``).

    Everything is made beside an earlier ``out`` (temporary names, a new build folder), which
    is replaced, together with the shards it read, only once the new one is complete."""
    out = Path(out)
    entries = load_entries(manifest, replacements={"data_root": str(Path(data_root).resolve())} if data_root else {},
                           sample_rate=sample_rate, skip_bad=skip_bad, hints=HDF5_HINTS)
    shards_root = out.with_name(out.name + ".shards")
    build = shards_root / f"build-{uuid.uuid4().hex[:8]}"  # an earlier `out` may read another build
    staged = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    n = max(1, min(workers, len(entries)))
    bounds = np.linspace(0, len(entries), n + 1).astype(int)
    # spawn, not fork: a forked child deadlocks in torch's OpenMP pool once the parent has
    # used it (building the feature extractor does)
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    jobs = [(str(build / f"shard-{i:03d}.h5"), entries[bounds[i] : bounds[i + 1]], sample_rate, extractor,
             skip_bad) for i in range(n)]
    skipped = Skipped()
    replaced = False
    try:
        build.mkdir(parents=True)
        with ctx.Pool(n, initializer=_init_worker, initargs=(counter,)) as pool, tqdm(total=len(entries), desc="packing", disable=not os.isatty(2)) as bar:
            results = pool.map_async(_pack_shard, jobs)
            while not results.ready():
                results.wait(0.2)
                bar.update(counter.value - bar.n)
            shards = []
            for path, bad in results.get():
                shards.append(path)
                for item in bad:
                    skipped.add(*item)
        if features_config is not None:
            import h5py

            for path in shards:
                with h5py.File(path, "a") as f:
                    f.attrs["features"] = json.dumps(features_config)
        combine_shards(shards, staged, combine)
        with signals_held():  # `out` and the shards it reads change together
            os.replace(staged, out)
            replaced = True
            for old in shards_root.iterdir():
                if old != build or combine == "copy":
                    shutil.rmtree(old)
    except BaseException:
        if not replaced:
            staged.unlink(missing_ok=True)
            shutil.rmtree(build, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            shards_root.rmdir()  # when empty: nothing reads it
    skipped.report("packing")
    print(f"wrote {out}: {len(entries) - len(skipped.items)} examples in {n} shard(s), combined by {combine}")
    return out
