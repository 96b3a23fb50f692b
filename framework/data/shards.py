"""A corpus as WebDataset shards: the index, reading a shard whole, the dataset.

A shards folder (``python -m framework.prepare shards`` writes it) holds plain tar files
in WebDataset's layout, one utterance per key, and an index::

    index.json          format, version, kind (audio | features), sample_rate, the feature
                        config (kind features), shards [{name, bytes, sha256, examples, job}],
                        utterances [{id, length, shard, position, crc32, offset, bytes,
                        text?, fields?}] (offset, bytes: where the payload lies in its shard)
    shard-000000.tar    <key>.flac or <key>.wav (16- or 24-bit PCM) or <key>.npy (features) + <key>.json
    shard-000001.tar    ({"id", "text"?, "duration", other fields}), utterance after utterance

The folder may be local, behind ``http(s)://`` or at any fsspec URL (``s3://``, ``gs://``...).
Everything a batch plan needs (lengths, transcripts, where each utterance lies) comes from
the index, so batches are planned before any audio is read; a shard is then read once, whole,
in one request, into one buffer whose payloads are used where they lie (the index says where:
no copy, no walk through the tar's headers). Each payload's CRC-32 in the index catches a
damaged shard; the tar's headers are read only to say what is wrong with one. From a remote
folder the shards a reader needs next are downloaded while the current ones are read
(:meth:`ShardDataset.read_shard`'s ``then``), so the network's wait overlaps work.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import tarfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from framework.data.audio import PCM, pcm_wav
from framework.data.collate import SkippedExample
from framework.data.manifest import dataset_hints
from framework.errors import Unavailable, UserError

log = logging.getLogger(__name__)

FORMAT = "framework-shards"
VERSION = 1
INDEX = "index.json"
PAYLOAD = {"audio": "flac", "features": "npy"}  # the member of each key that holds the inputs
READ_BUFFER = 1 << 20  # reads of a remote file through fsspec: each answers with a round trip
HTTP_TIMEOUT_S = 60  # a server that stops answering for this long is an error, not a hang




class ShardError(UserError, ValueError):
    """A shards folder, index or shard that cannot be used; the message names it."""


class ShardUnreachable(Unavailable):
    """A remote shard whose download failed (the server or the network, not the shard):
    ``skip_bad`` does not leave its examples out."""


def unreachable(url: str, exc: BaseException) -> ShardUnreachable:
    """The error of a download of ``url`` that failed with ``exc``."""
    return ShardUnreachable(f"{url}: the download failed ({type(exc).__name__}: {exc}); check that the server "
                            "answers and run again (a training run continues from its last checkpoint with "
                            "trainer.resume=auto)")


def join(base: str, name: str) -> str:
    """``name`` inside the folder ``base``, a local path or a URL."""
    return f"{base.rstrip('/')}/{name}"


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _http_get(url: str) -> http.client.HTTPResponse:
    """One streamed GET of ``url``; 404 is FileNotFoundError, as from fsspec and the disk."""
    try:
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(f"{url}: HTTP 404") from None
        raise


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> memoryview:
    """The whole of ``url`` (a local path, ``http(s)://`` or any fsspec URL) in one request and
    one buffer, copied once from the kernel where the size is known (a local file, an HTTP
    answer with a Content-Length). An HTTP answer cut short of its Content-Length is a
    ``ConnectionError`` (the transfer failed, not the file)."""
    if not is_remote(url):
        with open(url.removeprefix("file://"), "rb", buffering=0) as f:
            return _fill(f, os.fstat(f.fileno()).st_size)
    if url.startswith(("http://", "https://")) and not storage_options:
        # the standard library's blocking reads: 12% less time per epoch than fsspec's
        # aiohttp, whose every read is handed to an event loop in another thread
        with _http_get(url) as response:
            if response.length is None:
                return memoryview(response.read())
            size = response.length
            data = _fill(response, size)
            if len(data) < size:  # the server closed the connection early: the shard may well be whole
                raise ConnectionError(f"the server sent {len(data)} of the {size} bytes it announced")
            return data
    import fsspec

    options = dict(storage_options or {})
    if url.startswith(("http://", "https://")):
        options.setdefault("block_size", 0)  # HTTPStreamFile: one GET, read as it arrives
    # a filesystem per process: fsspec's cache is per process, so DataLoader workers forked
    # from a parent that read the index get their own connections
    with fsspec.open(url, "rb", **options).open() as f:
        # in large reads: read() to the end goes through a remote file in 8 kB calls
        return memoryview(b"".join(iter(lambda: f.read(READ_BUFFER), b"")))


def _fill(f: Any, size: int) -> memoryview:
    """Up to ``size`` bytes of ``f`` read into one new buffer (fewer if it ends first). The
    buffer is numpy's: not zeroed first, and in huge pages where the kernel allows (an
    in-process epoch of WAV shards is 10% faster than with a bytearray)."""
    view, got = memoryview(np.empty(size, np.uint8)), 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got]


def fetch(url: str, storage_options: dict[str, Any] | None = None) -> Future:
    """:func:`read_bytes` of ``url`` by a daemon thread (a server that hangs does not hold up
    the end of the process)."""
    future: Future = Future()

    def read() -> None:
        try:
            future.set_result(read_bytes(url, storage_options))
        except BaseException as exc:  # handed to whoever reads the shard
            future.set_exception(exc)

    threading.Thread(target=read, name=f"fetch {url}", daemon=True).start()
    return future


def read_index(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The index of the shards folder ``path``, checked."""
    if path.rstrip("/").endswith(f"/{INDEX}") or path == INDEX:
        raise ShardError(f"{path}: give the shards folder, not its index: {path.rstrip('/')[: -len(INDEX)].rstrip('/') or '.'}")
    url = join(path, INDEX)
    try:
        index = json.loads(bytes(read_bytes(url, storage_options)))
    except FileNotFoundError:
        raise ShardError(f"{url} not found: {path} is not a shards folder; write one with `python -m framework.prepare "
                         "shards MANIFEST OUT_DIR --shard-size N`") from None
    except ImportError as exc:  # fsspec names the package a URL scheme needs: "Install s3fs to access S3"
        raise ShardError(f"{url}: {exc} (the fsspec backend of {url.split('://')[0]}:// URLs)") from None
    except (OSError, http.client.HTTPException) as exc:
        refused = isinstance(exc, PermissionError) or isinstance(exc, urllib.error.HTTPError) and exc.code < 500
        if is_remote(url) and not refused:
            raise unreachable(url, exc) from exc  # the server or the network: run again later
        raise ShardError(f"{url}: cannot read the shards index ({type(exc).__name__}: {exc}); check the path or URL, "
                         "or write the shards again") from exc
    except ValueError as exc:
        raise ShardError(f"{url}: damaged shards index, not JSON ({exc}); write the shards again") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ShardError(f"{url} is not a shards index (format {index.get('format') if isinstance(index, dict) else None!r}"
                         f", expected {FORMAT!r}); write one with `python -m framework.prepare shards`")
    if int(index.get("version", 0)) > VERSION:
        raise ShardError(f"{url} has format version {index['version']}; this framework reads up to {VERSION}")
    missing = [k for k in ("kind", "shards", "utterances") if k not in index]
    if missing or index["kind"] not in PAYLOAD:
        raise ShardError(f"{url}: damaged shards index (missing {', '.join(missing) or 'a known kind'}); write the "
                         "shards again")
    return index


