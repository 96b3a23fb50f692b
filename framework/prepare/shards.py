"""Writing a manifest's corpus as WebDataset shards plus their index (``prepare shards``).

Shard ``i`` holds the manifest's entries ``i * shard_size`` to ``(i + 1) * shard_size``, in
manifest order: audio as FLAC (the default; 16-bit PCM when the samples are 16-bit values,
as they are read from 16-bit WAV or FLAC files, so they come back exactly; 24-bit otherwise)
or as WAV of the same samples (``audio_format="wav"``: larger, and cheaper to decode), or
features computed by an extractor as ``.npy``; next to it a ``.json`` of the id, the
transcript and the entry's other fields (:mod:`framework.data.shards` has the layout).

``workers`` processes each write whole shards, under a temporary name renamed once the
shard is complete, then record it (size, SHA-256, utterances) in ``OUT/.parts/``. The index
is written last, atomically, from those records: it is the commit. A rerun keeps every shard
whose record matches its entries and settings and whose file still has the recorded size and
SHA-256, and writes the rest: an interrupted or killed write is finished by running it
again. A shard the folder's current index names is never overwritten with other contents: a
write with other settings gives that shard another file name (``shard-000003.<digest>.tar``),
so until its index replaces the old one the folder reads as it was, and the old files are
removed after. On SIGTERM / SIGINT (:mod:`framework.prepare.signals`) the workers are
terminated and the temporary files removed as the interrupt unwinds; the command exits with
143 / 130.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from framework.data.audio import AudioError, read_audio
from framework.data.manifest import Entry, load_entries
from framework.data.shards import FORMAT, INDEX, PAYLOAD, VERSION, payload_spans, read_bytes
from framework.errors import BadValue
from framework.files import sha256_of, write_atomic, write_text_atomic
from framework.prepare.corpus import Skipped
from framework.prepare.signals import worker_signals

PARTS = ".parts"  # one record per complete shard until the index is written
TAR_MTIME = 0  # the same bytes for the same input: a rewritten shard equals the first write


@dataclass
class Job:
    """One shard to write: its entries and everything its bytes depend on."""

    number: int
    entries: list[Entry]
    sample_rate: int
    extractor: Any
    features_config: dict | None
    skip_bad: bool
    audio_format: str = "flac"
    file_name: str | None = None  # another name than the plain one (see the module doc)

    @property
    def name(self) -> str:
        return self.file_name or f"shard-{self.number:06d}.tar"

    @property
    def payload(self) -> str:
        """The extension of each key's inputs member."""
        return self.audio_format if self.extractor is None else PAYLOAD["features"]

    def fingerprint(self) -> str:
        """A digest of the entries and settings: a recorded shard with another one is stale."""
        settings = {"version": VERSION, "sample_rate": self.sample_rate, "features": self.features_config,
                    "skip_bad": self.skip_bad, "entries": [asdict(e) for e in self.entries]}
        if self.audio_format != "flac":  # shards written before the option keep their fingerprint
            settings["audio_format"] = self.audio_format
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_shards(
    manifest: str | Path, out: str | Path, *, shard_size: int, data_root: str | None = None, sample_rate: int = 16000,
    extractor=None, features_config: dict | None = None, workers: int = 2, skip_bad: bool = False,
    audio_format: str = "flac",
) -> Path:
    """Writes ``manifest``'s audio (``extractor=None``) or features as shards of ``shard_size``
    utterances into the folder ``out``, with ``out/index.json``; returns the index's path."""
    if shard_size < 1:
        raise BadValue(f"--shard-size must be >= 1 (utterances per shard), got {shard_size}")
    if audio_format not in ("flac", "wav"):
        raise BadValue(f"--audio-format must be flac or wav, got {audio_format!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadValue(f"{out} is a file: give prepare shards a folder to write (new or of an earlier write)")
    replacements = {"data_root": str(Path(data_root).resolve())} if data_root else {}
    entries = load_entries(manifest, replacements=replacements, sample_rate=sample_rate, skip_bad=skip_bad)
    jobs = [Job(i, entries[start : start + shard_size], sample_rate, extractor, features_config, skip_bad, audio_format)
            for i, start in enumerate(range(0, len(entries), shard_size))]
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTS).mkdir(exist_ok=True)
    live = _live_names(out)
    records = _verified(out, jobs)
    todo = [job for job in jobs if job.number not in records]
    for job in todo:  # never over a file the current index names: the folder reads as it was until the commit
        if job.name in live:
            job.file_name = f"shard-{job.number:06d}.{job.fingerprint()[:8]}.tar"
    with _temporary_files_removed(out):
        records.update(_write_in_parallel(todo, out, workers))
        skipped = Skipped()
        for job in jobs:
            for uid, reason in records[job.number]["skipped"]:
                skipped.add(uid, reason)
        skipped.report("writing shards")
        index = _index(jobs, records, sample_rate, extractor, features_config)
        if not index["utterances"]:
            raise BadValue(f"{manifest}: no entry could be read (those left out are named above): no index written "
                           f"in {out}; check --data-root and the manifest's audio paths")
        write_text_atomic(out / INDEX, json.dumps(index, ensure_ascii=False))
    shutil.rmtree(out / PARTS)
    names = {shard["name"] for shard in index["shards"]}
    for stale in out.glob("shard-*.tar"):  # of the earlier write
        if stale.name not in names:
            stale.unlink()
    hours = sum(u["length"] for u in index["utterances"]) / 3600
    print(f"wrote {out}: {len(index['utterances'])} utterances ({hours:.2f} h) in {len(jobs)} shard(s) "
          f"({len(jobs) - len(todo)} kept from an earlier write); read it with dataset=shards dataset.train.path={out} "
          "(or dataset.valid.path, dataset.test.path)")
    return out / INDEX


