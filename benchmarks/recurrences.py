"""DeepSpeech2's recurrences on the CPU: packed sequences against the path the model takes
there (``RecurrentLayer.reversed_in_length``: a padded tensor, the reverse direction read
reversed within each sequence's length).

The composed recipe's model (the default: ``ds2_small`` on the tones corpus) over one epoch
of its training batches in training order (their real lengths and padding), features
computed beforehand, dropout off. Each batch's forward and backward is timed with each path in turn,
the first path alternating from batch to batch; the sums are the model's seconds of an
epoch. The loss of every batch is compared between the paths: they compute one function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
from hydra.utils import instantiate

from benchmarks.common import compose, training_loader
from framework.experiment import build_datasets, seed_everything
from framework.features import build_features
from framework.models.deepspeech2 import RecurrentLayer
from framework.trainer.threads import set_num_threads


@contextmanager
def packed_recurrences():
    """Every recurrent layer steps packed sequences, as it does on a GPU."""
    unpacked = RecurrentLayer.reversed_in_length
    RecurrentLayer.reversed_in_length = lambda layer, x, lengths: layer.packed(x, lengths)
    try:
        yield
    finally:
        RecurrentLayer.reversed_in_length = unpacked


def timed_step(model: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    logits, out_lens = model(feats, lengths)[:2]
    mask = torch.arange(logits.shape[1])[None, :] < out_lens[:, None]
    loss = (logits.float().log_softmax(-1).mean(-1) * mask).sum() / mask.sum()
    loss.backward()
    return time.perf_counter() - start, float(loss)


def epoch(overrides: Sequence[str], max_batches: int | None) -> dict:
    cfg = compose(overrides)
    seed_everything(cfg.seed)
    cpu = torch.device("cpu")
    features = build_features(cfg, cpu)
    dataset = build_datasets(cfg)["train"]
    # dropout off: its masks follow the outputs' memory layout, which the two paths lay out differently
    model = instantiate(cfg.model, num_bins=features.num_bins, num_classes=32, dropout=0.0).train()
    paths: dict[str, Callable] = {"packed": packed_recurrences, "padded": nullcontext}
    seconds = dict.fromkeys(paths, 0.0)
    loss_diff = padded = real = 0.0
    batches = 0
    for i, batch in enumerate(training_loader(cfg, dataset, features)):
        if max_batches is not None and i >= max_batches:
            break
        with torch.no_grad():
            feats, lengths = features(batch.inputs, batch.inputs_lens)
        padded, real = padded + lengths.numel() * feats.shape[1], real + float(lengths.sum())
        order = list(paths) if i % 2 == 0 else list(reversed(paths))
        losses = {}
        for name in order:
            with paths[name]():
                took, losses[name] = timed_step(model, feats, lengths)
            seconds[name] += took
        loss_diff = max(loss_diff, abs(losses["packed"] - losses["padded"]))
        batches += 1
    return {"model": f"{cfg.model.rnn_type}, {cfg.model.num_layers} x {cfg.model.hidden_size}", "batches": batches,
            "padding": 1 - real / padded, "loss_diff": loss_diff, **seconds}


def main(overrides: Sequence[str], rnn_types: Sequence[str], threads: int, max_batches: int | None) -> None:
    set_num_threads(threads)
    rows = [epoch([*overrides, f"model.rnn_type={kind}"], max_batches) for kind in rnn_types]
    print(f"\n{threads} thread(s), torch {torch.__version__}; overrides: {' '.join(overrides) or '(none)'}\n")
    print("| model | batches | padding % | packed s | padded (the CPU path) s | padded / packed | largest loss difference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['batches']} | {r['padding']:.1%} | {r['packed']:.3f} | {r['padded']:.3f} "
              f"| {r['padded'] / r['packed']:.2f} | {r['loss_diff']:.1e} |")
