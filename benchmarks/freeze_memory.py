"""What freezing saves: trainable parameters, optimizer state and peak training memory with
each ``trainer.freeze`` setting, on one batch of the longest utterances.

The peak is the framework's own measurement (the batch-budget finder's): the CUDA
allocator's peak on a GPU; on a CPU, the bytes of parameters, gradients, optimizer state
and the tensors autograd saves for backward. Each setting builds its Brain from the same
run config and trains ``steps`` steps on the same batch.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Sequence

import torch

from benchmarks.common import compose


def measure(overrides: Sequence[str], freeze: str, batch: int, steps: int) -> dict[str, float]:
    from framework.data.collate import collate
    from framework.experiment import build_datasets, seed_everything
    from framework.run_dir import open_brain
    from framework.tune_batch import WorstCaseBatches, make_probe, tensor_bytes

    cfg = compose([*overrides, f"trainer.freeze=[{freeze}]", "logger.tensorboard=false"])
    seed_everything(cfg.seed)
    train = build_datasets(cfg)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        brain = open_brain(cfg, "freeze_memory", tmp)
        brain.setup(train)
        peak = make_probe(brain, WorstCaseBatches(train, collate), steps, None)(batch)
        params = list(brain.module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        optimizer_state = tensor_bytes(v for s in brain.optimizer.state.values() for v in s.values())
        brain.logger.close()
    del brain  # the Brain holds reference cycles: only a collection frees its tensors before the next setting
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"trainable": trainable / sum(p.numel() for p in params), "optimizer_mb": optimizer_state / 2**20,
            "peak_mb": peak / 2**20}


def main(settings: Sequence[str], batch: int, steps: int, overrides: Sequence[str]) -> None:
    torch.manual_seed(0)
    rows = [(freeze or "nothing", measure(overrides, freeze, batch, steps)) for freeze in settings]
    base = rows[0][1]
    print(f"\n{batch} examples of the longest length, {steps} steps; overrides: {' '.join(overrides) or '(none)'}\n")
    print("| frozen | trainable | optimizer state MB | vs first | peak MB | vs first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(f"| {name} | {r['trainable']:.1%} | {r['optimizer_mb']:.2f} | {r['optimizer_mb'] / base['optimizer_mb']:.2f}x "
              f"| {r['peak_mb']:.1f} | {r['peak_mb'] / base['peak_mb']:.2f}x |")
