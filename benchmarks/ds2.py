"""DeepSpeech2 on the DeepMark synthetic corpus: the DeepMark measurement (mean forward,
backward and step time per minibatch over an epoch), and the framework's overhead against
a plain PyTorch loop over the same model and the same batches.

    python -m benchmarks ds2 [--batch-size 32 | --sweep-batch 16,32,64]
                             [--batching equal|config] [--max-batches N] [overrides...]

Overrides are ordinary config overrides (defaults: dataset=deepmark model=ds2
features=none), e.g. ``trainer.precision=bf16 trainer.device=cuda dataset.scale=0.1``.
Everything else is the recipe's default, as a user's run would have it: gradient
clipping (``trainer.max_grad_norm``), the OneCycle schedule stepped every optimizer
step, TensorBoard logging every ``logger.log_every_n_steps`` steps.

Both loops step the same model, optimizer, schedule and precision, which the Brain builds
from the config (as a run would). Batches are built directly on the device from the
corpus' random block (identically for both loops), so the timings measure the model and
the loop, not data loading.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from benchmarks.common import compose, free_memory, peak_memory_bytes, sync
from framework.brain import Brain
from framework.config.schema import trainer_options
from framework.data.batching import DynamicBatchSampler, batch_stats
from framework.data.collate import Batch
from framework.data.deepmark import ALPHABET, FRAMES_PER_SECOND, LABEL_LENGTHS, NUM_BINS, DeepMarkDataset
from framework.data.loader import make_sampler
from framework.models import count_parameters
from framework.trainer.distributed import resolve_device
from framework.trainer.precision import Precision
from framework.trainer.threads import set_num_threads

# Random data and labels: a small learning rate keeps even the unclipped (fused) recurrence finite,
# which at the recipe's 3e-3 diverged; clipping, the schedule and logging run as in the recipe.
DEFAULTS = ["dataset=deepmark", "model=ds2", "features=none", "optimizer.lr=1e-5"]


def ds2_config(overrides: list[str]) -> DictConfig:
    """The benchmark's defaults, then ``overrides``, composed and checked."""
    return compose([*DEFAULTS, *overrides])


def equal_length_batches(dataset: DeepMarkDataset, batch_size: int) -> list[list[int]]:
    """The reference procedure: minibatches of one length class, the last of a class smaller."""
    sampler = DynamicBatchSampler(dataset.lengths, max_batch_length=float(batch_size * 16), max_batch_ex=batch_size,
                                  bucket_boundaries=np.arange(1, 16, dtype=float), shuffle=False,
                                  batch_ordering="ascending")
    return list(sampler)


def sample_per_class(index_batches: list[list[int]], lengths: np.ndarray, max_batches: int | None
                     ) -> tuple[list[list[int]], list[float]]:
    """About ``max_batches`` minibatches, spread over the length classes (a batch's class:
    its longest example, rounded up to whole seconds) in proportion to the class's batch
    count, at least one per class. Each picked batch is weighted by its class's audio in
    the epoch over the audio picked from that class, so weighted sums of per-batch times
    extrapolate to the epoch by audio seconds. Without a limit every batch has weight 1."""
    if not max_batches or max_batches >= len(index_batches):
        return index_batches, [1.0] * len(index_batches)
    classes: dict[int, list[int]] = {}
    for i, b in enumerate(index_batches):
        classes.setdefault(int(np.ceil(lengths[b].max())), []).append(i)
    picked, weights = [], []
    for members in classes.values():
        k = min(len(members), max(1, round(max_batches * len(members) / len(index_batches))))
        chosen = [members[j] for j in np.linspace(0, len(members) - 1, k).round().astype(int)]
        audio = sum(lengths[index_batches[i]].sum() for i in members)
        audio_picked = sum(lengths[index_batches[i]].sum() for i in chosen)
        picked += chosen
        weights += [float(audio / audio_picked)] * k
    order = np.argsort(picked, kind="stable")
    return [index_batches[picked[i]] for i in order], [weights[i] for i in order]


def heaviest(index_batches: list[list[int]], lengths: np.ndarray, n: int = 2) -> list[list[int]]:
    """The ``n`` batches holding the most padded audio (size x longest): the warm-up batches,
    so the allocator and cuDNN plans settle on the worst case whatever the batching."""
    cost = [len(b) * lengths[b].max() for b in index_batches]
    return [index_batches[i] for i in np.argsort(cost)[::-1][:n]]


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
    logits, out_lens = model(batch["inputs"], batch["inputs_lens"].to(batch["inputs"].device))[:2]  # no intermediate head
    return logits.float().log_softmax(-1), out_lens


