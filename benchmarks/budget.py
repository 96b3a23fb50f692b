"""Units, models and schedules at an equal time budget on the sentence corpus: real runs,
several seeds each.

    python -m benchmarks budget [--arms char,bpe128,bpe512,transducer,char_epochs,speech,speech_epochs,tones,tones_epochs] [--seeds 0,1,2]
        [--budget 10m] [--hand-epochs N] [--jobs 2] [--out runs/budget] [--report-only] [key=value ...]

Arms (each a ``python -m framework.train`` subprocess in ``<out>/<arm>/seed<k>``, one
intra-op thread each so that ``--jobs 2`` runs share two cores fairly):

- ``char``: ``experiment=asr_sentences`` (DeepSpeech2-small CTC in characters), the
  budget as ``trainer.max_time`` with the schedule over time;
- ``bpe128`` / ``bpe512``: the same in 128 / 512 BPE pieces (``experiment=asr_sentences_bpe``);
- ``transducer``: ``experiment=asr_sentences_transducer`` (Conformer transducer, 128 pieces);
- ``char_epochs``: ``char`` planned in epochs as without a time budget: the most whole
  epochs that fit the budget at the epoch time (validation included) the ``char`` runs
  measured (``--hand-epochs`` to choose), the schedule over their steps. It runs after the
  arms it is measured from;
- ``speech`` / ``speech_epochs``: the same two plans on the shipped speech corpus
  (``experiment=asr_speech``, 400 utterances);
- ``tones`` / ``tones_epochs``: the same on the tones corpus of the default run (800
  utterances, ``ds2_small``).

After training, each run is decoded again on the test set by ``python -m framework.evaluate``
with the arm's other decoders: CTC arms by beam search with a word 3-gram of the training
transcripts (``framework.prepare lm``; LM weight 2, the default, the best of 1 and 2 on the
validation set), without a lexicon (unseen test words can still be spelt) and with the
training transcripts' words as the lexicon; the transducer by its beam search. Reported per arm and decoder: test WER and CER
(mean ± standard deviation over seeds), epochs trained, training seconds. A finished run or
decode is not done again: the study can be stopped and continued.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Child, child_env, mean_sd
from benchmarks.convergence import Job, run_jobs
from framework.config.schema import parse_duration

TIME_ARMS = {
    "char": ["experiment=asr_sentences"],
    "speech": ["experiment=asr_speech"],  # the shipped speech corpus (400 utterances)
    "tones": [],  # the default run: the tones corpus (800 utterances)
}
OVER_TIME = ["trainer.max_epochs=100000", "scheduler.over=time"]  # the epochs left to the budget
ON_THE_BUDGET = {  # what an arm's experiment does not set itself to train for a time budget
    "speech": OVER_TIME,
    "tones": OVER_TIME,
    "bpe128": ["experiment=asr_sentences_bpe", "tokenizer.vocab_size=128"],
    "bpe512": ["experiment=asr_sentences_bpe", "tokenizer.vocab_size=512"],
    "transducer": ["experiment=asr_sentences_transducer"],
}
CORPUS = {"speech": "speech", "tones": "tones"}  # arm -> its corpus (the others: sentences)
LM = "{out}/sentences-3gram.arpa"
LEXICON = ["decoder=beam", f"decoder.lm={LM}", "decoder.lexicon=train"]
FREE = ["decoder=beam", f"decoder.lm={LM}"]
PIECES = ["decoder.beam_size_token=16"]  # the 16 likeliest pieces a frame (all 513 of a poor model's take minutes)
DECODERS = {  # arm -> {decoder name: framework.evaluate overrides}; every arm also has its greedy result
    "char": {"beam + word 3-gram": FREE, "beam + lexicon + word 3-gram": LEXICON},
    "bpe128": {"beam + word 3-gram": FREE + PIECES, "beam + lexicon + word 3-gram": LEXICON + PIECES},
    "bpe512": {"beam + word 3-gram": FREE + PIECES, "beam + lexicon + word 3-gram": LEXICON + PIECES},
    "char_epochs": {},
    "speech": {},
    "speech_epochs": {},
    "tones": {},
    "tones_epochs": {},
    "transducer": {"beam": ["decoder=transducer_beam"]},
}


def hand_epochs(out: Path, arm: str, budget_s: float, seeds: list[int]) -> int:
    """The most whole epochs that fit the budget at the ``arm`` runs' mean epoch time
    (training and validation): what a user who timed an epoch would choose."""
    times = []
    for seed in seeds:
        history = json.loads((out / arm / f"seed{seed}" / "metrics.json").read_text())["history"]
        ends = [h["elapsed_s"] for h in history]
        full = [b - a for a, b in zip([0.0, *ends], ends)]
        times.extend(full[:-1] or full)  # the last epoch was cut by the budget
    return max(1, math.floor(budget_s / float(np.mean(times))))


def corpus_of(arm: str) -> str:
    return CORPUS.get(arm.removesuffix("_epochs"), "sentences")  # an _epochs arm: its timed arm's


def arm_overrides(arm: str, out: Path, budget: str, seeds: list[int], hand: int | None) -> list[str]:
    timed = arm.removesuffix("_epochs")  # planned in epochs: the arm it is timed from
    # the tones corpus written once before the runs (not by each, racing, on its budget)
    data = [f"dataset.root={tones_corpus(out)}"] if corpus_of(arm) == "tones" else []
    if arm in TIME_ARMS:
        return [*TIME_ARMS[arm], *data, *ON_THE_BUDGET.get(arm, []), f"trainer.max_time={budget}"]
    epochs = hand or hand_epochs(out, timed, parse_duration(budget), seeds)
    return [*TIME_ARMS[timed], *data, "trainer.max_time=null", "scheduler.over=steps", f"trainer.max_epochs={epochs}"]


def tones_corpus(out: Path) -> Path:
    from framework.data.synthetic import prepare_tone_corpus

    return prepare_tone_corpus(out / "tones-corpus")  # the default run's splits


def make_lm(out: Path) -> Path:
    path = Path(LM.format(out=out))
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "framework.prepare", "lm", str(ROOT / "recipes/asr_ctc/sentences/train.json"),
                        str(path), "--order", "3"], check=True, env=child_env(), cwd=ROOT)
    return path


def decode(run_dir: Path, name: str, overrides: list[str], out: Path) -> dict:
    """The run's test metrics with another decoder, cached in ``decode-<name>.json``."""
    path = run_dir / f"decode-{name.replace(' ', '_')}.json"
    if not path.is_file():
        args = [o.format(out=out) for o in overrides]
        child = Child([sys.executable, "-m", "framework.evaluate", str(run_dir), *args], run_dir / "decode.log",
                      child_env(1), cwd=ROOT)
        child.wait()
        path.write_text(next(line for line in reversed(child.log.read_text().splitlines()) if line.startswith("{")))
    return json.loads(path.read_text())


