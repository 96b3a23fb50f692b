"""Length statistics of a manifest, and what a batching config makes of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framework.config import check_command_line
from framework.data.batching import DynamicBatchSampler, LengthBatchSampler, batch_stats
from framework.data.loader import make_sampler
from framework.data.manifest import Hints, load_entries
from framework.files import write_atomic

# `prepare stats` has no flag that sets anything of a manifest
STATS_HINTS = Hints(skip_bad=None, data_root=None, replacement=None, audio_key=None)


def batching_sampler(lengths: np.ndarray, batching: str, overrides: list[str]) -> LengthBatchSampler:
    """The sampler ``conf/batching/<batching>.yaml`` (with ``key=value`` overrides of its
    keys) builds, checked like a training config."""
    job = [f"batching={batching}", *[f"batching.{o.lstrip('+')}" for o in overrides]]
    cfg = check_command_line(job)
    return make_sampler(cfg.batching, lengths, cfg.seed)


def length_summary(lengths: np.ndarray) -> dict[str, float]:
    p = np.percentile(lengths, [0, 5, 25, 50, 75, 95, 100])
    return {
        "count": int(len(lengths)),
        "hours": float(lengths.sum() / 3600),
        "mean_s": float(lengths.mean()),
        **{f"p{q}_s": float(v) for q, v in zip((0, 5, 25, 50, 75, 95, 100), p)},
    }


def plot_histogram(lengths: np.ndarray, path: str | Path, boundaries: np.ndarray | None = None, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(lengths, bins=100, color="#4477aa")
    if boundaries is not None:
        for edge in boundaries[np.isfinite(boundaries)]:
            ax.axvline(edge, color="#cc6677", linewidth=0.6)
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("utterances")
    ax.set_title(title + (f" ({len(boundaries)} bucket edges)" if boundaries is not None else ""))
    fig.tight_layout()
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def run_stats(manifest: str, png: str | None, batching: str | None, overrides: list[str], epochs: int = 1) -> dict:
    entries = load_entries(manifest, replacements={"data_root": "."}, hints=STATS_HINTS)  # lengths only: no real root
    lengths = np.array([e.duration for e in entries])
    summary = length_summary(lengths)
    print(f"{manifest}: {summary['count']} utterances, {summary['hours']:.2f} h, mean {summary['mean_s']:.2f} s")
    print("percentiles (s): " + ", ".join(f"{k[1:-2]}%={v:.2f}" for k, v in summary.items() if k.startswith("p")))
    result: dict = {"lengths": summary}
    boundaries = None
    if batching:
        sampler = batching_sampler(lengths, batching, overrides)
        if isinstance(sampler, DynamicBatchSampler):
            boundaries = sampler.bucket_boundaries
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            stats = batch_stats(batches, lengths)
            sizes = np.array([len(b) for b in batches])
            q = np.percentile(sizes, [5, 50, 95])
            print(
                f"batching={batching} epoch {epoch}: {stats['num_batches']} batches, padding "
                f"{100 * stats['padding_fraction']:.2f}%, {stats['examples']} of {len(lengths)} examples kept, batch size "
                f"mean {stats['mean_batch_size']:.1f} (min {stats['min_batch_size']}, 5% {q[0]:.0f}, median {q[1]:.0f}, "
                f"95% {q[2]:.0f}, max {stats['max_batch_size']})"
            )
            result.setdefault("epochs", []).append(stats)
    if png:
        plot_histogram(lengths, png, boundaries, Path(manifest).name)
        print(f"histogram written to {png}")
    return result