class ShardDataset(Dataset):
    """Examples ``{"id", "inputs", "text"?, <other fields>}`` of a shards folder.

    Training reads it as a stream (:mod:`framework.data.stream`: batches planned from the
    index, each shard read once per epoch); ``dataset[i]`` also works, reading the shard
    that holds example ``i`` whole and keeping it until another is asked for, so examples
    asked for in index order (feature statistics) read each shard once.

    ``window_shards``: examples are shuffled within windows of this many consecutive shards
    of a reader's stream, so a reader holds up to that many shards' payloads in memory, and
    from a remote folder ``stream.AHEAD_WINDOWS`` (2) times as many more: the stream's next
    shards, downloading ahead.
    With ``skip_bad`` an example that cannot be read (a truncated or damaged shard) becomes a
    :class:`SkippedExample`, counted and reported in training, instead of an error.
    """

    def __init__(self, path: str, sample_rate: int | None = None, window_shards: int = 2, skip_bad: bool = False,
                 storage_options: dict[str, Any] | None = None) -> None:
        if window_shards < 1:
            raise ShardError(f"window_shards must be >= 1, got {window_shards}")
        self.path = str(path).rstrip("/")
        self.remote = is_remote(self.path)  # read over the network: a read may stall or fail
        self.hints = dataset_hints()  # its split's, for the errors its readers raise
        self.window_shards = int(window_shards)
        self.skip_bad = skip_bad
        self.storage_options = dict(storage_options or {})
        index = read_index(self.path, self.storage_options)
        self.kind: str = index["kind"]
        self.payload = index.get("audio_format", PAYLOAD["audio"]) if self.kind == "audio" else PAYLOAD[self.kind]
        self.attrs = {k: v for k, v in index.items() if k not in ("shards", "utterances")}
        self.shards: list[dict[str, Any]] = index["shards"]
        rows = index["utterances"]
        if not rows:
            raise ShardError(f"{join(self.path, INDEX)} lists no utterances; write the shards again")
        self.ids = [str(r["id"]) for r in rows]
        self.lengths = np.array([r["length"] for r in rows], dtype=np.float64)
        self.shard_of = np.array([r["shard"] for r in rows], dtype=np.int64)
        self.position = np.array([r["position"] for r in rows], dtype=np.int64)
        self.crc = [int(r["crc32"]) for r in rows]
        # where each payload lies in its shard (indexes written before it was recorded: walk the tar)
        self.offset = np.array([r.get("offset", -1) for r in rows], dtype=np.int64)
        self.size = np.array([r.get("bytes", -1) for r in rows], dtype=np.int64)
        self._texts = [r.get("text") for r in rows]
        self.fields = [r.get("fields") or {} for r in rows]
        order = np.lexsort((self.position, self.shard_of))
        bounds = np.searchsorted(self.shard_of[order], np.arange(len(self.shards) + 1))
        self._members = [order[bounds[s] : bounds[s + 1]] for s in range(len(self.shards))]
        file_rate = self.attrs.get("sample_rate")
        if sample_rate is not None and file_rate is not None and int(file_rate) != int(sample_rate):
            raise ShardError(f"{self.path} holds {self.kind} at {file_rate} Hz but the config asks for {sample_rate} Hz; "
                             f"set sample_rate={file_rate} or write the shards again with --sample-rate {sample_rate}")
        self._start_reading()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def texts(self) -> list[str]:
        return [t or "" for t in self._texts]

    @property
    def sample_rate(self) -> int | None:
        return self.attrs.get("sample_rate")

    @property
    def feature_config(self) -> dict | None:
        """The feature extractor's config the shards were written with (kind ``features``)."""
        return self.attrs.get("features") if self.kind == "features" else None

    def members(self, shard: int) -> np.ndarray:
        """The examples of ``shard``, in the order the shard holds them."""
        return self._members[shard]

    def shard_url(self, shard: int) -> str:
        return join(self.path, self.shards[shard]["name"])

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedExample:
        shard = int(self.shard_of[index])
        if self._cached is None or self._cached[0] != shard:
            # read ahead only when the shards are being asked for in order (a scan of the corpus)
            sequential = self._cached is not None and self._cached[0] == shard - 1 and shard + 1 < len(self.shards)
            self._cached = (shard, dict(self.read_shard(shard, set(self.members(shard).tolist()),
                                                        then=[shard + 1] if sequential else ())))
        return self.decode(index, self._cached[1][index])

    def _start_reading(self) -> None:
        """This process' reading state, new: the shard held for ``dataset[i]`` and the shards
        downloading ahead. A worker process reads its own shards, and a forked one has none of
        its parent's download threads: a download in flight at the fork would never end there."""
        self._reader = os.getpid()
        self._cached: tuple[int, dict[int, memoryview | SkippedExample]] | None = None
        self._ahead: dict[int, Future] = {}  # shards being downloaded ahead of their turn

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_reader", "_cached", "_ahead")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start_reading()

    # ---------------------------------------------------------------------- reading
    def read_shard(self, shard: int, wanted: Collection[int], then: Sequence[int] = (),
                   ) -> Iterator[tuple[int, memoryview | SkippedExample]]:
        """``(example, payload)`` for each example of ``wanted`` (indices of ``shard``'s
        members), in the shard's order, reading the shard once, whole, and stopping after the
        last one wanted. A truncated or damaged shard is a :class:`ShardError`
        naming it (with ``skip_bad``: the wanted examples not read become
        :class:`SkippedExample`). From a remote folder, the shards ``then`` (those to be read
        next, in order) download in the background beside this one; the shards held ahead are
        those, no others."""
        if self._reader != os.getpid():
            self._start_reading()
        url, members = self.shard_url(shard), self.members(shard)
        remaining = set(wanted)
        read = 0
        try:
            data = self._download(shard)
            if is_remote(self.path):
                self._ahead = {s: self._ahead.get(s) or fetch(self.shard_url(s), self.storage_options) for s in then}
            if isinstance(data, Future):
                data = self._downloaded(url, data)
            yield from self._where_indexed(data, members, remaining)
            if not remaining:
                return
            for _, files in _keys(data):  # an index without offsets, or to say what is wrong
                if read >= len(members):
                    raise ShardError(f"{url} holds more examples than the {len(members)} {join(self.path, INDEX)} "
                                     "lists: the shard and the index come from different writes; write them again")
                index = int(members[read])
                read += 1
                if index not in remaining:
                    continue
                remaining.discard(index)
                yield index, self._checked(url, index, data, files)
                if not remaining:
                    return
        except (OSError, EOFError, tarfile.TarError, zlib.error, ValueError, http.client.HTTPException) as exc:
            if isinstance(exc, ShardError):
                raise
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "the shard ends early"
        if not remaining:
            return
        first = min(int(self.position[i]) for i in remaining)
        problem = (f"{url}: truncated or damaged shard: {reason} ({len(remaining)} wanted example(s) of its "
                   f"{len(members)} not read, from its example {first + 1} on)")
        if not self.skip_bad:
            raise ShardError(f"{problem}; {self._remedy()}")
        log.warning("%s; skipped (skip_bad)", problem)
        for index in sorted(remaining, key=lambda i: int(self.position[i])):
            yield index, SkippedExample(self.ids[index], problem)

    @staticmethod
    def _downloaded(url: str, download: Future) -> memoryview:
        """A remote shard's bytes. A failed download (but a missing shard, HTTP 404) is the
        server's or the network's, not the shard's: its own error, which ``skip_bad`` does
        not skip (an outage would otherwise drop every example it touches)."""
        try:
            return download.result()
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise unreachable(url, exc) from exc

    def _remedy(self) -> str:
        """What to do about a damaged shard."""
        return self.hints.or_skip("write the shards again with `python -m framework.prepare shards`")

    def drop_ahead(self) -> None:
        """Forgets the shards downloaded ahead (a stream that stopped early will not read them)."""
        self._ahead = {}

    def _download(self, shard: int) -> memoryview | Future:
        """``shard``'s bytes: read now from a local folder; from a remote one, the download
        started ahead for it or one started now (so the next can start beside it)."""
        ahead = self._ahead.pop(shard, None)
        if ahead is not None:
            return ahead
        if is_remote(self.path):
            return fetch(self.shard_url(shard), self.storage_options)
        return read_bytes(self.shard_url(shard))

    def _where_indexed(self, data: memoryview, members: np.ndarray, remaining: set[int],
                       ) -> Iterator[tuple[int, memoryview]]:
        """The payloads of ``remaining`` taken where the index says they lie, each checked (its
        CRC-32), in the shard's order, until one is not there: the tar walk then says why (or
        reads the shards of an index that does not say where). Walking the tar's headers
        cost as much as the check of the payloads."""
        for index, start, size in zip(members.tolist(), self.offset[members].tolist(), self.size[members].tolist()):
            if index not in remaining:
                continue
            payload = data[start:start + size]
            if start < 0 or size < 0 or len(payload) != size or zlib.crc32(payload) != self.crc[index]:
                return
            remaining.discard(index)
            yield index, payload
            if not remaining:
                return

    def _checked(self, url: str, index: int, data: memoryview, files: dict[str, tuple[int, int]],
                 ) -> memoryview | SkippedExample:
        """The example's payload (``files``: where each of its files lies in ``data``), after
        checking it is the bytes the index lists (its CRC-32). Its ``.json`` (the index holds
        the same) is read only to say what is wrong when not."""
        def contents(extension: str) -> memoryview | None:
            span = files.get(extension)
            return data[span[0]:span[0] + span[1]] if span is not None else None

        uid, payload = self.ids[index], contents(self.payload)
        if payload is not None and zlib.crc32(payload) == self.crc[index]:
            return payload
        try:
            meta = json.loads(bytes(contents("json") or b"null"))
        except ValueError:
            meta = None
        if isinstance(meta, dict) and meta.get("id") != uid:
            raise ShardError(f"{url}: example {int(self.position[index])} is {meta.get('id')!r} but {join(self.path, INDEX)} "
                             f"lists {uid!r} there: the shard and the index come from different writes; write them again")
        problem = (f"{url}: example {uid!r} is damaged (its .{self.payload} "
                   f"{'is missing' if payload is None else 'fails its CRC-32 check'})")
        if not self.skip_bad:
            raise ShardError(f"{problem}; {self._remedy()}")
        return SkippedExample(uid, problem)

    def decode(self, index: int, payload: memoryview | SkippedExample, pcm: bool = False,
               ) -> dict[str, Any] | SkippedExample:
        """The example ``index`` from its payload: a waveform ``[samples]`` or features
        ``[frames, bins]``. With ``pcm``, a PCM WAV's samples stay :class:`PCM` for the batch
        to scale into its rows (a stream's batches of raw audio)."""
        if isinstance(payload, SkippedExample):
            return payload
        uid = self.ids[index]
        try:
            samples = pcm_wav(payload) if self.payload == "wav" else None  # numpy: ~100x cheaper than soundfile
            inputs: torch.Tensor | PCM
            if self.kind != "audio":
                inputs = torch.from_numpy(np.ascontiguousarray(np.load(io.BytesIO(payload), allow_pickle=False)))
            elif samples is not None:
                inputs = samples if pcm else torch.from_numpy(samples.scaled())
            else:
                inputs = torch.from_numpy(soundfile.read(io.BytesIO(payload), dtype="float32")[0])
        except Exception as exc:  # soundfile and numpy raise several types for bad data
            problem = f"{self.shard_url(int(self.shard_of[index]))}: example {uid!r} cannot be decoded ({exc})"
            if self.skip_bad:
                return SkippedExample(uid, problem)
            raise ShardError(f"{problem}; {self._remedy()}") from exc
        example: dict[str, Any] = {**self.fields[index], "id": uid, "inputs": inputs}
        if self._texts[index] is not None:
            example["text"] = self._texts[index]
        return example