def ctc_loss(ctc: nn.CTCLoss, outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> torch.Tensor:
    log_probs, out_lens = outputs
    return ctc(log_probs.transpose(0, 1), batch["tokens"], out_lens, batch["tokens_lens"])


class DeepMarkBrain(Brain):
    """The framework path: the Brain's own loop, with the same forward and loss as the plain
    loop, on ``cfg.model`` for the DeepMark corpus (compiled with ``compile_backend`` when
    given). The weights start from ``cfg.seed``, the same in every Brain of a config."""

    def __init__(self, cfg: DictConfig, run_dir: str, compile_backend: str | None = None) -> None:
        self.compile_backend = compile_backend
        super().__init__(cfg, run_dir=run_dir)

    def build_model(self, train_set) -> nn.Module:
        self.ctc = nn.CTCLoss(blank=0, zero_infinity=True)
        torch.manual_seed(self.cfg.seed)
        model = instantiate(self.cfg.model, num_bins=NUM_BINS, num_classes=len(ALPHABET) + 1)
        return torch.compile(model, backend=self.compile_backend) if self.compile_backend else model

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


class PlainLoop:
    """The hand-written loop the framework is measured against, doing what the recipe's
    defaults make the Brain do: forward, CTC loss, backward, gradient clipping, optimizer
    step, scheduler step, and TensorBoard scalars (loss, learning rate, gradient norm)
    every ``log_every`` steps. It steps the objects it is given: a Brain's, built from
    ``cfg``."""

    def __init__(self, cfg: DictConfig, model: nn.Module, optimizer, scheduler, precision: Precision, log_dir: str):
        self.model, self.optimizer, self.scheduler, self.precision = model, optimizer, scheduler, precision
        self.ctc = nn.CTCLoss(blank=0, zero_infinity=True)
        self.max_grad_norm = cfg.trainer.max_grad_norm
        self.log_every = cfg.logger.log_every_n_steps
        self.writer = None
        if cfg.logger.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir)
        self.step = 0

    def run(self, batches, device: torch.device, timings: list[tuple[float, float, float]] | None = None) -> None:
        """One pass; with ``timings``, appends (forward, backward, rest of the step) seconds
        per minibatch, synchronising the device between the parts."""
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        for batch in batches:
            if timings is not None:
                sync(device)
                t0 = time.perf_counter()
            with self.precision.autocast():
                loss = ctc_loss(self.ctc, forward(self.model, batch), batch)
            if timings is not None:
                sync(device)
                t1 = time.perf_counter()
            self.precision.backward(loss)
            if timings is not None:
                sync(device)
                t2 = time.perf_counter()
            norm = self.precision.clip(self.optimizer, params, self.max_grad_norm)
            self.precision.step(self.optimizer)
            if self.scheduler is not None:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.writer is not None and self.step % self.log_every == 0:
                self.writer.add_scalar("train/loss", loss.item(), self.step)
                self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
                if norm is not None:
                    self.writer.add_scalar("train/grad_norm", float(norm), self.step)
            if timings is not None:
                sync(device)
                timings.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        sync(device)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Result:
    """One configuration's figures. Means are over the epoch's minibatches (the timed ones
    weighted to the epoch by audio seconds), so ``epoch_s = step_ms x minibatches``."""

    label: str
    minibatches: int  # in the epoch
    timed: int  # minibatches actually timed
    utterances: int
    audio_s: float
    fwd_ms: float
    bwd_ms: float
    step_ms: float  # forward + backward + clipping, optimizer and scheduler step, logging
    fwd_median_ms: float
    bwd_median_ms: float
    padding: float
    peak_mem_gb: float
    plain_pass_ms: list[float] = field(default_factory=list)  # per step, each interleaved pass
    framework_pass_ms: list[float] = field(default_factory=list)

    @property
    def fwd_bwd_ms(self) -> float:
        return self.fwd_ms + self.bwd_ms

    @property
    def epoch_s(self) -> float:
        return self.step_ms * self.minibatches / 1e3

    @property
    def samples_per_s(self) -> float:
        return self.utterances / self.epoch_s

    @property
    def audio_per_s(self) -> float:
        return self.audio_s / self.epoch_s

    @property
    def overhead_ms(self) -> list[float]:
        """Framework minus plain, per step, for each pair of interleaved passes."""
        return [f - p for p, f in zip(self.plain_pass_ms, self.framework_pass_ms)]

    def to_dict(self) -> dict:
        return {**asdict(self), "fwd_bwd_ms": self.fwd_bwd_ms, "epoch_s": self.epoch_s,
                "samples_per_s": self.samples_per_s, "audio_per_s": self.audio_per_s, "overhead_ms": self.overhead_ms}

    def row(self) -> str:
        timed = "" if self.timed == self.minibatches else f" ({self.timed} timed)"
        return (f"| {self.label} | {self.minibatches}{timed} | {self.fwd_ms:.1f} | {self.bwd_ms:.1f} | "
                f"{self.fwd_bwd_ms:.1f} | {self.step_ms:.1f} | {self.fwd_median_ms:.1f} / {self.bwd_median_ms:.1f} | "
                f"{self.samples_per_s:.1f} | {self.audio_per_s:.1f} | {self.epoch_s:.2f} | {100 * self.padding:.2f} | "
                f"{self.peak_mem_gb:.2f} |")

    def overhead_row(self) -> str:
        d = self.overhead_ms
        plain, fw = statistics.median(self.plain_pass_ms), statistics.median(self.framework_pass_ms)
        return (f"| {self.label} | {len(d)} | {plain:.2f} | {fw:.2f} | {min(d):+.2f} / {statistics.median(d):+.2f} / "
                f"{max(d):+.2f} | {100 * statistics.median(d) / plain:+.1f}% |")


