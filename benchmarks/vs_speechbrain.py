"""The whole training loop against SpeechBrain's: the same model, data, features, optimizer,
schedule and epochs, trained by ``framework.train`` (its defaults) and by a SpeechBrain
recipe (:mod:`benchmarks.speechbrain_recipe`), each in its own process.

    python -m benchmarks vs-speechbrain [--corpora speech,tones] [--seeds 0,1] [--threads 2]
                                        [--targets 0.2,0.1] [--out DIR] [overrides for both sides...]

Wall times on a busy machine swing with the other load; the processes' CPU seconds
(user + system, from ``wait4``) do much less, so both are reported.

Corpora: ``speech`` (the shipped espeak-ng corpus, ``experiment=asr_speech``: 30 epochs)
and ``tones`` (synthesised, the default recipe: 12 epochs). One pair of runs per seed (both
sides seeded alike), interleaved (framework first for the 1st, 3rd... seed, SpeechBrain first
for the others) with the same intra-op thread count (``OMP_NUM_THREADS`` and
``torch.set_num_threads``). Reported per side: training seconds per epoch (mean over the
epochs), whole epoch seconds (validation and checkpoint included), the process's wall time
and peak RSS, padding %, optimizer steps, the last validation CER and the test CER (best
checkpoint by validation CER, on both sides); and the time to each target validation CER:
training seconds (validation excluded) until the end of the first epoch whose validation
CER is at or below the target, mean over the seeds that reach it.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

from hydra.utils import instantiate

from benchmarks.common import Child, child_env, compose, mean_sd, run_training

CORPORA = {"speech": ["experiment=asr_speech"], "tones": ["dataset=tones"]}
SIDES = ("framework", "speechbrain")
MISSING = ("vs-speechbrain needs SpeechBrain beside the framework: pip install --target /tmp/sbpkgs --no-deps "
           "speechbrain==1.1.2 hyperpyyaml ruamel.yaml joblib cloudpickle sentencepiece huggingface_hub, then run with "
           "PYTHONPATH=.:/tmp/sbpkgs (BENCHMARKS.md has the full line)")


def speechbrain_available() -> bool:
    return importlib.util.find_spec("speechbrain") is not None


def corpus_overrides(corpus: str, data_dir: Path, extra: list[str]) -> list[str]:
    """The overrides both sides compose: the corpus' own defaults, a shared data folder, the extras."""
    overrides = list(CORPORA[corpus])
    if corpus == "tones":
        overrides.append(f"dataset.root={data_dir / 'tones'}")
    return [*overrides, *extra]


def framework_history(history: list[dict]) -> list[dict]:
    """Per epoch, from a run's metrics.json history: training seconds, whole-epoch seconds
    (validation and checkpoint included), padding, steps."""
    out, previous = [], 0.0
    for h in history:
        out.append({"train_s": h["epoch_s"], "epoch_s": h["elapsed_s"] - previous, "valid_cer": h["valid_cer"],
                    "padding_fraction": h["padding_fraction"], "steps": h["steps"]})
        previous = h["elapsed_s"]
    return out


def run_side(side: str, overrides: list[str], run_dir: Path, threads: int) -> dict:
    """One training run in a child process; its figures, wall time, CPU time and peak RSS."""
    env = child_env(threads)
    if side == "framework":
        result, usage = run_training([*overrides, f"trainer.num_threads={threads}"], run_dir, env)
        history = framework_history(result["history"])
        valid_cer, test_cer = result["metrics"]["valid_cer"], result["metrics"]["test_cer"]
    else:
        cmd = [sys.executable, "-m", "benchmarks.speechbrain_recipe", str(run_dir), str(threads), *overrides]
        usage = Child(cmd, run_dir / "stdout.txt", env, cwd=run_dir.parent).wait()
        result = json.loads((run_dir / "result.json").read_text())
        history, valid_cer, test_cer = result["history"], result["valid_cer"], result["test_cer"]
    return {
        "side": side,
        "epochs": len(history),
        "train_s_per_epoch": statistics.fmean(h["train_s"] for h in history),
        "epoch_s": statistics.fmean(h["epoch_s"] for h in history),
        "train_s": [h["train_s"] for h in history],
        "valid_cers": [h["valid_cer"] for h in history],
        "padding_fraction": statistics.fmean(h["padding_fraction"] for h in history),
        "steps": sum(h["steps"] for h in history),
        "valid_cer": valid_cer,
        "test_cer": test_cer,
        "process_s": usage.wall_s,
        "cpu_s": usage.cpu_s,
        "peak_rss_mb": usage.peak_rss_mb,
    }


HEADER = ("| corpus | run | train s/epoch: framework / SpeechBrain | ratio | epoch s with validation | ratio | "
          "process wall s | process CPU s | ratio | padding % | steps | valid CER | test CER | peak RSS MB |\n"
          + "| --- " * 14 + "|")


def _pair(a: dict, b: dict, key: str, fmt: str) -> str:
    return f"{a[key]:{fmt}} / {b[key]:{fmt}}"


