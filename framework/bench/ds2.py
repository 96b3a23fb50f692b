"""DeepSpeech2 on the DeepMark synthetic corpus: per-minibatch timing, and the framework's
overhead against a plain PyTorch loop over the same model and the same batches.

    python -m framework.bench ds2 [--batch-size 32 | --sweep-batch 16,32,64]
                                  [--batching equal|config] [--max-batches N] [overrides...]

Overrides are ordinary config overrides (defaults: dataset=deepmark model=ds2
features=none), e.g. ``trainer.precision=bf16 trainer.device=cuda dataset.scale=0.1``.

Batches are built directly on the device from the corpus' random block (identically for
both loops), so the timings measure the model and the loop, not data loading.
"""

from __future__ import annotations

import logging
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from framework import CONF_DIR
from framework.brain import Brain
from framework.data.batching import DynamicBatchSampler, batch_stats
from framework.data.collate import Batch
from framework.data.deepmark import ALPHABET, FRAMES_PER_SECOND, LABEL_LENGTHS, NUM_BINS, DeepMarkDataset
from framework.models import count_parameters
from framework.trainer.distributed import resolve_device
from framework.trainer.precision import Precision

DEFAULTS = ["dataset=deepmark", "model=ds2", "features=none", "scheduler=constant", "trainer.max_grad_norm=null",
            "optimizer.lr=1e-5", "logger.tensorboard=false"]


def compose_bench(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="train", overrides=[*DEFAULTS, *overrides])


def equal_length_batches(dataset: DeepMarkDataset, batch_size: int) -> list[list[int]]:
    """The reference procedure: minibatches of one length class, the last of a class smaller."""
    sampler = DynamicBatchSampler(dataset.lengths, max_batch_length=float(batch_size * 16), max_batch_ex=batch_size,
                                  bucket_boundaries=np.arange(1, 16, dtype=float), shuffle=False,
                                  batch_ordering="ascending")
    return list(sampler)


