"""Loader throughput: the same corpus read three ways, with 0, 2 and 4 workers.

    python -m framework.bench loader [--utterances 600] [--root /tmp/loader-bench]

1. per-file FLAC from the manifest, fbank computed per example in the workers;
2. raw audio from HDF5, fbank computed per example in the workers;
3. fbank features precomputed into HDF5.

Reports utterances/s and seconds of audio per second over one epoch of batches of 16,
and the per-item read time of the HDF5 features dataset.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import soundfile
from torch.utils.data import DataLoader

from framework.data.batching import FixedBatchSampler
from framework.data.collate import collate
from framework.data.hdf5 import HDF5Dataset
from framework.data.manifest import ManifestDataset
from framework.data.synthetic import prepare_tone_corpus
from framework.features import FeaturePipeline, fbank
from framework.prepare.corpus import pack_hdf5


def build(root: Path, utterances: int) -> dict[str, Path]:
    corpus = prepare_tone_corpus(root / "tones", {"train": utterances}, max_words=6)
    manifest = json.loads((corpus / "train.json").read_text())
    flac_dir = root / "flac"
    flac_dir.mkdir(exist_ok=True)
    for uid, e in manifest.items():  # the same audio as FLAC, the usual corpus format
        target = flac_dir / f"{uid}.flac"
        if not target.exists():
            wav, rate = soundfile.read(e["wav"].replace("{data_root}", str(corpus)), dtype="float32")
            soundfile.write(target, wav, rate)
        e["wav"] = f"{{data_root}}/{uid}.flac"
    flac_manifest = root / "flac.json"
    flac_manifest.write_text(json.dumps(manifest))
    raw = root / "raw.h5"
    feats = root / "fbank.h5"
    if not raw.exists():
        pack_hdf5(flac_manifest, raw, data_root=str(flac_dir), workers=2)
    if not feats.exists():
        pack_hdf5(flac_manifest, feats, data_root=str(flac_dir), extractor=fbank(n_mels=40), workers=2)
    return {"manifest": flac_manifest, "flac_dir": flac_dir, "raw": raw, "features": feats}


def epoch_rate(dataset, workers: int) -> tuple[float, float]:
    loader = DataLoader(dataset, batch_sampler=FixedBatchSampler(dataset.lengths, 16, shuffle=True),
                        collate_fn=collate, num_workers=workers, persistent_workers=False,
                        multiprocessing_context="fork" if workers else None)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch)
    elapsed = time.perf_counter() - t0
    return n / elapsed, float(dataset.lengths.sum()) / elapsed


def main(utterances: int = 600, root: str = "/tmp/loader-bench") -> str:
    import torch

    torch.set_num_threads(1)  # workers do the parallel work; 2 cores in all
    paths = build(Path(root), utterances)
    pipe = FeaturePipeline(fbank(n_mels=40), normalize="none")
    ways = {
        "per-file FLAC + fbank in workers": lambda: ManifestDataset(paths["manifest"], data_root=str(paths["flac_dir"]),
                                                                    transform=pipe.per_example),
        "HDF5 raw audio + fbank in workers": lambda: HDF5Dataset(paths["raw"], transform=pipe.per_example),
        "HDF5 precomputed fbank": lambda: HDF5Dataset(paths["features"]),
    }
    hours = ManifestDataset(paths["manifest"], data_root=str(paths["flac_dir"])).lengths.sum() / 3600
    rows = [f"{utterances} utterances, {hours * 60:.1f} min of 16 kHz audio, batches of 16, 40 log-mel bins\n",
            "| source | workers | utterances/s | audio s/s | vs per-file FLAC |", "| --- | --- | --- | --- | --- |"]
    base = {}
    for workers in (0, 2, 4):
        for name, make in ways.items():
            epoch_rate(make(), workers)  # warm the page cache
            rate, audio = max(epoch_rate(make(), workers) for _ in range(2))
            base.setdefault(workers, rate)
            rows.append(f"| {name} | {workers} | {rate:.0f} | {audio:.0f} | {rate / base[workers]:.1f}x |")
            print(rows[-1], flush=True)
    ds = HDF5Dataset(paths["features"])
    ds[0]
    order = np.random.default_rng(0).permutation(len(ds))
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    per_item = (time.perf_counter() - t0) / len(ds) * 1e3
    rows.append(f"\nHDF5 features, per-item read (`dataset[i]`, random order, one process): {per_item:.3f} ms")
    text = "\n".join(rows)
    print(text)
    return text