def _keys(data: memoryview) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {extension: (start, size)})`` of the WebDataset tar held in ``data``: the files
    of one key are consecutive, the key is a name up to its first dot."""
    key, files = None, {}
    for path, start, size in tar_spans(data):
        name, _, extension = path.rpartition("/")[2].partition(".")
        if name != key and key is not None:
            yield key, files
            files = {}
        key = name
        files[extension] = (start, size)
    if key is not None:
        yield key, files


def payload_spans(data: memoryview, payload: str) -> list[tuple[int, int] | None]:
    """``(start, size)`` of each key's ``payload`` member in the WebDataset tar held in
    ``data``, key after key (None where a key has none): what ``prepare shards`` records in
    the index, so the reader takes each payload where it lies without walking the tar."""
    return [files.get(payload) for _, files in _keys(data)]


BLOCK = tarfile.BLOCKSIZE


def tar_spans(data: memoryview) -> Iterator[tuple[str, int, int]]:
    """``(path, start, size)`` of each regular file of the tar held in ``data``, in order: its
    contents are ``data[start:start + size]``. Plain ustar headers (what ``prepare shards`` and GNU tar
    write for short names) are read here, 20x cheaper than tarfile's reader, which reads the
    rest of the archive from the first header of any other kind (pax or GNU long names,
    base-256 sizes, pre-POSIX headers). A truncated archive or a bad header checksum is a
    ``tarfile.ReadError``."""
    offset, end = 0, len(data)
    while offset < end:
        header = bytes(data[offset:offset + BLOCK])
        if not any(header):
            return  # the end-of-archive blocks (or what is left of them)
        if len(header) < BLOCK:
            raise tarfile.ReadError(f"unexpected end of data (a header cut short at byte {offset})")
        kind = header[156:157]
        if header[257:262] != b"ustar" or kind not in (b"0", b"\0", b"5") or header[124] & 0x80:
            yield from _spans_by_tarfile(data, offset)
            return
        stored = _octal(header[148:156])  # over the header with its checksum field as spaces
        if stored != 256 + sum(header[:148]) + sum(header[156:]) and stored != 256 + _signed_sum(header):
            raise tarfile.ReadError(f"bad checksum in the header at byte {offset}")
        name = header[:100].split(b"\0", 1)[0]
        directory = kind == b"5" or (kind == b"\0" and name.endswith(b"/"))  # as tarfile reads them
        size, start = 0 if directory else _octal(header[124:136]), offset + BLOCK
        if start + size > end:
            raise tarfile.ReadError(f"unexpected end of data ({name.decode(errors='replace')!r} is cut short)")
        if not directory:
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:265] == b"ustar\x0000" else b""
            yield (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape"), start, size
        offset = start + -(-size // BLOCK) * BLOCK


def _octal(field: bytes) -> int:
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise tarfile.ReadError(f"a tar header field is not a number ({field!r})") from None


def _signed_sum(header: bytes) -> int:
    """The checksum's sum over signed chars, as some old tars computed it."""
    return sum(b - 256 if b > 127 else b for b in header[:148] + header[156:])


def _spans_by_tarfile(data: memoryview, offset: int) -> Iterator[tuple[str, int, int]]:
    """:func:`tar_spans` from the header at ``offset`` on, read by tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data[offset:]), mode="r:") as tar:
        for member in tar:
            if member.isreg():
                start = offset + member.offset_data
                if start + member.size > len(data):
                    raise tarfile.ReadError(f"unexpected end of data ({member.name!r} is cut short)")
                yield member.name, start, member.size
            tar.members = []  # thousands of files: keep no record of them