def _index_records(out: Path) -> list[dict]:
    """The shard records of the folder's current index, each with its utterances (none when
    there is no readable index)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        index = json.loads((out / INDEX).read_text())
        rows: dict[int, list[dict]] = {}
        for utterance in index["utterances"]:
            rows.setdefault(utterance["shard"], []).append(utterance)
        return [{**shard, "utterances": rows.get(shard["number"], [])} for shard in index["shards"]]
    return []


def _live_names(out: Path) -> set[str]:
    """The files the folder's current index names: what a reader of the folder reads now."""
    return {str(record.get("name")) for record in _index_records(out)}


def _verified(out: Path, jobs: list[Job]) -> dict[int, dict]:
    """The records of shards already complete: written for the same entries and settings
    (recorded in the current index or by an interrupted write), and still of the recorded
    size and SHA-256."""
    recorded: dict[int, list[dict]] = {}
    parts = []
    for part in (out / PARTS).glob("shard-*.json"):
        with contextlib.suppress(ValueError):
            parts.append(json.loads(part.read_text()))
    for record in [*_index_records(out), *parts]:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            recorded.setdefault(int(record["number"]), []).append(record)
    kept = {}
    for job in jobs:
        for record in recorded.get(job.number, []):
            if record.get("job") != job.fingerprint() or not _intact(out / str(record.get("name")), record, job):
                continue
            job.file_name = record["name"]
            kept[job.number] = record
            break
    return kept


def _intact(path: Path, record: dict, job: Job) -> bool:
    """Whether ``path`` is the shard ``record`` describes (its size and SHA-256), its payloads
    located (recorded now for a shard written before offsets were)."""
    if not path.is_file() or path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
        return False
    if any("offset" not in u for u in record["utterances"]):
        try:
            _locate_payloads(path, job.payload, record["utterances"])
        except (OSError, ValueError, tarfile.TarError):
            return False  # written again
    return True