class BatchMaker:
    """Builds padded batches on the device from the corpus' random blocks (a gather, no copy
    from the host per batch)."""

    def __init__(self, dataset: DeepMarkDataset, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        self.block = dataset.block.to(device)
        self.labels = dataset.labels.to(device)

    def __call__(self, indices: list[int]) -> Batch:
        d = self.dataset
        idx = np.asarray(indices)
        frames = ((d.classes[idx] + 1) * FRAMES_PER_SECOND).astype(np.int64)
        label_lens = np.asarray(LABEL_LENGTHS)[d.classes[idx]]
        t, s = int(frames.max()), int(label_lens.max())
        starts = torch.as_tensor(d.offsets[idx], device=self.device)
        frame_lens = torch.as_tensor(frames, device=self.device)
        token_lens = torch.as_tensor(label_lens, device=self.device)
        ar_t = torch.arange(t, device=self.device)
        ar_s = torch.arange(s, device=self.device)
        inputs = self.block[starts[:, :1] + ar_t] * (ar_t < frame_lens[:, None])[..., None]
        tokens = self.labels[starts[:, 1:] + ar_s] * (ar_s < token_lens[:, None])
        return Batch(id=[str(i) for i in indices], inputs=inputs, inputs_lens=frame_lens.cpu(), tokens=tokens,
                     tokens_lens=token_lens)


def forward(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits, out_lens = model(batch["inputs"], batch["inputs_lens"].to(batch["inputs"].device))
    return logits.float().log_softmax(-1), out_lens


def ctc_loss(ctc: nn.CTCLoss, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> torch.Tensor:
    log_probs, out_lens = outputs
    return ctc(log_probs.transpose(0, 1), batch["tokens"], out_lens, batch["tokens_lens"])


class DeepMarkBrain(Brain):
    """The framework path: the Brain's own loop, with the same forward and loss as the plain loop."""

    def __init__(self, cfg: DictConfig, model: nn.Module, run_dir: str) -> None:
        self._given_model = model
        super().__init__(cfg, run_dir=run_dir, log_name="bench")

    def build_model(self, train_set) -> nn.Module:
        self.ctc = nn.CTCLoss(blank=0, zero_infinity=True)
        return self._given_model

    def compute_forward(self, batch, stage):
        return forward(self.model, batch)

    def compute_objectives(self, outputs, batch, stage):
        return ctc_loss(self.ctc, outputs, batch)


class Batches:
    """A sized iterable of device batches, what the Brain's epoch loop consumes."""

    def __init__(self, maker: BatchMaker, index_batches: list[list[int]]) -> None:
        self.maker, self.index_batches = maker, index_batches

    def __len__(self) -> int:
        return len(self.index_batches)

    def __iter__(self):
        return (self.maker(b) for b in self.index_batches)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, optimizer, precision: Precision, ctc, batches: Batches, device, timings: list | None = None):
    """The hand-written loop the framework is measured against."""
    model.train()
    for batch in batches:
        if timings is not None:
            sync(device)
            t0 = time.perf_counter()
        with precision.autocast():
            loss = ctc_loss(ctc, forward(model, batch), batch)
        if timings is not None:
            sync(device)
            t1 = time.perf_counter()
        precision.backward(loss)
        if timings is not None:
            sync(device)
            timings.append((t1 - t0, time.perf_counter() - t1))
        precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    sync(device)


@dataclass
class Result:
    batch_size: int | str
    num_batches: int
    samples: int
    audio_s: float
    fwd_ms: float
    bwd_ms: float
    plain_ms: float  # wall time per step of the plain loop, optimizer step included
    framework_ms: float | None
    padding: float
    peak_mem_gb: float

    def row(self) -> str:
        step_ms = self.plain_ms
        overhead = "" if self.framework_ms is None else (
            f"{self.framework_ms - self.plain_ms:+.2f} ms ({100 * (self.framework_ms / self.plain_ms - 1):+.1f}%)")
        return (f"| {self.batch_size} | {self.num_batches} | {self.fwd_ms:.1f} | {self.bwd_ms:.1f} | "
                f"{self.fwd_ms + self.bwd_ms:.1f} | {step_ms:.1f} | {self.samples / (step_ms * self.num_batches / 1e3):.1f} | "
                f"{self.audio_s / (step_ms * self.num_batches / 1e3):.1f} | {step_ms * self.num_batches / 1e3:.1f} | "
                f"{100 * self.padding:.2f} | {self.peak_mem_gb:.2f} | {overhead} |")


HEADER = ("| batch | minibatches | fwd ms | bwd ms | fwd+bwd ms | step ms | samples/s | audio s/s | epoch s | "
          "padding % | peak mem GB | framework overhead per step |\n" + "| --- " * 12 + "|")


def measure(cfg: DictConfig, dataset: DeepMarkDataset, batch_size: int, batching: str, max_batches: int | None,
            repeats: int, compare: bool) -> Result:
    device = resolve_device(cfg.trainer.device)
    torch.manual_seed(cfg.seed)
    precision = Precision(cfg.trainer.precision, device)
    model = instantiate(cfg.model, num_bins=NUM_BINS, num_classes=len(ALPHABET) + 1).to(device)
    optimizer = instantiate(cfg.optimizer, params=[p for p in model.parameters() if p.requires_grad])
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    if batching == "equal":
        index_batches = equal_length_batches(dataset, batch_size)
    else:
        index_batches = list(instantiate(cfg.batching, lengths=dataset.lengths, seed=cfg.seed))
    stats = batch_stats(index_batches, dataset.lengths)
    full_count = len(index_batches)
    if max_batches and max_batches < len(index_batches):  # an even sample across length classes
        pick = np.linspace(0, len(index_batches) - 1, max_batches).round().astype(int)
        index_batches = [index_batches[i] for i in pick]
    maker = BatchMaker(dataset, device)
    batches = Batches(maker, index_batches)
    warm = Batches(maker, index_batches[-2:])  # the longest: allocator and cuDNN plans settle
    plain_loop(model, optimizer, precision, ctc, warm, device)

    timings: list[tuple[float, float]] = []
    plain_loop(model, optimizer, precision, ctc, batches, device, timings)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    plain_wall, fw_wall = [], []
    brain = None
    if compare:
        with tempfile.TemporaryDirectory() as tmp:
            brain = DeepMarkBrain(cfg, model, tmp)
            brain.setup(None)
            brain.optimizer = optimizer  # same model, same optimizer object
            brain.precision = precision
            brain.train_epoch(warm, 0)
            for _ in range(repeats):  # interleaved, so drift affects both alike
                t0 = time.perf_counter()
                plain_loop(model, optimizer, precision, ctc, batches, device)
                plain_wall.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                brain.train_epoch(batches, 0)
                sync(device)
                fw_wall.append(time.perf_counter() - t0)
            brain.logger.close()
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            plain_loop(model, optimizer, precision, ctc, batches, device)
            plain_wall.append(time.perf_counter() - t0)

    n = len(index_batches)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    sampled = [i for b in index_batches for i in b]
    scale = full_count / n  # figures are for the whole epoch
    return Result(
        batch_size=batch_size if batching == "equal" else f"{stats['mean_batch_size']:.1f} (mean)",
        num_batches=full_count,
        samples=int(len(sampled) * scale),
        audio_s=float(dataset.lengths[sampled].sum() * scale),
        fwd_ms=1e3 * statistics.median(t[0] for t in timings),
        bwd_ms=1e3 * statistics.median(t[1] for t in timings),
        plain_ms=1e3 * statistics.median(plain_wall) / n,
        framework_ms=1e3 * statistics.median(fw_wall) / n if fw_wall else None,
        padding=stats["padding_fraction"],
        peak_mem_gb=peak,
    )


def main(overrides: list[str], batch_sizes: list[int], batching: str = "equal", max_batches: int | None = None,
         repeats: int = 3, compare: bool = True) -> list[Result]:
    logging.getLogger("framework.brain").setLevel(logging.WARNING)  # the table is the output
    cfg = compose_bench(overrides)
    dataset = instantiate(cfg.dataset.train)
    device = resolve_device(cfg.trainer.device)
    model_probe = instantiate(cfg.model, num_bins=NUM_BINS, num_classes=len(ALPHABET) + 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"DeepSpeech2 ({count_parameters(model_probe) / 1e6:.1f} M parameters, rnn={cfg.model.rnn_type}, "
          f"hidden={cfg.model.hidden_size}, layers={cfg.model.num_layers}) on {name}, precision {cfg.trainer.precision}; "
          f"DeepMark scale {cfg.dataset.scale}: {len(dataset)} utterances, {dataset.lengths.sum() / 3600:.2f} h; "
          f"batching {batching if batching == 'equal' else cfg.batching._target_.rsplit('.', 1)[-1]}"
          + (f"; timed on {max_batches} minibatches spread over the epoch" if max_batches else ""))
    del model_probe
    print(HEADER, flush=True)
    results = []
    for bs in batch_sizes:
        result = measure(cfg, dataset, bs, batching, max_batches, repeats, compare)
        print(result.row(), flush=True)
        results.append(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(results) > 1:
        best = min(results, key=lambda r: r.plain_ms * r.num_batches)
        print(f"fastest: batch size {best.batch_size} ({best.audio_s / (best.plain_ms * best.num_batches / 1e3):.1f} s of audio per second)")
    return results
