"""``python -m framework.tune_batch [overrides] [--memory-limit 20GB]``: the largest batch
budget (``batching.max_batch_length``) whose worst-case batch trains within memory.

The worst case of dynamic batching is a batch of the longest examples, as many as the
budget admits. The finder trains a few steps on such batches of growing size (doubling,
then bisection, as icefall's pessimistic OOM scan and Lightning's batch-size finder do)
until the peak memory passes ``safety`` x the limit or the device runs out, and reports
the largest budget that stayed under it. The limit is the GPU's memory, or
``--memory-limit`` (on a GPU enforced with ``set_per_process_memory_fraction``). On a CPU
the peak is estimated from the tensors a step holds: parameters, gradients, optimizer
state and the activations saved for the backward pass.

Prints ``batching.max_batch_length=<seconds>`` and records the scan in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from framework.errors import UserError
from framework.files import write_text_atomic

log = logging.getLogger(__name__)
UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """``20GB``, ``512MiB``, ``1.5e9`` -> bytes."""
    m = re.fullmatch(r"\s*([\d.eE+]+)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"--memory-limit {text!r}: give a size such as 20GB, 512MiB or 1.5e9 (bytes)")
    return int(float(m.group(1)) * UNITS[(m.group(2) or "").upper()])


class TooLarge(Exception):
    """The probe ran out of memory (or passed the fake limit)."""


@dataclass
class Scan:
    """The finder's result: ``examples`` of the longest length fit, ``max_batch_length`` s."""

    max_batch_length: float
    examples: int
    longest_s: float
    peak_bytes: int
    limit_bytes: int
    safety: float
    probes: list[dict] = field(default_factory=list)  # {"examples", "peak_bytes" or "oom"}


def find_largest(probe: Callable[[int], int], limit: float, start: int = 1, tolerance: float = 0.05,
                 max_examples: int = 1 << 16) -> tuple[int, int, list[dict]]:
    """The largest ``n`` whose ``probe(n)`` (peak bytes; raises :class:`TooLarge`) stays
    at or under ``limit``: doubling from ``start``, then bisection until the bracket is
    within ``tolerance`` of ``n`` (or 1). Returns (n, its peak, the probes)."""
    probes: list[dict] = []

    def fits(n: int) -> int | None:
        try:
            peak = probe(n)
        except TooLarge:
            probes.append({"examples": n, "oom": True})
            return None
        probes.append({"examples": n, "peak_bytes": peak})
        return peak if peak <= limit else None

    good, good_peak, bad = 0, 0, None
    n = max(1, start)
    while bad is None:  # grow until a probe does not fit
        peak = fits(n)
        if peak is None:
            bad = n
        else:
            good, good_peak = n, peak
            if n >= max_examples:
                return good, good_peak, probes
            n = min(2 * n, max_examples)
    while bad - good > max(1, int(tolerance * good)):
        mid = (good + bad) // 2
        peak = fits(mid)
        if peak is None:
            bad = mid
        else:
            good, good_peak = mid, peak
    return good, good_peak, probes


class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for backward while active (CPU estimate)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def tensor_bytes(tensors) -> int:
    """Bytes this process holds: of a sharded tensor (fsdp), its own shard."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in local)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, gradients and optimizer state."""
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    opt = [v for state in optimizer.state.values() for v in state.values()]
    return tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(opt)


