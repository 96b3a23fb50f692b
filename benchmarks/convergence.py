"""Time to accuracy of the batching strategies: real training runs, several seeds each.

    python -m benchmarks convergence [--corpora speech,tones] [--variants fitted,fixed,...]
        [--seeds 0,1,2] [--out runs/convergence] [--jobs 1] [--report-only] [key=value ...]

Each (corpus, seed, variant) is one ``python -m framework.train`` subprocess in
``<out>/<corpus>/<variant>/seed<k>``, with one intra-op thread (``OMP_NUM_THREADS=1``) so
that ``--jobs 2`` runs share two cores fairly. A finished run is not run again (an
interrupted one is started over): the study can be stopped and continued, and
``--report-only`` rebuilds the tables from what is there. Runs go seed by seed, every
variant of a seed back to back, so machine load hits the variants alike. Extra
``key=value`` overrides go to every run.

On a machine shared with other work, wall times swing several-fold with the load, so
time is measured as two factors. Convergence: the epochs each run took to reach a target.
Cost: the CPU seconds of one training epoch of each variant, measured afterwards in one
process on one model (the Brain's own training pass) with the variants interleaved, three
rounds, median (saved in ``<out>/<corpus>/epoch-cpu.json``). Time to a target = epochs x
epoch cost; the seeds' spread is then the spread of convergence, not of the load. The runs'
own epoch times are shown beside, in core-seconds (wall seconds times the share of a core
the run got, its CPU time over its wall time).

Reported per variant (mean ± standard deviation over seeds): training time (validation
excluded) until the validation CER first reaches each target, with the epochs it took in
brackets ("(k/n)" when only k of n seeds reach it), the best validation CER and the time to
it, the test CER of the best checkpoint, padding, optimizer steps per epoch and the epoch
time. One PNG per corpus plots validation CER against training time (mean line, min-max
band over seeds).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from benchmarks.common import Child, ChildFailed, child_env, compose, mean_sd, start_training, training_loader
from framework.data.loader import make_sampler
from framework.experiment import build_datasets, seed_everything
from framework.run_dir import open_brain


@dataclass(frozen=True)
class Corpus:
    overrides: tuple[str, ...]
    targets: tuple[float, ...]  # validation CER targets, the last one is the headline


CORPORA = {
    # 400 training utterances of espeak-ng speech, 30 epochs; the valid CER floor is about 0.25
    "speech": Corpus(("experiment=asr_speech",), (0.6, 0.5, 0.4, 0.35)),
    # 800 utterances of synthesised tones, 12 epochs; every batching is below 0.05 after 3
    # epochs, they differ in how soon they get the last few characters right
    "tones": Corpus((), (0.05, 0.02, 0.01, 0.005)),
}

# Every variant has the same budget: dynamic ones the same max_batch_length, fixed and
# sorted ones the mean batch size of "fitted" on the corpus ({batch_size}), so that they
# take as many optimizer steps per epoch.
VARIANTS = {
    "fitted": ("batching.mix_buckets=1", "batching.boundary_method=padding"),
    "wide": ("batching.mix_buckets=1", "batching.boundary_method=padding", "batching.num_buckets=3"),
    "duration": ("batching.mix_buckets=1", "batching.boundary_method=duration"),
    "mix2": ("batching.mix_buckets=2", "batching.boundary_method=padding"),
    "mix3": ("batching.mix_buckets=3", "batching.boundary_method=padding"),
    "sorted": ("batching=sorted", "batching.batch_size={batch_size}"),
    "fixed": ("batching=fixed", "batching.batch_size={batch_size}"),
}
DESCRIPTIONS = {
    "fitted": "dynamic, 20 buckets fitted to minimise padding",
    "wide": "dynamic, 3 fitted buckets",
    "duration": "dynamic, 20 equal-duration buckets (lhotse's boundaries)",
    "mix2": "dynamic, 20 fitted buckets, batches from bands of 2 neighbouring buckets",
    "mix3": "dynamic, 20 fitted buckets, batches from bands of 3 neighbouring buckets",
    "sorted": "sorted by length, batch order shuffled",
    "fixed": "fixed size, random",
}


def default_batch_size(corpus_overrides: list[str], overrides: list[str]) -> int:
    """Mean batch size of the batching these overrides configure on the corpus' training set.
    The command line is checked here first, so a typo stops the study before any run."""
    cfg = compose([*corpus_overrides, *overrides])
    train = build_datasets(cfg)["train"]
    return max(1, round(len(train) / len(make_sampler(cfg.batching, train.lengths, cfg.seed))))


@dataclass
class Job:
    corpus: str
    variant: str
    seed: int
    run_dir: Path
    args: list[str]

    def done(self) -> bool:
        return (self.run_dir / "bench-cpu.json").is_file()


def variant_overrides(corpus: str, variants: list[str], overrides: list[str]) -> dict[str, list[str]]:
    """Each variant's config overrides on the corpus, the user's ``overrides`` included."""
    base = list(CORPORA[corpus].overrides)
    batch_size = None
    if any("{batch_size}" in t for v in variants for t in VARIANTS[v]):
        batch_size = default_batch_size(base, [*VARIANTS["fitted"], *overrides])
    result = {}
    for variant in variants:
        own = [t.format(batch_size=batch_size) for t in VARIANTS[variant]]
        # another batching group has other keys; its batch size already follows the budget
        other_group = any(t.startswith("batching=") for t in own)
        result[variant] = [*base, *own, *(o for o in overrides if not (other_group and o.startswith("batching.")))]
    return result


def plan(out: Path, corpora: list[str], variants: list[str], seeds: list[int], overrides: list[str]) -> list[Job]:
    jobs = []
    for corpus in corpora:
        args = variant_overrides(corpus, variants, overrides)
        for seed in seeds:
            for variant in variants:
                run_dir = out / corpus / variant / f"seed{seed}"
                jobs.append(Job(corpus, variant, seed, run_dir, [*args[variant], f"seed={seed}"]))
    return jobs


def epoch_costs(corpus: str, variants: list[str], overrides: list[str], threads: int, rounds: int = 3) -> dict:
    """CPU seconds of one training epoch per variant, all measured in this process on one
    model with the variants interleaved (median of ``rounds``): what the variants cost,
    without the load drifting between separate runs. The variants differ in their batching
    only: one Brain trains, each variant's training loader feeds it."""
    own = ["logger.tensorboard=false", f"trainer.num_threads={threads}"]
    cfgs = {v: compose([*args, *own]) for v, args in variant_overrides(corpus, variants, overrides).items()}
    cfg = cfgs[variants[0]]
    seed_everything(cfg.seed)
    train = build_datasets(cfg)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        brain = open_brain(cfg, "epoch-cost", tmp)
        brain.setup(train)
        loaders = {v: training_loader(variant_cfg, train, brain.features) for v, variant_cfg in cfgs.items()}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(rounds + 1):  # round 0 warms up
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                loaders[v].batch_sampler.set_epoch(r)
                start = time.process_time()
                brain.train_pass(loaders[v], r)
                if r:
                    seconds[v].append(time.process_time() - start)
        brain.logger.close()
    return {v: float(np.median(t)) for v, t in seconds.items()}