def table_rows(corpus: str, runs: list[tuple[dict, dict]]) -> list[str]:
    rows = []
    means = {}
    for side in (0, 1):
        means[side] = {k: statistics.fmean(r[side][k] for r in runs) for k, v in runs[0][side].items()
                       if isinstance(v, (int, float))}  # not the side's name nor its per-epoch lists
    labelled = [(str(i + 1), fw, sb) for i, (fw, sb) in enumerate(runs)] + [("mean", means[0], means[1])]
    for label, fw, sb in labelled:
        pad = f"{100 * fw['padding_fraction']:.1f} / {100 * sb['padding_fraction']:.1f}"
        rows.append(
            f"| {corpus} | {label} | {_pair(fw, sb, 'train_s_per_epoch', '.2f')} | "
            f"{fw['train_s_per_epoch'] / sb['train_s_per_epoch']:.2f} | {_pair(fw, sb, 'epoch_s', '.2f')} | "
            f"{fw['epoch_s'] / sb['epoch_s']:.2f} | {_pair(fw, sb, 'process_s', '.1f')} | "
            f"{_pair(fw, sb, 'cpu_s', '.1f')} | {fw['cpu_s'] / sb['cpu_s']:.2f} | {pad} | "
            f"{_pair(fw, sb, 'steps', '.0f')} | {_pair(fw, sb, 'valid_cer', '.3f')} | {_pair(fw, sb, 'test_cer', '.3f')} | "
            f"{_pair(fw, sb, 'peak_rss_mb', '.0f')} |"
        )
    return rows


def time_to(run: dict, target: float) -> float | None:
    """Training seconds until the end of the first epoch whose validation CER is <= ``target``."""
    spent = 0.0
    for seconds, cer in zip(run["train_s"], run["valid_cers"]):
        spent += seconds
        if cer <= target:
            return spent
    return None


TARGET_HEADER = ("| corpus | target valid CER | framework: seconds (seeds reaching) | SpeechBrain | ratio |\n"
                 "| --- | --- | --- | --- | --- |")


def target_rows(corpus: str, runs: list[tuple[dict, dict]], targets: list[float]) -> list[str]:
    """Per target: each side's mean time to it over the seeds that reach it, and the ratio
    of the means (shown when both sides reach it on every seed)."""
    rows = []
    for target in targets:
        cells, means = [], []
        for side in (0, 1):
            times = [t for t in (time_to(r[side], target) for r in runs) if t is not None]
            cells.append(f"{mean_sd(times)} ({len(times)}/{len(runs)})")
            means.append(statistics.fmean(times) if len(times) == len(runs) else None)
        ratio = f"{means[0] / means[1]:.2f}" if None not in means else "-"
        rows.append(f"| {corpus} | {target:g} | {cells[0]} | {cells[1]} | {ratio} |")
    return rows


def main(corpora: list[str], seeds: list[int] = (0, 1), threads: int = 2, out: str | None = None,
         extra: list[str] | None = None, targets: list[float] = (0.2, 0.1)) -> dict:
    if not speechbrain_available():
        print(MISSING, file=sys.stderr)
        raise SystemExit(1)
    import speechbrain

    unknown = sorted(set(corpora) - set(CORPORA))
    if unknown:
        raise SystemExit(f"vs-speechbrain: unknown corpus {', '.join(unknown)}; choose from {', '.join(CORPORA)}")
    out_dir = Path(out or f"runs/vs-speechbrain/{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    data_dir = out_dir / "data"
    extra = list(extra or [])
    print(f"SpeechBrain {speechbrain.__version__} vs framework; {threads} intra-op thread(s) each "
          f"(OMP_NUM_THREADS, torch.set_num_threads); seeds {', '.join(map(str, seeds))}, interleaved; runs in {out_dir}"
          + (f"; extra overrides: {' '.join(extra)}" if extra else ""), flush=True)
    results: dict[str, list[tuple[dict, dict]]] = {}
    lines, target_lines = [HEADER], [TARGET_HEADER]
    for corpus in corpora:
        overrides = corpus_overrides(corpus, data_dir, extra)
        cfg = compose(overrides)
        if cfg.dataset.get("prepare") is not None:  # synthesise once, before either side runs
            instantiate(cfg.dataset.prepare)
        results[corpus] = []
        for r, seed in enumerate(seeds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            pair = {side: run_side(side, [*overrides, f"seed={seed}"], out_dir / f"{corpus}-{side}-{r + 1}-seed{seed}",
                                     threads)
                    for side in order}
            results[corpus].append((pair["framework"], pair["speechbrain"]))
            print(f"{corpus} seed {seed}: framework {pair['framework']['train_s_per_epoch']:.2f} s/epoch, "
                  f"SpeechBrain {pair['speechbrain']['train_s_per_epoch']:.2f} s/epoch", flush=True)
        lines += table_rows(corpus, results[corpus])
        target_lines += target_rows(corpus, results[corpus], list(targets))
    text = "\n".join(lines) + "\n\nTime to a validation CER (training seconds):\n\n" + "\n".join(target_lines)
    print("\n" + text)
    summary = {"threads": threads, "seeds": list(seeds), "targets": list(targets), "extra": extra,
               "speechbrain": speechbrain.__version__,
               "runs": {c: [{"framework": fw, "speechbrain": sb} for fw, sb in runs] for c, runs in results.items()}}
    (out_dir / "vs_speechbrain.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "vs_speechbrain.md").write_text(text + "\n")
    return summary