def _write_in_parallel(jobs: list[Job], out: Path, workers: int) -> dict[int, dict]:
    """Writes ``jobs`` in ``workers`` processes; any failure or stop signal terminates them."""
    if not jobs:
        return {}
    # spawn, not fork: a forked child deadlocks in torch's OpenMP pool once the parent has used it
    pool = mp.get_context("spawn").Pool(max(1, min(workers, len(jobs))), initializer=_init_worker)
    records = {}
    try:
        with tqdm(total=len(jobs), desc="writing shards", disable=not os.isatty(2)) as bar:
            for record in pool.imap_unordered(_write_shard, [(job, str(out)) for job in jobs]):
                records[record["number"]] = record
                bar.update(1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return records


def _init_worker() -> None:
    worker_signals()
    torch.set_num_threads(1)  # the pool's processes share the cores


def _write_shard(work: tuple[Job, str]) -> dict:
    """Writes one shard (temporary name, then renamed) and its record; returns the record."""
    job, out = work
    path = Path(out) / job.name
    utterances, skipped = [], []
    payload_key = job.payload

    def write(f: BinaryIO) -> None:
        from webdataset.writer import TarWriter

        keys: set[str] = set()
        with TarWriter(f, encoder=False, mtime=TAR_MTIME) as tar:
            for entry in job.entries:
                try:
                    wav = read_audio(entry.path, job.sample_rate, start=entry.start, stop=entry.stop)
                except AudioError as exc:
                    if not job.skip_bad:
                        raise AudioError(f"entry {entry.id!r}: {exc}") from None
                    skipped.append((entry.id, str(exc)))
                    continue
                payload = _audio(wav.numpy(), job.sample_rate, job.audio_format) if job.extractor is None \
                    else _npy(job.extractor, wav)
                meta = {"id": entry.id, "duration": entry.duration, **({"text": entry.text} if entry.text is not None
                                                                       else {}), **entry.fields}
                tar.write({"__key__": _key(entry.id, keys), payload_key: payload,
                           "json": json.dumps(meta, ensure_ascii=False).encode()})
                utterances.append({"id": entry.id, "length": entry.duration, "shard": job.number,
                                   "position": len(utterances), "crc32": zlib.crc32(payload),
                                   **({"text": entry.text} if entry.text is not None else {}),
                                   **({"fields": entry.fields} if entry.fields else {})})

    write_atomic(path, write)
    written = _locate_payloads(path, payload_key, utterances)
    record = {"number": job.number, "name": job.name, "bytes": len(written), "sha256": hashlib.sha256(written).hexdigest(),
              "examples": len(utterances), "job": job.fingerprint(), "skipped": skipped, "utterances": utterances}
    write_text_atomic(Path(out) / PARTS / f"{path.stem}.json", json.dumps(record, ensure_ascii=False))
    return record


def _locate_payloads(path: Path, payload: str, utterances: list[dict]) -> memoryview:
    """Records in ``utterances`` (the shard's, in order) where each one's ``payload`` member
    lies in the shard ``path``, its ``offset`` and size in ``bytes``: the reader takes it
    there without walking the tar's headers. Returns the shard's bytes, read once."""
    data = read_bytes(str(path))
    spans = payload_spans(data, payload)
    if len(spans) != len(utterances) or None in spans:
        raise ValueError(f"{path}: the shard does not hold one .{payload} per utterance of its record")
    for utterance, (start, size) in zip(utterances, spans):
        utterance.update(offset=start, bytes=size)
    return data


def _key(uid: str, taken: set[str]) -> str:
    """A WebDataset key for ``uid``: no dots (the key ends at the first one) or slashes,
    unique in its shard."""
    key = re.sub(r"[^\w-]", "_", uid)
    while key in taken:
        key += "_"
    taken.add(key)
    return key


def _audio(wav: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    """FLAC or WAV of ``wav``: 16-bit when every sample is a 16-bit value (exact), else 24-bit."""
    pcm16 = wav * 32768.0
    exact = np.array_equal(pcm16, np.round(pcm16)) and pcm16.min(initial=0) >= -32768 and pcm16.max(initial=0) <= 32767
    buffer = io.BytesIO()
    if exact:
        soundfile.write(buffer, pcm16.astype(np.int16), sample_rate, format=audio_format.upper(), subtype="PCM_16")
    else:  # libsndfile takes int32 samples' top 24 bits
        pcm24 = np.clip(np.round(wav.astype(np.float64) * 2**23), -(2**23), 2**23 - 1).astype(np.int32) << 8
        soundfile.write(buffer, pcm24, sample_rate, format=audio_format.upper(), subtype="PCM_24")
    return buffer.getvalue()


def _npy(extractor, wav: torch.Tensor) -> bytes:
    feats, _ = extractor(wav[None], torch.tensor([len(wav)]))
    buffer = io.BytesIO()
    np.save(buffer, feats[0].numpy().astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def _index(jobs: list[Job], records: dict[int, dict], sample_rate: int, extractor,
           features_config: dict | None) -> dict[str, Any]:
    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": "audio" if extractor is None else "features",
                             "sample_rate": sample_rate}
    if extractor is None:
        index["audio_format"] = jobs[0].audio_format if jobs else "flac"
    if extractor is not None:
        index.update(features=features_config, frames_per_second=sample_rate / extractor.hop_length,
                     num_bins=extractor.num_bins)
    fields = ("number", "name", "bytes", "sha256", "examples", "job", "skipped")
    index["shards"] = [{k: records[job.number][k] for k in fields} for job in jobs]
    index["utterances"] = [u for job in jobs for u in records[job.number]["utterances"]]
    return index


@contextlib.contextmanager
def _temporary_files_removed(out: Path):
    try:
        yield
    finally:
        for tmp in [*out.glob(".shard-*.tar.tmp"), *(out / PARTS).glob(".*.tmp"), out / f".{INDEX}.tmp"]:
            tmp.unlink(missing_ok=True)
