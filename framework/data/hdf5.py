"""HDF5 datasets: many variable-length examples in one file, read lazily.

Layout (``format = "framework-hdf5"``, version 1):

    attrs    format, version, kind ("audio" | "features" | "images"), sample_rate,
             frames_per_second (features), features (JSON of the feature config)
    ids      [N] strings
    lengths  [N] float64, seconds (images: 1.0)
    offsets  [N+1] int64: example i is data[offsets[i]:offsets[i+1]] (variable-length kinds)
    data     audio: [total_samples] float32; features: [total_frames, bins] float32;
             images: [N, C, H, W] uint8
    text     [N] strings (optional); label [N] int64 (optional)

The file is opened on first read inside each process (after the DataLoader forks its
workers), never shared across a fork. ``data`` may be a virtual dataset stitching shard
files together; reading it is the same, and a shard file that is missing is an error when the
dataset is opened (HDF5 itself would read its part as zeros).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from framework.data.collate import SkippedExample
from framework.data.manifest import dataset_hints
from framework.errors import UserError

FORMAT = "framework-hdf5"
VERSION = 1
KINDS = ("audio", "features", "images")
STR = h5py.string_dtype()


class HDF5FormatError(UserError, ValueError):
    pass


def check_format(f: h5py.File, path: str | Path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise HDF5FormatError(
            f"{path} is not a framework HDF5 dataset (attribute format={f.attrs.get('format')!r}, expected "
            f"{FORMAT!r}); create one with `python -m framework.prepare hdf5 MANIFEST OUT.h5`"
        )
    if int(f.attrs.get("version", 0)) > VERSION:
        raise HDF5FormatError(f"{path} has format version {f.attrs['version']}; this framework reads up to {VERSION}")
    missing = [k for k in ("ids", "lengths", "data") if k not in f]
    if f.attrs.get("kind") != "images" and "offsets" not in f:
        missing.append("offsets")
    if missing:
        raise HDF5FormatError(f"{path}: damaged framework HDF5 dataset, missing {', '.join(missing)}")


def check_virtual_sources(data: h5py.Dataset, path: str | Path) -> None:
    """A virtual ``data`` whose source files are all there (relative names are relative to the
    file's folder, where :func:`combine_shards` makes them)."""
    if not data.is_virtual:
        return
    for source in data.virtual_sources():
        name = source.file_name
        if name != "." and not (Path(path).parent / name).is_file():  # "." is the file itself
            raise HDF5FormatError(
                f"{path}: its data are a virtual dataset over {name}, which is missing ({Path(path).parent / name}); "
                "keep the shard files beside it where they were made, or pack it again with "
                "`python -m framework.prepare hdf5 ... --combine copy` for a self-contained file"
            )


class HDF5Dataset(Dataset):
    """Examples ``{"id", "inputs", "text"?, "label"?}`` from a framework HDF5 file.

    An example whose values are not finite (a damaged data region) is an error naming the
    file and example, or with ``skip_bad`` a :class:`SkippedExample`, counted and reported.
    """

    def __init__(self, path: str | Path, select_n: int | None = None, sample_rate: int | None = None,
                 skip_bad: bool = False) -> None:
        self.path = str(path)
        self.skip_bad = skip_bad
        self.hints = dataset_hints()  # its split's, for the errors its workers raise
        if not Path(path).is_file():
            raise HDF5FormatError(f"{path}: HDF5 dataset not found; check the path or create it with "
                                  "`python -m framework.prepare hdf5 MANIFEST OUT.h5`")
        try:
            with h5py.File(self.path, "r") as f:
                check_format(f, path)
                self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
                self.ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][:]]
                self.lengths = f["lengths"][:].astype(np.float64)
                self.offsets = f["offsets"][:] if "offsets" in f else None
                self.texts = [s.decode() if isinstance(s, bytes) else s for s in f["text"][:]] if "text" in f else None
                self.labels = f["label"][:] if "label" in f else None
                check_virtual_sources(f["data"], path)
        except OSError as exc:
            raise HDF5FormatError(f"{path}: not a readable HDF5 file ({exc})") from exc
        if select_n is not None:
            self.ids, self.lengths = self.ids[:select_n], self.lengths[:select_n]
        self.kind = self.attrs["kind"]
        file_rate = self.attrs.get("sample_rate")
        if sample_rate is not None and file_rate is not None and int(file_rate) != int(sample_rate):
            raise HDF5FormatError(
                f"{path} holds {self.kind} at {file_rate} Hz but the config asks for {sample_rate} Hz; "
                f"set sample_rate={file_rate} or pack the data again with --sample-rate {sample_rate}"
            )
        self._file: h5py.File | None = None
        self._dset: h5py.Dataset | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _data(self) -> h5py.Dataset:
        if self._dset is None or self._pid != os.getpid():  # first read in this process
            self._file = h5py.File(self.path, "r")
            self._dset = self._file["data"]
            self._pid = os.getpid()
        return self._dset

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = state["_dset"] = None  # h5py handles do not cross processes
        return state

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedExample:
        data = self._data()
        stored = np.asarray(data[index]) if self.offsets is None else data[self.offsets[index] : self.offsets[index + 1]]
        # numpy's check: torch's isfinite().all() took ~4x as long as the read itself (~46 us an utterance)
        if stored.dtype.kind == "f" and not np.isfinite(stored).all():
            reason = f"{self.path}: example {self.ids[index]!r} holds NaN or infinite values (a damaged data region)"
            if self.skip_bad:
                return SkippedExample(self.ids[index], reason)
            raise HDF5FormatError(f"{reason}; {self.hints.or_skip('pack the file again')}")
        example: dict[str, Any] = {"id": self.ids[index], "inputs": torch.from_numpy(stored)}
        if self.texts is not None:
            example["text"] = self.texts[index]
        if self.labels is not None:
            example["label"] = int(self.labels[index])
        return example

    @property
    def sample_rate(self) -> int | None:
        return self.attrs.get("sample_rate")

    @property
    def feature_config(self) -> dict | None:
        """The feature extractor's config the file was packed with (``kind="features"``)."""
        recorded = self.attrs.get("features")
        return json.loads(recorded) if self.kind == "features" and recorded else None


