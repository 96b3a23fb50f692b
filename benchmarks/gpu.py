"""``python -m benchmarks gpu --out DIR``: every GPU path of the framework in one command,
within a time budget, writing ``DIR/report.md``, ``DIR/report.json`` and ``DIR/gpu.log``.

Sections, each in its own process with its own time limit (a crash, hang or out-of-memory
in one leaves the others and the report intact; the report is rewritten after each):

  env         versions, the GPU, a bf16 matmul rate, an NCCL all-reduce
  ds2         full DeepSpeech2 (DeepMark spec, cuDNN's fused RNN) on DeepMark: fp32, TF32, bf16
              and fp16 x batch sizes; the spec's clipped recurrence at the best one; the
              framework's overhead against a plain loop
  memory      the classic memory tips at one fixed batch: peak memory and step time
  tune_batch  the batch-budget finder against the GPU's memory and against a set limit
  oom         an out-of-memory batch on purpose: skipped, and training goes on
  precision   the ASR recipe trained in fp32, bf16 and fp16: test CER side by side
  loader      data-wait fraction of training steps: HDF5 features vs per-file FLAC with
              features on the device, 0/2/4/8 workers, pin_memory on and off
  compile     torch.compile on and off at the best ds2 configuration

``--toy`` runs every section on the CPU at toy scale (what the tests do); CUDA-only rows
(TF32, fp16, 8-bit AdamW) say so instead of running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import ROOT, child_env, compose, free_memory, run_training, sync, training_loader
from benchmarks.ds2 import OVERHEAD_HEADER, Batches, BatchMaker, DeepMarkBrain, ds2_config, measure

# (name, seconds at full scale); the order is the order of value, compile (the riskiest) last
# compile at full scale: inductor compiles once per minibatch shape (about 30 s each on an H200 host)
SECTIONS = [("env", 25), ("ds2", 150), ("memory", 50), ("tune_batch", 50), ("oom", 25), ("precision", 110),
            ("loader", 80), ("compile", 240)]
TOY_SECONDS = 120  # per section at toy scale

# DS2 as the benchmark uses it: full spec with cuDNN's fused RNN (the spec's clip inside the
# recurrence is a step loop; one row measures it).
# Batches per precision: on an H200 the half-precision step is latency-bound up to 256 (113 ms
# at 32, 141 ms at 256), so its sweep reaches 1,024 (the batch-budget finder fits 1,184 x 15 s).
FULL = {"model": ["model=ds2", "++model.clip_recurrence=false"], "scale": 0.2,
        "batches": {"bf16": [64, 256, 512, 1024], "fp16": [256, 512, 1024], "tf32": [64, 256], "fp32": [32, 256]},
        "precisions": ["bf16", "fp16", "tf32", "fp32"], "max_batches": 16, "memory_batch": 32}
TOY = {"model": ["model=ds2", "model.hidden_size=16", "model.num_layers=1", "model.fc_size=16",
                 "model.conv_channels=[4,4]", "model.conv_strides=[[2,2],[1,3]]", "++model.clip_recurrence=false"],
       "scale": 0.0003, "batches": {p: [2, 4] for p in ("bf16", "fp16", "tf32", "fp32")}, "precisions": ["bf16", "fp16", "tf32", "fp32"], "max_batches": 4,
       "memory_batch": 4}
TINY_ASR = ["model.hidden_size=32", "model.num_layers=1", "model.fc_size=32", "model.conv_channels=[4,4]",
            "trainer.max_epochs=2", "batching.max_batch_length=20"]


class Section:
    """Rows and notes of one section, saved as JSON after every row (a timeout keeps them)."""

    def __init__(self, name: str, work: Path, toy: bool, deadline: float) -> None:
        self.name, self.work, self.toy, self.deadline = name, work, toy, deadline
        self.device = torch.device("cpu") if toy else torch.device("cuda", 0)  # memory caps need an index
        self.scale = TOY if toy else FULL
        self.tables: dict[str, dict] = {}
        self.notes: list[str] = []
        self.data: dict = {}

    def left(self) -> float:
        return self.deadline - time.time()

    def table(self, key: str, header: list[str]) -> None:
        self.tables[key] = {"header": header, "rows": []}

    def row(self, key: str, *cells) -> None:
        self.tables[key]["rows"].append([c if isinstance(c, str) else f"{c:.4g}" if isinstance(c, float) else str(c)
                                         for c in cells])
        print(f"[{self.name}] {' | '.join(self.tables[key]['rows'][-1])}", flush=True)
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.name}] {text}", flush=True)
        self.save()

    def save(self) -> None:
        tmp = self.work / f"{self.name}.json.tmp"
        tmp.write_text(json.dumps({"tables": self.tables, "notes": self.notes, "data": self.data}, default=str))
        tmp.replace(self.work / f"{self.name}.json")


def precision_overrides(name: str) -> list[str]:
    return ["trainer.precision=fp32", "trainer.tf32=true"] if name == "tf32" else [f"trainer.precision={name}"]


def cuda_only(s: Section, what: str) -> bool:
    """True (and a note) when ``what`` cannot run on this device."""
    if s.device.type != "cuda":
        s.note(f"{what}: CUDA only, not run on the CPU")
        return True
    return False


def gib(n: float) -> float:
    return n / 2**30


# ------------------------------------------------------------------------------ sections
def section_env(s: Section) -> None:
    import importlib.metadata as md

    s.table("env", ["what", "value"])
    s.row("env", "python", platform.python_version())
    s.row("env", "torch", torch.__version__)
    s.row("env", "CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        s.row("env", "device", f"{p.name}, {gib(p.total_memory):.1f} GiB, {p.multi_processor_count} SMs, "
                               f"capability {p.major}.{p.minor}")
    s.row("env", "CPU cores", str(os.cpu_count()))
    for pkg in ("torchaudio", "hydra-core", "omegaconf", "soundfile", "h5py", "tensorboard", "bitsandbytes"):
        try:
            s.row("env", pkg, md.version(pkg))
        except md.PackageNotFoundError:
            s.row("env", pkg, "not installed")
    n = 512 if s.toy else 8192
    a = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ a
    sync(s.device)
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    sync(s.device)
    s.row("env", f"bf16 matmul {n}^3", f"{5 * 2 * n**3 / (time.perf_counter() - t0) / 1e12:.1f} TFLOP/s")
    import torch.distributed as dist

    backend = "nccl" if s.device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, store=dist.HashStore(), world_size=1, rank=0)
        x = torch.ones(4, device=s.device)
        dist.all_reduce(x)
        sync(s.device)
        s.row("env", f"{backend} all-reduce (1 rank)", "ok" if x.sum().item() == 4 else f"wrong result {x.tolist()}")
        dist.destroy_process_group()
    except Exception as exc:  # report, keep going
        s.row("env", f"{backend} all-reduce (1 rank)", f"failed: {exc!r}"[:200])


def ds2_cfg(s: Section, precision: str, extra: list[str] = ()):
    return ds2_config([*s.scale["model"], f"dataset.scale={s.scale['scale']}", f"trainer.device={s.device.type}",
                       *precision_overrides(precision), *extra])


def measure_row(s: Section, key: str, cfg, dataset, label: str, batch: int, **kw):
    from framework.brain import NonFiniteLossError

    try:
        r = measure(cfg, dataset, batch, "equal", s.scale["max_batches"], repeats=kw.pop("repeats", 1),
                    compare=kw.pop("compare", False), **kw)
    except torch.OutOfMemoryError:
        s.row(key, label, batch, "out of memory", "", "", "", "", "", "", "")
        free_memory(s.device)
        return None
    except NonFiniteLossError as exc:
        s.row(key, label, batch, f"diverged: {exc}"[:120], "", "", "", "", "", "", "")
        return None
    s.row(key, label, batch, f"{r.timed}/{r.minibatches}", r.fwd_ms, r.bwd_ms, r.step_ms, r.samples_per_s,
          r.audio_per_s, r.epoch_s, r.peak_mem_gb)
    free_memory(s.device)
    return r


DS2_HEADER = ["precision", "batch", "timed/minibatches", "fwd ms", "bwd ms", "step ms", "samples/s", "audio s/s",
              "epoch s", "peak mem GB"]


def section_ds2(s: Section) -> None:
    from hydra.utils import instantiate

    from framework.models import count_parameters

    logging.getLogger("framework.brain").setLevel(logging.WARNING)
    dataset = instantiate(ds2_cfg(s, "fp32").dataset.train)
    probe = instantiate(ds2_cfg(s, "fp32").model, num_bins=161, num_classes=29)
    s.note(f"DeepSpeech2 {count_parameters(probe) / 1e6:.1f} M parameters, cuDNN fused RNN "
           f"(clip_recurrence=false); DeepMark scale {s.scale['scale']}: {len(dataset)} utterances, "
           f"{dataset.lengths.sum() / 3600:.1f} h; equal-length minibatches, about {s.scale['max_batches']} timed per "
           "configuration, spread over the length classes and extrapolated to the epoch by audio seconds")
    del probe
    s.table("sweep", DS2_HEADER)
    best, best_rate = None, 0.0
    for precision in s.scale["precisions"]:
        if precision in ("tf32", "fp16") and cuda_only(s, precision):
            continue
        cfg = ds2_cfg(s, precision)
        for batch in s.scale["batches"][precision]:
            if s.left() < 20:
                s.note(f"{precision} batch {batch} and later: skipped, the section's time ran out")
                break
            r = measure_row(s, "sweep", cfg, dataset, precision, batch)
            if r is not None and r.audio_per_s > best_rate:
                best, best_rate = (precision, batch), r.audio_per_s
    if best is None:
        return
    s.data["best"] = {"precision": best[0], "batch": best[1], "audio_per_s": best_rate}
    s.note(f"fastest: {best[0]}, batch {best[1]}: {best_rate:.0f} s of audio per second")
    if s.left() > 30:
        s.table("spec", DS2_HEADER)
        cfg = ds2_cfg(s, best[0], ["++model.clip_recurrence=true"])
        measure_row(s, "spec", cfg, dataset, f"{best[0]}, clipped recurrence (spec)", best[1])
    if s.left() > 30:
        r = measure_row(s, "sweep", ds2_cfg(s, best[0]), dataset, f"{best[0]} (overhead run)", best[1], repeats=2,
                        compare=True)
        if r is not None:
            s.data["overhead"] = r.overhead_row()
            s.note("framework overhead (clipping, OneCycle, TensorBoard on in both loops):\n\n" + OVERHEAD_HEADER + "\n"
                   + r.overhead_row())


def section_compile(s: Section) -> None:
    from hydra.utils import instantiate

    best = json.loads((s.work / "ds2.json").read_text())["data"].get("best") if (s.work / "ds2.json").exists() else None
    # the fastest ds2 configuration; run alone, bf16 at its largest batch
    precision = best["precision"] if best else ("fp32" if s.toy else "bf16")
    batch = best["batch"] if best else s.scale["batches"][precision][-1]
    backend = "eager" if s.toy else "inductor"  # the CPU test checks the path, not the code generator
    dataset = instantiate(ds2_cfg(s, precision).dataset.train)
    s.table("compile", DS2_HEADER[:1] + ["compile"] + DS2_HEADER[1:])
    for compiled in (None, backend):
        t0 = time.perf_counter()
        try:
            r = measure(ds2_cfg(s, precision), dataset, batch, "equal", s.scale["max_batches"], repeats=1, compare=False,
                        compile_backend=compiled)
        except torch.OutOfMemoryError:
            s.row("compile", precision, compiled or "off", batch, "out of memory", "", "", "", "", "", "", "")
            continue
        s.row("compile", precision, compiled or "off", batch, f"{r.timed}/{r.minibatches}", r.fwd_ms, r.bwd_ms, r.step_ms,
              r.samples_per_s, r.audio_per_s, r.epoch_s, r.peak_mem_gb)
        s.note(f"compile={compiled or 'off'}: {time.perf_counter() - t0:.0f} s for the whole measurement "
               "(compilation included)")
        free_memory(s.device)


def deepmark_brain(s: Section, overrides: list[str], tmp: str):
    """A DeepMarkBrain on a fresh model (same seed each time) with what the overrides
    configure (optimizer, precision, memory settings)."""
    cfg = ds2_cfg(s, "fp32", overrides)
    brain = DeepMarkBrain(cfg, tmp)
    brain.setup(None)
    return cfg, brain


def step_peak(brain, batches, steps: int) -> tuple[float, float]:
    """(ms per optimizer step, peak bytes) over ``steps`` passes of ``batches`` after a warm
    one; the peak measured as the batch-budget finder measures it."""
    from framework.tune_batch import train_peak

    brain.train_pass(batches)
    sync(brain.device)
    free_memory(brain.device)
    start_step = brain.step
    t0 = time.perf_counter()
    peak = train_peak(brain, lambda: brain.train_pass(batches), steps)
    elapsed = time.perf_counter() - t0
    return 1e3 * elapsed / max(1, brain.step - start_step), peak


def section_memory(s: Section) -> None:
    from hydra.utils import instantiate

    logging.getLogger("framework.brain").setLevel(logging.WARNING)
    n = s.scale["memory_batch"]
    dataset = instantiate(ds2_cfg(s, "fp32").dataset.train)
    ids = (dataset.classes == dataset.classes.max()).nonzero()[0]
    longest = [int(ids[i % len(ids)]) for i in range(n)]
    maker = BatchMaker(dataset, s.device)
    whole, halves = Batches(maker, [longest]), Batches(maker, [longest[: n // 2], longest[n // 2:]])
    measured = ("peak CUDA memory allocated" if not s.toy else
                "CPU estimate: parameters + gradients + optimizer state + activations saved for backward")
    s.note(f"one batch of {len(longest)} utterances of {dataset.lengths[longest[0]]:g} s (the longest class); "
           f"fp32 unless the row says otherwise; {measured}; step time over 3 steps after a warm one")
    s.table("memory", ["configuration", "peak memory GB", "vs baseline", "step ms"])
    rows = [("baseline", [], whole), ("activation checkpointing of the RNN stack", ["trainer.activation_checkpointing=[rnns]"], whole),
            (f"gradient accumulation 2 x {n // 2}", ["trainer.grad_accumulation=2"], halves),
            ("bf16", ["trainer.precision=bf16"], whole), ("fp16", ["trainer.precision=fp16"], whole),
            ("8-bit AdamW (bitsandbytes)", ["optimizer=adamw8bit"], whole)]
    base = None
    for label, overrides, batches in rows:
        if label in ("fp16", "8-bit AdamW (bitsandbytes)") and cuda_only(s, label):
            continue
        if s.left() < 10:
            s.note(f"{label} and later: skipped, the section's time ran out")
            break
        with tempfile.TemporaryDirectory() as tmp:
            try:
                _, brain = deepmark_brain(s, overrides, tmp)
                ms, peak = step_peak(brain, batches, steps=3)
            except (ImportError, ValueError, RuntimeError) as exc:  # bitsandbytes missing or failing
                s.row("memory", label, f"not run: {exc}"[:160], "", "")
                free_memory(s.device)
                continue
            finally:
                with contextlib.suppress(NameError):
                    brain.logger.close()
                    del brain
        base = base or peak
        s.row("memory", label, gib(peak), f"{peak / base:.2f}x", ms)
        free_memory(s.device)


def section_tune_batch(s: Section) -> None:
    from hydra.utils import instantiate

    from framework.data.collate import collate
    from framework.tune_batch import WorstCaseBatches, find_largest, make_probe, train_once

    logging.getLogger("framework.brain").setLevel(logging.WARNING)
    precision = "fp32" if s.toy else "bf16"
    s.table("finder", ["limit", "safety", "max_batch_length s", "examples of the longest", "peak GB", "probes", "seconds"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg, brain = deepmark_brain(s, [*precision_overrides(precision), "trainer.skip_oom=false"], tmp)
        dataset = instantiate(cfg.dataset.train)
        batches = WorstCaseBatches(dataset, collate)
        if s.device.type == "cuda":
            total = torch.cuda.get_device_properties(s.device).total_memory
            limits = [("the GPU's memory", total, False), ("16 GB, enforced", 16 * 10**9, True)]
        else:
            limits = [("toy fake limit 40 MB", 40 * 10**6, None)]
        s.note(f"DeepSpeech2 as in ds2, {precision}, worst case: batches of the longest ({batches.longest:g} s) "
               "utterances; one training step per probe after a warm one (optimizer state allocated)")
        train_once(brain, [batches(1)])
        for label, limit, enforce in limits:
            if s.left() < 15:
                s.note(f"{label}: skipped, the section's time ran out")
                continue
            if enforce:
                torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), s.device)
            t0 = time.perf_counter()
            probe = make_probe(brain, batches, 1, limit if enforce is None else None)
            n, peak, probes = find_largest(probe, 0.9 * limit, start=1 if s.toy else 8)
            s.row("finder", label, 0.9, n * batches.longest, n, gib(peak), len(probes), time.perf_counter() - t0)
            s.data.setdefault("probes", {})[label] = probes
            if enforce:
                torch.cuda.set_per_process_memory_fraction(1.0, s.device)
            free_memory(s.device)
        brain.logger.close()


def section_oom(s: Section) -> None:
    logging.getLogger("framework.brain").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, brain = deepmark_brain(s, ["trainer.skip_oom=true"], tmp)
        from hydra.utils import instantiate

        dataset = instantiate(cfg.dataset.train)
        longest = (dataset.classes == dataset.classes.max()).nonzero()[0].tolist()
        small = [int(i) for i in (dataset.classes == 4).nonzero()[0][:4]]
        huge_n = 8 if s.toy else 1024
        huge = [int(longest[i % len(longest)]) for i in range(huge_n)]
        maker = BatchMaker(dataset, s.device)
        hook = None
        if s.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(0.25, s.device)  # out of memory sooner and surely
            how = f"a batch of {huge_n} x {dataset.lengths[huge[0]]:g} s under a 25% memory cap"
        else:
            def fake_oom(module, args):
                if args[0].shape[0] >= huge_n:
                    raise torch.OutOfMemoryError("fake: the toy run's stand-in for CUDA running out of memory")

            hook = brain.module.register_forward_pre_hook(fake_oom)
            how = f"a batch of {huge_n} raising torch.OutOfMemoryError (CPU stand-in)"
        try:
            loss = brain.train_pass(Batches(maker, [small, huge, small]))
            s.table("oom", ["provoked", "steps taken", "batches skipped", "loss after", "went on"])
            s.row("oom", how, brain.step, brain.skips.oom_steps, loss,
                  "yes" if brain.step == 2 and brain.skips.oom_steps == 1 else "NO")
        finally:
            if hook is not None:
                hook.remove()
            if s.device.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0, s.device)
            brain.logger.close()


def section_precision(s: Section) -> None:
    tolerance = 0.05
    with tempfile.TemporaryDirectory() as tmp:
        if s.toy:
            base = ["dataset=tones", f"dataset.root={tmp}/tones", "dataset.prepare.splits={train:48,valid:16,test:16}",
                    *TINY_ASR, "trainer.device=cpu"]
        else:
            base = ["experiment=asr_speech", "trainer.device=cuda"]
        s.note(f"the ASR recipe ({' '.join(base)}); fp16 and bf16 reach fp32 when |test CER - fp32's| <= {tolerance}")
        s.table("precision", ["precision", "test CER", "valid CER", "vs fp32", "within tolerance", "run s"])
        ref = None
        for precision in ("fp32", "bf16", "fp16"):
            if precision == "fp16" and cuda_only(s, "fp16 training"):
                continue
            if s.left() < 20:
                s.note(f"{precision}: skipped, the section's time ran out")
                continue
            try:
                result, usage = run_training([*base, f"trainer.precision={precision}"], Path(tmp) / precision,
                                             timeout=s.left() - 5)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                s.row("precision", precision, f"failed: {exc}"[:300], "", "", "", "")
                continue
            m = result["metrics"]
            ref = m["test_cer"] if ref is None else ref
            diff = m["test_cer"] - ref
            s.row("precision", precision, m["test_cer"], m["valid_cer"], f"{diff:+.3f}",
                  "yes" if abs(diff) <= tolerance else "NO", usage.wall_s)


def section_loader(s: Section) -> None:
    from benchmarks.loader import build
    from framework.data.hdf5 import HDF5Dataset
    from framework.data.manifest import ManifestDataset
    from framework.run_dir import open_brain

    logging.getLogger("framework.brain").setLevel(logging.WARNING)
    logging.getLogger("recipes").setLevel(logging.WARNING)
    utterances, workers = (48, (0, 2)) if s.toy else (1200, (0, 2, 4, 8))
    root = Path(tempfile.mkdtemp(prefix="gpu-loader-"))
    t0 = time.perf_counter()
    paths = build(root, utterances)
    s.note(f"tones corpus of {utterances} utterances built in {time.perf_counter() - t0:.0f} s; ds2_small, batches of "
           "up to 60 s; one warm epoch, then one timed; data wait = time in next(loader) / epoch time")
    sources: dict[str, Callable[[], object]] = {
        "HDF5 fbank": lambda: HDF5Dataset(paths["features"]),
        "per-file FLAC, fbank on the device": lambda: ManifestDataset(paths["manifest"], data_root=str(paths["flac_dir"])),
    }
    s.table("loader", ["source", "workers", "pin_memory", "data wait %", "step ms", "utterances/s"])
    plan = [(name, w, True) for name in sources for w in workers]
    if s.device.type == "cuda":
        plan.insert(1, ("HDF5 fbank", 4, False))
    for name, w, pin in plan:
        if s.left() < 15:
            s.note(f"{name}, {w} workers and later: skipped, the section's time ran out")
            break
        cfg = compose([f"trainer.device={s.device.type}", f"trainer.num_workers={w}", "logger.tensorboard=false"])
        with tempfile.TemporaryDirectory() as tmp:
            brain = open_brain(cfg, "loader", tmp)
            dataset = sources[name]()
            brain.setup(dataset)
            loader = training_loader(cfg, dataset, brain.features, pin_memory=pin and s.device.type == "cuda")
            brain.train_pass(loader)  # warm: workers start, allocator settles
            loader.batch_sampler.set_epoch(1)
            sync(s.device)
            t0 = time.perf_counter()
            brain.train_pass(loader, 1)
            sync(s.device)
            elapsed = time.perf_counter() - t0
            s.row("loader", name, w, "on" if loader.pin_memory else "off", 100 * brain.meter.wait_s / elapsed,
                  1e3 * elapsed / len(loader), len(dataset) / elapsed)
            brain.logger.close()
            del loader, brain


SECTION_FUNCS: dict[str, Callable[[Section], None]] = {
    "env": section_env, "ds2": section_ds2, "memory": section_memory, "tune_batch": section_tune_batch,
    "oom": section_oom, "precision": section_precision, "loader": section_loader, "compile": section_compile,
}


# --------------------------------------------------------------------------- the report
def markdown(report: dict) -> str:
    meta = report["meta"]
    out = [f"# GPU check: {meta['device']}", "",
           f"`{meta['command']}` at {meta['started']}, {'toy scale on the CPU' if meta['toy'] else 'full scale'}, "
           f"budget {meta['budget_s']:.0f} s.", ""]
    for name, sec in report["sections"].items():
        out += [f"## {name}: {sec['status']} ({sec['seconds']:.0f} s)", ""]
        result = sec.get("result") or {}
        for note in result.get("notes", []):
            out += [note, ""]
        for table in result.get("tables", {}).values():
            out.append("| " + " | ".join(table["header"]) + " |")
            out.append("| --- " * len(table["header"]) + "|")
            out += ["| " + " | ".join(r) + " |" for r in table["rows"]]
            out.append("")
        if sec.get("error"):
            out += ["```", sec["error"], "```", ""]
    return "\n".join(out)


def write_report(out: Path, report: dict) -> None:
    for name, text in (("report.json", json.dumps(report, indent=1, default=str)), ("report.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def orchestrate(out: Path, toy: bool, budget_s: float, only: list[str] | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    start = time.time()
    device = "CPU (toy scale)" if toy else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    report = {"meta": {"command": "python -m benchmarks gpu " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["gpu"]
                                                                         else sys.argv[1:]),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "toy": toy, "budget_s": budget_s,
                       "device": device},
              "sections": {}}
    if not toy and not torch.cuda.is_available():
        raise SystemExit("benchmarks gpu: no CUDA device here; use --toy to run the check on the CPU at toy scale")
    env = {**child_env(), "PYTHONUNBUFFERED": "1"}
    slack = 0.0
    with (out / "gpu.log").open("a") as log_file:
        for name, allotted in SECTIONS:
            if only and name not in only:
                continue
            allotted = TOY_SECONDS if toy else allotted
            remaining = budget_s - (time.time() - start)
            limit = min(allotted + slack, remaining)
            if limit < 10:
                report["sections"][name] = {"status": "skipped: the budget was spent", "seconds": 0.0, "result": None}
                write_report(out, report)
                continue
            t0 = time.time()
            cmd = [sys.executable, "-m", "benchmarks.gpu", "--section", name, "--work", str(work),
                   "--deadline", str(t0 + limit - 3), *(["--toy"] if toy else [])]
            log_file.write(f"\n===== {name} (limit {limit:.0f} s)\n")
            log_file.flush()
            # its own process group: at the limit the section goes with everything it started
            # (training runs, DataLoader workers), so nothing lingers on the GPU
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
            try:
                status = "ok" if proc.wait(timeout=limit) == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = f"timed out after {limit:.0f} s (rows so far kept)"
            elapsed = time.time() - t0
            result_file = work / f"{name}.json"
            entry = {"status": status, "seconds": elapsed,
                     "result": json.loads(result_file.read_text()) if result_file.exists() else None}
            error_file = work / f"{name}.error"
            if error_file.exists():
                entry["error"] = error_file.read_text()[-3000:]
            report["sections"][name] = entry
            print(f"{name}: {status} in {elapsed:.0f} s", flush=True)
            slack = max(0.0, allotted + slack - elapsed)
            write_report(out, report)
    report["meta"]["total_s"] = time.time() - start
    write_report(out, report)
    print(f"report: {out / 'report.md'}", flush=True)
    return report


def run_section(name: str, work: Path, toy: bool, deadline: float) -> int:
    torch.manual_seed(0)
    s = Section(name, work, toy, deadline)
    s.save()
    try:
        SECTION_FUNCS[name](s)
    except Exception:
        (work / f"{name}.error").write_text(traceback.format_exc())
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="folder for report.md, report.json, gpu.log")
    parser.add_argument("--toy", action="store_true", help="every section on the CPU at toy scale")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-time budget for all sections")
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(n for n, _ in SECTIONS)}")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # a child process runs one section
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return run_section(args.section, Path(args.work), args.toy, args.deadline)
    only = args.sections.split(",") if args.sections else None
    unknown = sorted(set(only or []) - set(SECTION_FUNCS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_FUNCS)}")
    orchestrate(Path(args.out).resolve(), args.toy, args.budget_s, only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
