"""Building manifests from a corpus folder, and packing manifests into HDF5.

Both read audio headers or audio in N worker processes with a progress bar, write under
a temporary name and rename at the end, and with ``skip_bad`` skip unreadable entries,
reporting how many and which.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from framework.data.audio import AudioError, audio_info, read_audio
from framework.data.hdf5 import HDF5Writer, combine_shards
from framework.data.manifest import ManifestError, load_entries

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


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
            rows.append({"id": uid, "path": trans.parent / f"{uid}.flac", "text": text.strip()})
    if not rows:
        raise ManifestError(f"{root}: no *.trans.txt files found; is this a LibriSpeech-style folder?")
    return rows


def generic_entries(root: Path, table: Path | None) -> list[dict]:
    """Audio files anywhere under ``root``; transcripts or labels from ``table``: a CSV with
    an ID (or file) column and a text (or label) column, matched on the file name stem."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ManifestError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    texts: dict[str, str] = {}
    if table is not None:
        with open(table, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if table.suffix == ".tsv" else ",")
            fields = reader.fieldnames or []
            key = next((k for k in ("ID", "id", "file", "filename") if k in fields), None)
            value = next((k for k in ("text", "words", "transcript", "label") if k in fields), None)
            if key is None or value is None:
                raise ManifestError(f"{table}: needs an ID (or file) column and a text (or label) column; has {fields}")
            for row in reader:
                texts[Path(row[key]).stem] = row[value]
    rows = []
    for path in files:
        row = {"id": path.stem, "path": path}
        if table is not None:
            if path.stem not in texts:
                raise ManifestError(f"{table}: no transcript for audio file {path} (ID {path.stem!r})")
            row["text"] = texts[path.stem]
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
    durations read from the audio headers in ``workers`` processes."""
    root, out = Path(root).resolve(), Path(out)
    if layout == "librispeech":
        rows = librispeech_entries(root)
    elif layout == "generic":
        rows = generic_entries(root, Path(table) if table else None)
    else:
        raise ValueError(f"layout must be librispeech or generic, got {layout!r}")
    paths = [str(r["path"]) for r in rows]
    with mp.get_context("fork").Pool(max(1, workers)) as pool:
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
        entry = {"wav": rel, "duration": round(duration, 4)}
        if "text" in row:
            entry["words"] = row["text"]
        entries.append((row["id"], entry))
    _write_manifest(out, entries)
    skipped.report("building the manifest")
    hours = sum(e["duration"] for _, e in entries) / 3600
    print(f"wrote {out}: {len(entries)} entries, {hours:.2f} h"
          + ("" if absolute else f"; train with data_root={root}"))
    return out


def _write_manifest(out: Path, entries: list[tuple[str, dict]]) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    suffix = out.suffix.lower()
    with open(tmp, "w", newline="") as f:
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
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- HDF5
_progress = None  # a shared counter, handed to each worker process when it starts


def _init_worker(counter) -> None:
    global _progress
    _progress = counter


def _pack_shard(job: tuple) -> tuple[str, list[tuple[str, str]]]:
    shard_path, entries, sample_rate, extractor, skip_bad = job
    skipped = []
    with HDF5Writer(shard_path, "audio" if extractor is None else "features", _attrs(sample_rate, extractor)) as w:
        for e in entries:
            try:
                wav = read_audio(e.path, sample_rate, start=e.start, stop=e.stop)
            except AudioError as exc:
                if not skip_bad:
                    raise AudioError(f"entry {e.id!r}: {exc}") from None
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
    self-contained file; ``virtual``: ``out`` reads the shards kept in ``out.shards/``)."""
    out = Path(out)
    entries = load_entries(manifest, replacements={"data_root": str(Path(data_root).resolve())} if data_root else {},
                           sample_rate=sample_rate)
    shard_dir = out.with_name(out.name + ".shards")
    shutil.rmtree(shard_dir, ignore_errors=True)
    shard_dir.mkdir(parents=True)
    n = max(1, min(workers, len(entries)))
    bounds = np.linspace(0, len(entries), n + 1).astype(int)
    # spawn, not fork: a forked child deadlocks in torch's OpenMP pool once the parent has
    # used it (building the feature extractor does)
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    jobs = [(str(shard_dir / f"shard-{i:03d}.h5"), entries[bounds[i] : bounds[i + 1]], sample_rate, extractor,
             skip_bad) for i in range(n)]
    skipped = Skipped()
    try:
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
        combine_shards(shards, out, combine)
    except BaseException:
        shutil.rmtree(shard_dir, ignore_errors=True)
        raise
    if combine == "copy":
        shutil.rmtree(shard_dir)
    skipped.report("packing")
    print(f"wrote {out}: {len(entries) - len(skipped.items)} examples in {n} shard(s), combined by {combine}")
    return out