def run_jobs(jobs: list[Job], parallel: int, threads: int) -> None:
    """Runs the jobs not done yet, ``parallel`` at a time, in order. Each run's CPU time
    and wall time go to ``bench-cpu.json`` beside its metrics."""
    env = child_env(threads)
    todo = [j for j in jobs if not j.done()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs cached; {len(todo)} to run, {parallel} at a time", flush=True)
    running: list[tuple[Job, Child]] = []
    while todo or running:
        while todo and len(running) < parallel:
            job = todo.pop(0)
            if job.run_dir.exists():  # an interrupted run: its timing cannot be continued
                shutil.rmtree(job.run_dir)
            running.append((job, start_training(job.args, job.run_dir, env)))
        time.sleep(0.1)
        for job, child in list(running):
            name = f"{job.corpus}/{job.variant}/seed{job.seed}"
            try:
                usage = child.poll()
            except ChildFailed as exc:
                running.remove((job, child))
                print(f"{name} FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            if usage is not None:
                running.remove((job, child))
                (job.run_dir / "bench-cpu.json").write_text(json.dumps({"cpu_s": usage.cpu_s, "wall_s": usage.wall_s}))
                print(f"{datetime.now():%H:%M:%S} {name}: {usage.wall_s:.0f} s ({usage.cpu_s / usage.wall_s:.0%} of a "
                      "core)", flush=True)


# --------------------------------------------------------------------------- results
def load_run(run_dir: Path) -> dict | None:
    """A finished run's metrics and history, its times in core-seconds: wall seconds times
    the share of a core the run got (its CPU time / wall time). On a shared machine that is
    about the time the run takes on a core of its own, whatever else was running."""
    if not (run_dir / "bench-cpu.json").is_file():
        return None
    result = json.loads((run_dir / "metrics.json").read_text())
    usage = json.loads((run_dir / "bench-cpu.json").read_text())
    share = usage["cpu_s"] / usage["wall_s"]
    history = result["history"]  # per epoch, written by the Brain
    history = [{**h, **{k: h[k] * share for k in ("train_s", "epoch_s", "elapsed_s") if k in h}} for h in history]
    return {"metrics": result["metrics"], "history": history, "share": share}


def epochs_to(history: list[dict], target: float) -> int | None:
    """Epochs until the validation CER first reaches ``target``."""
    for h in history:
        if h["valid_cer"] <= target:
            return h["epoch"]
    return None


def summarise(runs: list[dict], targets: tuple[float, ...], epoch_cpu_s: float | None = None) -> dict[str, object]:
    """One variant's row. Times are epochs times the variant's epoch time: ``epoch_cpu_s``
    when measured, else the median epoch time over all its runs."""
    hist = [r["history"] for r in runs]
    run_epoch_s = float(np.median([h["epoch_s"] for hs in hist for h in hs]))
    epoch_s = epoch_cpu_s or run_epoch_s
    row: dict[str, object] = {
        "seeds": len(runs),
        "run_epoch_s": run_epoch_s,
        "padding": 100 * float(np.mean([h["padding_fraction"] for hs in hist for h in hs])),
        "steps": float(np.mean([h["steps"] for hs in hist for h in hs])),
        "epoch_s": epoch_s,
        "test_cer": [r["metrics"]["test_cer"] for r in runs],
        "best": [min(h["valid_cer"] for h in hs) for hs in hist],
        "time_to_best": [epoch_s * epochs_to(hs, min(h["valid_cer"] for h in hs)) for hs in hist],
        "share": float(np.mean([r["share"] for r in runs])),
    }
    for t in targets:
        reached = [e for e in (epochs_to(hs, t) for hs in hist) if e is not None]
        row[t] = ([epoch_s * e for e in reached], reached)
    return row


def table(rows: dict[str, dict], targets: tuple[float, ...]) -> str:
    head = ["variant", "padding %", "steps/epoch", "epoch s", "epoch s in runs"]
    head += [f"s to CER ≤ {t:g} (epochs)" for t in targets]
    head += ["best valid CER", "s to best", "test CER", "test CER min-max", "core share"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in rows.items():
        cells = [name, f"{row['padding']:.1f}", f"{row['steps']:.0f}", f"{row['epoch_s']:.2f}",
                 f"{row['run_epoch_s']:.2f}"]
        for t in targets:
            secs, epochs = row[t]
            if not secs:
                cells.append(f"- (0/{row['seeds']})")
                continue
            cell = f"{mean_sd(secs)} ({np.mean(epochs):.1f})"
            if len(secs) < row["seeds"]:
                cell += f" ({len(secs)}/{row['seeds']})"
            cells.append(cell)
        tests = row["test_cer"]
        cells += [mean_sd(row["best"], 3), mean_sd(row["time_to_best"]), mean_sd(tests, 4),
                  f"{min(tests):.4f}-{max(tests):.4f}", f"{row['share']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fastest(rows: dict[str, dict], target: float) -> str | None:
    """The variant with the least mean time to ``target`` among those whose seeds all reach it."""
    full = {name: np.mean(row[target][0]) for name, row in rows.items() if len(row[target][0]) == row["seeds"]}
    return min(full, key=full.get) if full else None


def plot(curves: dict[str, tuple[float, list[list[dict]]]], title: str, path: Path) -> None:
    """Validation CER per epoch against epochs x median epoch time, per variant: the mean
    over seeds and a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, (epoch_s, hists) in curves.items():
        epochs = min(len(hs) for hs in hists)
        cer = np.array([[h["valid_cer"] for h in hs[:epochs]] for hs in hists])
        x = epoch_s * np.arange(1, epochs + 1)
        (line,) = ax.plot(x, cer.mean(axis=0), label=name)
        ax.fill_between(x, cer.min(axis=0), cer.max(axis=0), alpha=0.15, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("training time (core-seconds: epochs x median epoch time, validation excluded)")
    ax.set_ylabel("validation CER")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, corpora: list[str], variants: list[str], seeds: list[int]) -> str:
    parts = []
    for corpus in corpora:
        runs = {v: [r for s in seeds if (r := load_run(out / corpus / v / f"seed{s}")) is not None] for v in variants}
        runs = {v: rs for v, rs in runs.items() if rs}
        if not runs:
            continue
        targets = CORPORA[corpus].targets
        costs_file = out / corpus / "epoch-cpu.json"
        costs = json.loads(costs_file.read_text()) if costs_file.is_file() else {}
        rows = {v: summarise(rs, targets, costs.get(v)) for v, rs in runs.items()}
        n = {len(rs) for rs in runs.values()}
        png = out / f"convergence-{corpus}.png"
        plot({v: (rows[v]["epoch_s"], [r["history"] for r in rs]) for v, rs in runs.items()},
             f"{corpus}: validation CER vs training time ({'/'.join(map(str, sorted(n)))} seeds)", png)
        best = fastest(rows, targets[-1])
        parts.append(f"### {corpus}\n\n{table(rows, targets)}\n\n"
                     f"Fastest to valid CER ≤ {targets[-1]:g}: {best or 'none reached it on every seed'}. "
                     f"Plot: {png}\n")
    legend = "\n".join(f"- {v}: {DESCRIPTIONS[v]} (`{' '.join(VARIANTS[v])}`)" for v in variants)
    text = f"Variants:\n{legend}\n\n" + "\n".join(parts)
    (out / "convergence.md").write_text(text)
    return text


def main(corpora: list[str], variants: list[str], seeds: list[int], out: Path, parallel: int, threads: int,
         report_only: bool, overrides: list[str]) -> None:
    for name, known in (("corpus", CORPORA), ("variant", VARIANTS)):
        for item in corpora if name == "corpus" else variants:
            if item not in known:
                raise SystemExit(f"unknown {name} {item!r}; choose from {', '.join(known)}")
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        run_jobs(plan(out, corpora, variants, seeds, overrides), parallel, threads)
        for corpus in corpora:
            path = out / corpus / "epoch-cpu.json"
            known = json.loads(path.read_text()) if path.is_file() else {}
            if not set(variants) <= set(known):
                print(f"{corpus}: timing one epoch of each variant, interleaved", flush=True)
                path.write_text(json.dumps(known | epoch_costs(corpus, variants, overrides, threads), indent=1))
    print(report(out, corpora, variants, seeds))
