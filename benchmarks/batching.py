"""Side-by-side comparison of batching strategies on the same lengths.

    python -m benchmarks batching [--budget 544] [--buckets 60] [--million]

Compares random fixed batches of 32, sorted batches of 32, this framework's
DynamicBatchSampler and, when installed, SpeechBrain's DynamicBatchSampler and lhotse's
DynamicBucketingSampler, at the same budget (seconds of padded audio per batch) and
bucket count. Padding % = padded elements / (batch size x longest), over all batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks import lengths as dists
from framework.data.batching import DynamicBatchSampler, FixedBatchSampler, SortedBatchSampler, batch_stats


def timed(build: Callable[[], object], epoch: Callable[[object], list]) -> tuple[list, float, float]:
    t0 = time.perf_counter()
    sampler = build()
    t1 = time.perf_counter()
    batches = epoch(sampler)
    t2 = time.perf_counter()
    return batches, t1 - t0, t2 - t1


def ours(lengths, budget, buckets):
    return timed(
        lambda: DynamicBatchSampler(lengths, max_batch_length=budget, num_buckets=buckets, shuffle=True, seed=0),
        lambda s: list(s),
    )


def speechbrain(lengths, budget, buckets):
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.dataio.sampler import DynamicBatchSampler as SBSampler

    data = {str(i): {"duration": float(d)} for i, d in enumerate(lengths)}
    dataset = DynamicItemDataset(data)
    return timed(
        lambda: SBSampler(dataset, max_batch_length=budget, num_buckets=buckets, length_func=lambda x: x["duration"],
                          shuffle=True, batch_ordering="random"),
        lambda s: [[int(i) for i in b] for b in s],
    )


def lhotse(lengths, budget, buckets):
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler
    from lhotse.testing.dummies import dummy_cut

    cuts = CutSet.from_cuts(dummy_cut(i, duration=float(d)) for i, d in enumerate(lengths))
    return timed(
        lambda: DynamicBucketingSampler(cuts, max_duration=budget, num_buckets=buckets, shuffle=True, seed=0),
        lambda s: [[int(c.id.split("-")[-1]) for c in b] for b in s],
    )


def fixed(lengths, budget, buckets):
    return timed(lambda: FixedBatchSampler(lengths, batch_size=32, shuffle=True), lambda s: list(s))


def sorted_(lengths, budget, buckets):
    return timed(lambda: SortedBatchSampler(lengths, batch_size=32, shuffle=False), lambda s: list(s))


STRATEGIES = {
    "random bs=32": fixed,
    "sorted bs=32": sorted_,
    "framework DynamicBatchSampler": ours,
    "SpeechBrain DynamicBatchSampler": speechbrain,
    "lhotse DynamicBucketingSampler": lhotse,
}


def compare(name: str, lengths: np.ndarray, budget: float, buckets: int) -> list[str]:
    rows = [
        f"\n### {name}: {len(lengths):,} utterances, {lengths.sum() / 3600:.1f} h, budget {budget:g} s, {buckets} buckets\n",
        "| strategy | padding % | batches | examples kept | build (s) | iterate epoch (s) | build + iterate vs framework |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ours_s = None
    for label, fn in STRATEGIES.items():
        try:
            batches, build, iterate = fn(lengths, budget, buckets)
        except ImportError as exc:
            rows.append(f"| {label} | not installed ({exc.name}) | | | | | |")
            continue
        s = batch_stats(batches, lengths)
        if fn is ours:
            ours_s = build + iterate
        ratio = f"{(build + iterate) / ours_s:.1f}x" if ours_s and fn in (ours, speechbrain, lhotse) else ""
        rows.append(
            f"| {label} | {100 * s['padding_fraction']:.2f} | {s['num_batches']} | {s['examples']:,} | "
            f"{build:.3f} | {iterate:.3f} | {ratio} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(budget: float = 544.0, buckets: int = 60, million: bool = True) -> str:
    import platform

    import torch

    out = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
           f"Python {platform.python_version()}"]
    out += compare("DeepMark", dists.deepmark(), budget, buckets)
    out += compare("LibriSpeech-like", dists.librispeech_like(), budget, buckets)
    if million:
        lengths = dists.deepmark(scale=1_000_000 / 128_000, seed=1)
        batches, build, iterate = ours(lengths, budget, buckets)
        s = batch_stats(batches, lengths)
        out.append(
            f"\n1,000,000 DeepMark lengths, framework DynamicBatchSampler: build {build:.2f} s + iterate "
            f"{iterate:.2f} s = {build + iterate:.2f} s; {s['num_batches']} batches, padding "
            f"{100 * s['padding_fraction']:.2f}%"
        )
        sampler = DynamicBatchSampler(lengths[:128000], max_batch_length=budget, num_buckets=buckets, shuffle=True)
        e0 = {tuple(sorted(b)) for b in sampler}
        sampler.set_epoch(1)
        e1 = {tuple(sorted(b)) for b in sampler}
        out.append(f"Epoch 0 vs epoch 1 (128,000 lengths): {len(e0 & e1)} of {len(e0)} batches identical in content")
    text = "\n".join(out)
    print(text)
    return text