class HDF5Writer:
    """Appends examples to a new framework HDF5 file, one at a time (memory stays flat).

    Written under a temporary name and renamed by :meth:`close`; an interrupted write never
    leaves a file that looks complete::

        with HDF5Writer("train.h5", "audio", attrs={"sample_rate": 16000}) as w:
            w.add("utt1", waveform, length=2.1, text="hello")
    """

    def __init__(self, path: str | Path, kind: str, attrs: dict[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = h5py.File(self.tmp, "w")
        _write_header(self.file, kind, attrs)
        self.ids: list[str] = []
        self.lengths: list[float] = []
        self.texts: list[str] = []
        self.labels: list[int] = []
        self.offsets = [0]
        self.data: h5py.Dataset | None = None

    def add(self, uid: str, array: np.ndarray, length: float, text: str | None = None, label: int | None = None) -> None:
        array = np.asarray(array)
        if self.data is None:
            shape = (0, *array.shape) if self.kind == "images" else (0, *array.shape[1:])
            dtype = array.dtype if self.kind == "images" else np.float32
            self.data = self.file.create_dataset("data", shape=shape, maxshape=(None, *shape[1:]), dtype=dtype,
                                                 chunks=True)
        rows = 1 if self.kind == "images" else len(array)
        start = self.data.shape[0]
        self.data.resize(start + rows, axis=0)
        self.data[start:] = array[None] if self.kind == "images" else array
        self.offsets.append(start + rows)
        self.ids.append(uid)
        self.lengths.append(float(length))
        if text is not None:
            self.texts.append(text)
        if label is not None:
            self.labels.append(int(label))

    def close(self) -> Path:
        f = self.file
        if self.data is None:
            f.close()
            self.tmp.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: no examples were written")
        f.create_dataset("ids", data=np.array(self.ids, dtype=object), dtype=STR)
        f.create_dataset("lengths", data=np.asarray(self.lengths, dtype=np.float64))
        if self.kind != "images":
            f.create_dataset("offsets", data=np.asarray(self.offsets, dtype=np.int64))
        if self.texts:
            f.create_dataset("text", data=np.array(self.texts, dtype=object), dtype=STR)
        if self.labels:
            f.create_dataset("label", data=np.asarray(self.labels, dtype=np.int64))
        f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> HDF5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_header(f: h5py.File, kind: str, attrs: dict[str, Any] | None) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["version"] = VERSION
    f.attrs["kind"] = kind
    for key, value in (attrs or {}).items():
        f.attrs[key] = json.dumps(value) if isinstance(value, dict) else value


def combine_shards(shards: Sequence[str | Path], out: str | Path, mode: str = "copy") -> Path:
    """One dataset from several shard files. ``copy`` writes the data again into ``out``;
    ``virtual`` makes ``out/data`` a virtual dataset over the shards (which must stay
    where they are, relative to ``out``). Written under a temporary name, then renamed."""
    if mode not in ("copy", "virtual"):
        raise ValueError(f"combine mode must be copy or virtual, got {mode!r}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    files = [h5py.File(s, "r") for s in shards]
    try:
        for f, s in zip(files, shards):
            check_format(f, s)
        first = files[0]
        kind = first.attrs["kind"]
        with h5py.File(tmp, "w") as g:
            for key, value in first.attrs.items():
                g.attrs[key] = value
            for name in ("ids", "text"):
                if name in first:
                    g.create_dataset(name, data=np.concatenate([f[name][:] for f in files]), dtype=STR)
            for name in ("lengths", "label"):
                if name in first:
                    g.create_dataset(name, data=np.concatenate([f[name][:] for f in files]))
            if kind != "images":
                offsets, base = [np.zeros(1, dtype=np.int64)], 0
                for f in files:
                    offsets.append(f["offsets"][1:] + base)
                    base += int(f["offsets"][-1])
                g.create_dataset("offsets", data=np.concatenate(offsets))
            datas = [f["data"] for f in files]
            total = sum(d.shape[0] for d in datas)
            shape = (total, *datas[0].shape[1:])
            if mode == "copy":  # contiguous: a read is one seek, no chunk index to walk
                dst = g.create_dataset("data", shape=shape, dtype=datas[0].dtype)
                pos = 0
                for d in datas:
                    dst[pos : pos + d.shape[0]] = d[:]
                    pos += d.shape[0]
            else:
                layout = h5py.VirtualLayout(shape=shape, dtype=datas[0].dtype)
                pos = 0
                for d, s in zip(datas, shards):
                    rel = os.path.relpath(Path(s).resolve(), out.resolve().parent)
                    layout[pos : pos + d.shape[0]] = h5py.VirtualSource(rel, "data", shape=d.shape)
                    pos += d.shape[0]
                g.create_virtual_dataset("data", layout)
        os.replace(tmp, out)
    finally:
        for f in files:
            f.close()
        tmp.unlink(missing_ok=True)
    return out