class WorstCaseBatches:
    """Batches of ``n`` examples all as long as the longest: the longest 1% of the dataset
    (at least one example), repeated as often as needed."""

    def __init__(self, dataset, collate: Callable) -> None:
        self.dataset = dataset
        self.collate = collate
        order = np.argsort(-np.asarray(dataset.lengths), kind="stable")
        self.order = order[: max(1, len(order) // 100)]
        self.cache: dict[int, dict] = {}

    @property
    def longest(self) -> float:
        return float(self.dataset.lengths[self.order[0]])

    def __call__(self, n: int):
        idx = [int(self.order[i % len(self.order)]) for i in range(n)]
        for i in idx:
            if i not in self.cache:
                self.cache[i] = self.dataset[i]
        return self.collate([self.cache[i] for i in idx])


def train_peak(brain, train: Callable[[], object], times: int) -> int:
    """Peak bytes of ``times`` calls of ``train`` (training through ``brain``): the CUDA
    allocator's peak, or on a CPU the estimate of the tensors a step holds."""
    device = brain.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(times):
            train()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    peak = 0
    for _ in range(times):
        saved = SavedTensorBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            train()
        peak = max(peak, saved.total + state_bytes(brain.module, brain.optimizer))
    return peak


def train_once(brain, batches) -> None:
    """One optimizer step per batch through the Brain's own step (outside ``fit``)."""
    brain.set_mode(training=True)
    for batch in batches:
        brain.train_step([batch.to(brain.device)], [1.0])


def make_probe(brain, batches: WorstCaseBatches, steps: int, fake_limit: int | None) -> Callable[[int], int]:
    """Trains ``steps`` steps on the worst-case batch of ``n`` examples through the Brain;
    returns the peak bytes (CUDA allocator peak, or the CPU estimate)."""
    device = brain.device

    def probe(n: int) -> int:
        batch = batches(n)
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            peak = train_peak(brain, functools.partial(train_once, brain, [batch]), steps)
        except torch.OutOfMemoryError:
            raise TooLarge from None
        finally:
            brain.optimizer.zero_grad(set_to_none=True)
            del batch
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if fake_limit is not None and peak > fake_limit:
            raise TooLarge
        log.info("probe: %d examples -> peak %.3f GB", n, peak / 1e9)
        return peak

    return probe


def tune(cfg, memory_limit: int | None = None, safety: float = 0.9, steps: int = 2, tolerance: float = 0.05,
         run_dir: str | None = None) -> Scan:
    """Builds the run's training set and Brain from ``cfg`` and scans for the budget."""
    from framework.data.collate import collate
    from framework.experiment import build_datasets, seed_everything
    from framework.run_dir import open_brain

    seed_everything(cfg.seed)
    train = build_datasets(cfg)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        brain = open_brain(cfg, "tune_batch", run_dir or tmp)
        brain.setup(train)
        device = brain.device
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            limit = memory_limit or total
            if memory_limit:  # a real limit: the allocator refuses beyond it
                torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit / total), device)
            fake = None
        elif memory_limit is None:
            raise UserError("on a CPU give --memory-limit (e.g. 8GB): the finder compares its estimate of a step's "
                             "tensors (parameters, gradients, optimizer state, saved activations) with it")
        else:
            limit, fake = memory_limit, memory_limit
        batches = WorstCaseBatches(train, collate)
        cost = batches.longest
        if cfg.batching.get("quadratic"):
            cost += cost**2 / cfg.batching.quadratic
        cap = cfg.batching.get("max_batch_ex") or (1 << 16)
        n, peak, probes = find_largest(make_probe(brain, batches, steps, fake), safety * limit, tolerance=tolerance,
                                       max_examples=cap)
        brain.logger.close()
    if n == 0:
        raise UserError(f"one example of the longest length ({batches.longest:g} s) does not fit in "
                           f"{safety:g} x {limit / 1e9:.2f} GB; filter long utterances (max_duration) or use less memory "
                           "(trainer.precision=bf16, trainer.activation_checkpointing=[rnns])")
    return Scan(max_batch_length=n * cost, examples=n, longest_s=batches.longest, peak_bytes=peak, limit_bytes=int(limit),
                safety=safety, probes=probes)


def main(argv: list[str] | None = None) -> int:
    from framework.cli import exit_on_error, parse_with_overrides
    from framework.config import check_command_line, compose_command_line

    parser = argparse.ArgumentParser(prog="python -m framework.tune_batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-limit", help="e.g. 20GB (default: the GPU's memory; required on a CPU)")
    parser.add_argument("--safety", type=float, default=0.9, help="use at most this fraction of the limit")
    parser.add_argument("--steps", type=int, default=2, help="training steps per probe")
    parser.add_argument("--tolerance", type=float, default=0.05, help="stop bisecting within this fraction")
    parser.add_argument("--out", default="batch_budget.json", help="where the scan is recorded (JSON)")
    args, overrides = parse_with_overrides(parser, argv)
    try:
        limit = parse_bytes(args.memory_limit) if args.memory_limit else None
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("framework.brain", "recipes"):  # one line per probe is enough
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def run() -> int:
        job = [*overrides, "trainer.skip_oom=false", "logger.tensorboard=false"]
        check_command_line(job)
        scan = tune(compose_command_line(job, hydra_runtime=True), limit, args.safety, args.steps, args.tolerance)
        write_text_atomic(args.out, json.dumps(asdict(scan), indent=1))
        print(f"batching.max_batch_length={scan.max_batch_length:.4g}  ({scan.examples} examples of the longest, "
              f"{scan.longest_s:g} s; peak {scan.peak_bytes / 1e9:.3f} GB <= {scan.safety:g} x "
              f"{scan.limit_bytes / 1e9:.3f} GB; {len(scan.probes)} probes; recorded in {args.out})")
        return 0

    return exit_on_error(run)


if __name__ == "__main__":
    sys.exit(main())