def _metric(metrics: dict, name: str) -> float:
    return metrics.get(f"test_{name}", metrics.get(name))


def report(out: Path, arms: list[str], seeds: list[int]) -> str:
    lines = ["| arm | decoder | seeds | test WER | test CER | epochs | training s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm in arms:
        runs = [out / arm / f"seed{s}" for s in seeds if (out / arm / f"seed{s}" / "bench-cpu.json").is_file()]
        if not runs:
            continue
        results = [json.loads((r / "metrics.json").read_text()) for r in runs]
        epochs = [len(m["history"]) for m in results]
        seconds = [m["history"][-1]["elapsed_s"] for m in results]
        rows = {"greedy": [m["metrics"] for m in results]}
        for name, overrides in DECODERS[arm].items():
            rows[name] = [decode(r, name, overrides, out) for r in runs]
        for name, metrics in rows.items():
            lines.append(f"| {arm} | {name} | {len(runs)} | {mean_sd([_metric(m, 'wer') for m in metrics], 3)} | "
                         f"{mean_sd([_metric(m, 'cer') for m in metrics], 3)} | {mean_sd(epochs, 1)} | {mean_sd(seconds, 0)} |")
    return "\n".join(lines)


def main(arms: list[str], seeds: list[int], budget: str, out: Path, parallel: int, hand: int | None,
         report_only: bool, overrides: list[str]) -> None:
    out = out.resolve()  # the decoders' LM path is read by processes in other folders
    make_lm(out)
    if not report_only:
        first = [a for a in arms if a in TIME_ARMS]
        later = [a for a in arms if a not in TIME_ARMS]
        for group in (first, later):  # the hand-chosen epochs are measured from the time-budgeted runs
            jobs = [Job(corpus_of(arm), arm, seed, out / arm / f"seed{seed}",
                        [*arm_overrides(arm, out, budget, seeds, hand), *overrides, f"seed={seed}"])
                    for seed in seeds for arm in group]
            run_jobs(jobs, parallel, threads=1)
    table = report(out, arms, seeds)
    (out / "report.md").write_text(table + "\n")
    print(table)
