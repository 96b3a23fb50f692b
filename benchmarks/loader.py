"""Loader throughput: the same corpus read four ways, through the trainer's own DataLoader.

    python -m benchmarks loader [--utterances 4000] [--workers 0,2,4] [--root /tmp/loader-bench]

1. per-file FLAC from the manifest, fbank computed per example in the workers;
2. raw audio from HDF5, fbank computed per example in the workers;
3. fbank precomputed into one ``.npy`` file per utterance (what one would otherwise write);
4. fbank precomputed into HDF5.

Loaders are built as training builds them (:mod:`framework.data.loader`, persistent
workers, features in the workers from the composed ``features`` config); the first epoch
starts the workers and warms the page cache, then whole epochs are timed until at least
``--min-seconds`` have passed. Reports utterances/s and seconds of audio per second, each
effect on its own (file format for audio, precomputing the features, file format for
features), and the per-item read time of the HDF5 features dataset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from benchmarks.common import compose, training_loader
from framework.data.hdf5 import HDF5Dataset
from framework.data.manifest import ManifestDataset
from framework.data.synthetic import prepare_tone_corpus
from framework.features import FeaturePipeline, build_features, fbank
from framework.prepare.corpus import pack_hdf5

FLAC = "per-file FLAC + fbank in workers"
H5_AUDIO = "HDF5 raw audio + fbank in workers"
NPY = "per-file .npy fbank"
H5_FEATURES = "HDF5 fbank"
EFFECTS = [  # (what changes, faster source, slower source)
    ("file format, audio: HDF5 vs per-file FLAC (fbank computed in both)", H5_AUDIO, FLAC),
    ("precomputed features: per-file .npy fbank vs per-file FLAC + fbank", NPY, FLAC),
    ("file format, features: HDF5 vs per-file .npy", H5_FEATURES, NPY),
    ("both: HDF5 fbank vs per-file FLAC + fbank", H5_FEATURES, FLAC),
]


class PerFileFeatures(Dataset):
    """One ``.npy`` feature matrix per utterance, listed in a JSON manifest."""

    def __init__(self, manifest: str | Path) -> None:
        entries = json.loads(Path(manifest).read_text())
        self.ids = list(entries)
        self.paths = [entries[i]["features"] for i in self.ids]
        self.texts = [entries[i]["words"] for i in self.ids]
        self.lengths = np.array([entries[i]["duration"] for i in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"id": self.ids[index], "inputs": torch.from_numpy(np.load(self.paths[index])), "text": self.texts[index]}


def build(root: Path, utterances: int) -> dict[str, Path]:
    corpus = prepare_tone_corpus(root / "tones", {"train": utterances}, max_words=6)
    manifest = json.loads((corpus / "train.json").read_text())
    flac_dir, npy_dir = root / "flac", root / "npy"
    flac_dir.mkdir(exist_ok=True)
    npy_dir.mkdir(exist_ok=True)
    pipe = FeaturePipeline(fbank(n_mels=40), normalize="none")
    npy_manifest = {}
    for uid, e in manifest.items():  # the same audio as FLAC, the usual corpus format, and as .npy features
        flac, npy = flac_dir / f"{uid}.flac", npy_dir / f"{uid}.npy"
        if not flac.exists() or not npy.exists():
            wav, rate = soundfile.read(e["wav"].replace("{data_root}", str(corpus)), dtype="float32")
            soundfile.write(flac, wav, rate)
            np.save(npy, pipe.per_example(torch.from_numpy(wav)).numpy())
        e["wav"] = f"{{data_root}}/{uid}.flac"
        npy_manifest[uid] = {"features": str(npy), "duration": e["duration"], "words": e["words"]}
    flac_manifest = root / "flac.json"
    flac_manifest.write_text(json.dumps(manifest))
    (root / "npy.json").write_text(json.dumps(npy_manifest))
    raw, feats = root / "raw.h5", root / "fbank.h5"
    if not raw.exists():
        pack_hdf5(flac_manifest, raw, data_root=str(flac_dir), workers=2)
    if not feats.exists():
        pack_hdf5(flac_manifest, feats, data_root=str(flac_dir), extractor=fbank(n_mels=40), workers=2)
    return {"manifest": flac_manifest, "flac_dir": flac_dir, "npy": root / "npy.json", "raw": raw, "features": feats}


def loader_config(workers: int, features: list[str]) -> DictConfig:
    """The training config of the loaders: batches of 16 in random order, ``workers``
    persistent workers, features as given."""
    return compose(["batching=fixed", "batching.batch_size=16", "trainer.device=cpu", f"trainer.num_workers={workers}",
                    *features])


def epoch_rate(cfg: DictConfig, dataset, min_seconds: float) -> tuple[float, float, float]:
    """(utterances/s, audio s/s, seconds per epoch) over whole epochs after a first one."""
    loader = training_loader(cfg, dataset, build_features(cfg, torch.device("cpu")))
    for _ in loader:  # starts the workers, warms the page cache
        pass
    examples, epochs, elapsed = 0, 0, 0.0
    while elapsed < min_seconds or epochs < 2:
        epochs += 1
        loader.batch_sampler.set_epoch(epochs)
        t0 = time.perf_counter()
        for batch in loader:
            examples += len(batch)
        elapsed += time.perf_counter() - t0
    del loader  # ends the persistent workers
    return examples / elapsed, float(dataset.lengths.sum()) * epochs / elapsed, elapsed / epochs


def main(utterances: int = 4000, root: str = "/tmp/loader-bench", workers: tuple[int, ...] = (0, 2, 4),
         min_seconds: float = 3.0) -> dict:
    torch.set_num_threads(1)  # workers do the parallel work; 2 cores in all
    paths = build(Path(root), utterances)
    sources: dict[str, tuple[list[str], Callable[[], object]]] = {
        FLAC: (["features.where=worker", "features.normalize=none"],
               lambda: ManifestDataset(paths["manifest"], data_root=str(paths["flac_dir"]))),
        H5_AUDIO: (["features.where=worker", "features.normalize=none"], lambda: HDF5Dataset(paths["raw"])),
        NPY: (["features=none"], lambda: PerFileFeatures(paths["npy"])),
        H5_FEATURES: (["features=none"], lambda: HDF5Dataset(paths["features"])),
    }
    lengths = ManifestDataset(paths["manifest"], data_root=str(paths["flac_dir"])).lengths
    rows = [f"{utterances} utterances, {lengths.sum() / 3600:.2f} h of 16 kHz audio (tones corpus, up to 6 words), "
            f"batches of 16 in random order, 40 log-mel bins; the trainer's DataLoader (persistent workers); "
            f"whole epochs timed after a first one, at least {min_seconds:g} s per figure\n",
            "| source | workers | utterances/s | audio s/s | epoch s | vs per-file FLAC |",
            "| --- | --- | --- | --- | --- | --- |"]
    rates: dict[tuple[str, int], float] = {}
    for w in workers:
        for name, (features, make) in sources.items():
            rate, audio, epoch = epoch_rate(loader_config(w, features), make(), min_seconds)
            rates[name, w] = rate
            rows.append(f"| {name} | {w} | {rate:.0f} | {audio:.0f} | {epoch:.3g} | {rate / rates[FLAC, w]:.1f}x |")
            print(rows[-1], flush=True)
    rows += ["", "Each effect on its own (ratio of utterances/s):", "",
             "| effect | " + " | ".join(f"{w} workers" for w in workers) + " |", "| --- " * (len(workers) + 1) + "|"]
    for label, fast, slow in EFFECTS:
        rows.append(f"| {label} | " + " | ".join(f"{rates[fast, w] / rates[slow, w]:.1f}x" for w in workers) + " |")
    ds = HDF5Dataset(paths["features"])
    ds[0]
    order = np.random.default_rng(0).permutation(len(ds))
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    per_item = (time.perf_counter() - t0) / len(ds) * 1e3
    rows.append(f"\nHDF5 features, per-item read (`dataset[i]`, random order, one process): {per_item:.3f} ms")
    print("\n".join(rows))
    return {"rates": {f"{k[0]} / {k[1]} workers": v for k, v in rates.items()}, "hdf5_item_ms": per_item}