HEADER = ("| batch | minibatches | fwd ms | bwd ms | fwd+bwd ms | step ms | median fwd / bwd ms | samples/s | "
          "audio s/s | epoch s | padding % | peak mem GB |\n" + "| --- " * 12 + "|")
OVERHEAD_HEADER = ("| batch | passes | plain ms/step | framework ms/step | framework - plain, ms/step: min / median / max "
                   "| median % |\n" + "| --- " * 6 + "|")


def measure(cfg: DictConfig, dataset: DeepMarkDataset, batch_size: int, batching: str, max_batches: int | None,
            repeats: int, compare: bool, compile_backend: str | None = None) -> Result:
    """One configuration's figures; ``compile_backend`` runs the model through torch.compile."""
    device = resolve_device(cfg.trainer.device)
    # as a run sets it (trainer.tf32), and unset again for the configurations after a TF32 one
    torch.backends.cuda.matmul.allow_tf32 = bool(cfg.trainer.tf32)
    if batching == "equal":
        index_batches = equal_length_batches(dataset, batch_size)
    else:
        index_batches = list(make_sampler(cfg.batching, dataset.lengths, cfg.seed))
    stats = batch_stats(index_batches, dataset.lengths)
    timed_batches, weights = sample_per_class(index_batches, dataset.lengths, max_batches)
    maker = BatchMaker(dataset, device)
    batches = Batches(maker, timed_batches)
    warm = Batches(maker, heaviest(index_batches, dataset.lengths))
    n = len(timed_batches)
    passes = repeats * (3 if compare else 1) + (1 if compile_backend else 0)
    steps = len(warm) * 2 + n * passes

    with tempfile.TemporaryDirectory() as tmp:
        brain = DeepMarkBrain(cfg, f"{tmp}/framework", compile_backend)
        brain.setup(None)
        brain.plan_schedule(math.ceil(steps / brain.options.max_epochs))  # at least every step both loops take
        plain = PlainLoop(cfg, brain.model, brain.optimizer, brain.optimization.scheduler, brain.precision, f"{tmp}/plain")
        plain.run(warm, device)
        if compile_backend:  # compile for every shape before timing
            plain.run(batches, device)
        free_memory(device)
        per_pass: list[list[tuple[float, float, float]]] = []
        for _ in range(repeats):
            per_pass.append([])
            plain.run(batches, device, per_pass[-1])
        peak = peak_memory_bytes(device) / 2**30

        plain_ms, fw_ms = [], []
        if compare:
            brain.train_pass(warm)
            for _ in range(repeats):  # interleaved, so drift affects both alike
                t0 = time.perf_counter()
                plain.run(batches, device)
                plain_ms.append(1e3 * (time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                brain.train_pass(batches)
                sync(device)
                fw_ms.append(1e3 * (time.perf_counter() - t0) / n)
        brain.logger.close()
        plain.close()

    # per minibatch: the median over the timed passes; then epoch means weighted by audio
    fwd, bwd, rest = (np.median([[t[k] for t in p] for p in per_pass], axis=0) * 1e3 for k in range(3))
    w = np.asarray(weights)
    m = stats["num_batches"]  # a weighted sum is the epoch's total; over the epoch's minibatches, its mean
    return Result(
        label=str(batch_size) if batching == "equal" else f"dynamic, {stats['mean_batch_size']:.1f} (mean)",
        minibatches=stats["num_batches"],
        timed=n,
        utterances=int(len(dataset)),
        audio_s=float(dataset.lengths.sum()),
        fwd_ms=float((w * fwd).sum() / m),
        bwd_ms=float((w * bwd).sum() / m),
        step_ms=float((w * (fwd + bwd + rest)).sum() / m),
        fwd_median_ms=float(np.median(fwd)),
        bwd_median_ms=float(np.median(bwd)),
        padding=stats["padding_fraction"],
        peak_mem_gb=peak,
        plain_pass_ms=plain_ms,
        framework_pass_ms=fw_ms,
    )


def describe(cfg: DictConfig, dataset: DeepMarkDataset, batching: str, max_batches: int | None) -> str:
    device = resolve_device(cfg.trainer.device)
    probe = instantiate(cfg.model, num_bins=NUM_BINS, num_classes=len(ALPHABET) + 1)
    m = cfg.model
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    clip = m.get("clip_recurrence", True) and m.rnn_type == "rnn"
    return (
        f"DeepSpeech2 ({count_parameters(probe) / 1e6:.1f} M parameters, rnn={m.rnn_type}"
        f"{', clipped recurrence' if clip else ''}, hidden={m.hidden_size}, layers={m.num_layers}) on {name}, "
        f"precision {cfg.trainer.precision}{', TF32' if cfg.trainer.tf32 else ''}; DeepMark scale {cfg.dataset.scale}: "
        f"{len(dataset)} utterances, {dataset.lengths.sum() / 3600:.2f} h; batching "
        f"{batching if batching == 'equal' else cfg.batching._target_.rsplit('.', 1)[-1]}"
        + (f"; about {max_batches} minibatches timed, spread over the length classes, extrapolated to the epoch "
           "by audio seconds" if max_batches else "")
        + f".\nOn in both loops: clipping at {cfg.trainer.max_grad_norm}, "
        f"{cfg.scheduler._target_.rsplit('.', 1)[-1] if cfg.get('scheduler') else 'no'} schedule stepped per step, "
        + (f"TensorBoard every {cfg.logger.log_every_n_steps} steps" if cfg.logger.tensorboard else "no TensorBoard")
        + f"; optimizer {cfg.optimizer._target_.rsplit('.', 1)[-1]}, lr {cfg.optimizer.lr:g}."
    )


def main(overrides: list[str], batch_sizes: list[int], batching: str = "equal", max_batches: int | None = None,
         repeats: int = 3, compare: bool = True) -> list[Result]:
    logging.getLogger("framework.brain").setLevel(logging.WARNING)  # the table is the output
    cfg = ds2_config(overrides)
    set_num_threads(trainer_options(cfg.trainer).num_threads)  # as the Brain will: both loops run alike
    dataset = instantiate(cfg.dataset.train)
    device = resolve_device(cfg.trainer.device)
    print(describe(cfg, dataset, batching, max_batches))
    print("\nMeans per minibatch over the epoch (the DeepMark measurement); medians of the timed minibatches beside.\n")
    print(HEADER, flush=True)
    results = []
    for bs in batch_sizes if batching == "equal" else batch_sizes[:1]:
        result = measure(cfg, dataset, bs, batching, max_batches, repeats, compare)
        print(result.row(), flush=True)
        results.append(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(results) > 1:
        best = max(results, key=lambda r: r.audio_per_s)
        print(f"\nfastest: batch size {best.label} ({best.audio_per_s:.1f} s of audio per second)")
    if compare:
        print(f"\nFramework overhead: the plain loop and the Brain's loop over the same minibatches, {repeats} "
              "interleaved passes each; per pass, wall time per step.\n")
        print(OVERHEAD_HEADER)
        for r in results:
            print(r.overhead_row(), flush=True)
    return results
