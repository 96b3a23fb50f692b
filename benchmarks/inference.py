"""``python -m benchmarks.inference RUN_DIR [--corpus speech|sentences] [--minutes 10,60] [--threads 1,2]
[--engines ...] [--split-at-pauses none,0.3] [--work DIR] [--utterances]``:
real-time factor, peak memory, CER and word-time error of long-recording transcription with
eager PyTorch (the run directory), TorchScript fp32 and int8, torch.export, ONNX Runtime fp32
and int8 (the run's exported artifacts in ``RUN_DIR/export/``, made with
``python -m framework.export`` first).

The recordings are the test utterances of the speech corpus (``recipes/asr_ctc/speech/test``,
40 utterances) or, with ``--corpus sentences``, of the sentence corpus (300), one after
another, cycled until the length is reached, with 0.3-1.5 s of silence (noise at -60 dBFS)
between them, so the transcript is known. Word times are known from the forced alignment
(``torchaudio.functional.forced_align``) of each utterance's reference words with the run's
model on the utterance alone, shifted by where the utterance sits in the recording; a
recognised word's error is the mean of its start and end differences. Each measurement is a
fresh process (``python -m framework.transcribe`` in-process there, ``--format json``): its
wall time over the audio's duration is the real-time factor (model loading included), its
``ru_maxrss`` the peak RSS. CER and WER are computed per utterance (hypothesis words assigned
by their time), against the references and against transcribing each utterance file on its
own with the eager model. Prints a markdown table; ``--json`` writes the rows.

``--utterances``: each engine transcribes the test utterances as files instead (any speech
model, a transducer too, whose transcription needs no CTC alignment): the whole command's
time in a fresh process, its peak RSS, and CER / WER against the references.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT / "recipes" / "asr_ctc"
ENGINES = {"eager": None, "torchscript": "torchscript", "torchscript_int8": "torchscript-int8",
           "torch_export": "torch_export", "onnx": "onnx", "onnx_int8": "onnx-int8"}


def utterances(corpus: str = "speech") -> list[dict]:
    """The test utterances of a shipped corpus (``recipes/asr_ctc/<corpus>``)."""
    folder = CORPORA / corpus
    manifest = json.loads((folder / "test.json").read_text())
    return [{"id": uid, "path": str(folder / e["wav"].replace("{data_root}/", "")), "words": e["words"].lower()}
            for uid, e in sorted(manifest.items())]


def word_spans(run_dir: str, items: list[dict]) -> dict[str, list[tuple[str, float, float]]]:
    """(word, start s, end s) of each utterance's reference, forced-aligned with the eager model."""
    import torch

    from framework.export.graph import frame_geometry
    from framework.export.runners import brain_runner
    from framework.run_dir import load_run_config, open_brain
    from framework.transcribe import Geometry, Transcriber, aligned_path

    cfg = load_run_config(run_dir, ["trainer.num_threads=1"])
    brain = open_brain(cfg, log_name="bench-inference")
    brain.setup(None, trains=False)
    brain.load_weights("best")
    unit, _, centre = frame_geometry(brain.features, brain.module)
    spans = {}
    with brain_runner(brain) as run:
        geometry = Geometry(int(cfg.sample_rate), unit, 0, 0, centre)
        words = Transcriber(run, geometry, brain.decoder, brain.tokenizer).words
        for item in items:
            wave, _ = soundfile.read(item["path"], dtype="float32")
            log_probs, frames = run(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))[:2]
            lp = log_probs[0, : int(frames[0])].float()
            path = aligned_path(lp, brain.tokenizer.encode(item["words"], drop_unknown=True))
            found = words(path, lp, 0) if path is not None else []
            spans[item["id"]] = [(w.word, w.start, w.end) for w in found]
    return spans


def make_recording(folder: Path, minutes: float, items: list[dict], spans: dict, corpus: str = "speech",
                   seed: int = 0) -> Path:
    """``folder/recording-<corpus>-<minutes>min.flac`` and its truth, ``.json``: each utterance's place and words."""
    path = folder / f"recording-{corpus}-{minutes:g}min.flac"
    truth_path = path.with_suffix(".json")
    if path.is_file() and truth_path.is_file():
        return path
    rng = np.random.default_rng(seed)
    rate, total, placed = 16000, int(minutes * 60 * 16000), []
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        position, i = 0, 0
        while True:
            item = items[i % len(items)]
            wave, _ = soundfile.read(item["path"], dtype="float32")
            # a quiet room's noise floor (-60 dBFS): after digital zeros (log features of -13.8, never seen in
            # training) the model misreads the next words, and a recording is never that silent
            gap = rng.normal(0.0, 1e-3, int(rng.uniform(0.3, 1.5) * rate)).astype(np.float32)
            if position + len(gap) + len(wave) > total:
                break
            out.write(gap)
            position += len(gap)
            start = position / rate
            out.write(wave)
            position += len(wave)
            placed.append({"id": item["id"], "start": start, "end": position / rate, "words": item["words"],
                           "spans": [(w, start + a, start + b) for w, a, b in spans[item["id"]]]})
            i += 1
        out.write(rng.normal(0.0, 1e-3, total - position).astype(np.float32))
    truth_path.write_text(json.dumps({"utterances": placed, "duration": total / rate}))
    return path


def measure(source: str, audio: Path | list[str], threads: int, out: Path, pause_s: float | None = None) -> dict:
    """One transcription in a fresh process: its time and peak RSS, and the hypothesis (JSON of
    one recording; the text of each of a list of files)."""
    files = [str(audio)] if isinstance(audio, Path) else audio
    fmt = "json" if isinstance(audio, Path) else "text"
    code = ("import json, resource, sys, time; from framework.transcribe import transcribe\n"
            "t = time.perf_counter()\n"
            f"transcribe({source!r}, {files!r}, fmt={fmt!r}, out={str(out)!r}, threads={threads}, "
            f"pause_s={pause_s!r})\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"transcription with {source} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if isinstance(audio, Path):
        result["hypothesis"] = json.loads((out / (audio.name + ".json")).read_text())
    else:
        result["hypothesis"] = {f: (out / (Path(f).name + ".txt")).read_text().rstrip("\n").split("\t", 1)[1]
                                for f in files}
    return result


def utterance_rows(args, items: list[dict]) -> list[dict]:
    """Each engine transcribing the test utterances as files, in a fresh process: files per
    second over the whole command (model loading included), peak RSS, CER and WER."""
    from framework.text import ErrorRate

    duration = sum(soundfile.info(i["path"]).duration for i in items)
    work = Path(args.work or Path(args.run_dir) / "bench-inference")
    rows = []
    print("| engine | threads | seconds | x real time | peak RSS (MB) | CER | WER |\n|---|---|---|---|---|---|---|",
          flush=True)
    for threads, engine in itertools.product((int(t) for t in args.threads.split(",")), args.engines.split(",")):
        folder = ENGINES[engine]
        source = args.run_dir if folder is None else str(Path(args.run_dir) / "export" / folder)
        out = work / f"utterances-{args.corpus}-{engine}-{threads}t"
        out.mkdir(parents=True, exist_ok=True)
        result = measure(source, [i["path"] for i in items], threads, out)
        cer, wer = ErrorRate("char"), ErrorRate("word")
        for rate in (cer, wer):
            rate.update([i["words"] for i in items], [result["hypothesis"][i["path"]] for i in items])
        row = {"engine": engine, "threads": threads, "seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
               "x_real_time": duration / result["seconds"], "cer": cer.value, "wer": wer.value}
        rows.append(row)
        print(f"| {engine} | {threads} | {row['seconds']:.2f} | {row['x_real_time']:.0f} | {row['peak_rss_mb']:.0f} | "
              f"{row['cer']:.4f} | {row['wer']:.4f} |", flush=True)
    return rows


def score(hypothesis: dict, truth: dict, alone: dict[str, str] | None) -> dict:
    """CER / WER per utterance (a hypothesis word belongs to the utterance whose stretch, to the
    middle of the pauses either side, holds its middle), the CER of the same utterances
    transcribed each alone, and the median word-time error."""
    from framework.text import ErrorRate

    placed = truth["utterances"]
    bounds = np.array([(a["end"] + b["start"]) / 2 for a, b in zip(placed, placed[1:])])
    assigned: list[list[dict]] = [[] for _ in placed]
    for w in hypothesis["words"]:
        assigned[int(np.searchsorted(bounds, (w["start"] + w["end"]) / 2))].append(w)
    cer, wer, cer_alone = ErrorRate("char"), ErrorRate("word"), ErrorRate("char")  # alone: each file on its own
    errors = []
    for u, words in zip(placed, assigned):
        hyp = " ".join(w["word"] for w in words)
        cer.update([u["words"]], [hyp])
        wer.update([u["words"]], [hyp])
        if alone is not None:
            cer_alone.update([u["words"]], [alone[u["id"]]])
        ref = [s[0] for s in u["spans"]]
        matcher = difflib.SequenceMatcher(a=ref, b=[w["word"] for w in words], autojunk=False)
        for a, b, n in matcher.get_matching_blocks():
            for k in range(n):
                _, start, end = u["spans"][a + k]
                w = words[b + k]
                errors.append((abs(w["start"] - start) + abs(w["end"] - end)) / 2)
    return {"cer": cer.value, "wer": wer.value, "cer_alone": cer_alone.value if alone is not None else None,
            "word_time_error_ms": 1000 * statistics.median(errors) if errors else None, "timed_words": len(errors)}


def transcribe_alone(run_dir: str, items: list[dict], out: Path) -> dict[str, str]:
    """Each test utterance transcribed on its own with the eager model (text output)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "framework.transcribe", run_dir, *[i["path"] for i in items],
                           "--threads", "1"], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                                                     "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    texts = dict(line.split("\t", 1) for line in proc.stdout.strip().splitlines())
    return {i["id"]: texts[i["path"]] for i in items}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run trained on --corpus (e.g. experiment=asr_speech), exported "
                                        "with python -m framework.export RUN_DIR --format ...")
    parser.add_argument("--minutes", default="10,60", help="comma-separated recording lengths")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--corpus", default="speech", choices=["speech", "sentences"],
                        help="whose test utterances make the recordings (the run must be trained on it)")
    parser.add_argument("--work", help="recordings and transcripts (default RUN_DIR/bench-inference: the "
                                       "recordings' word times are the run's own alignments)")
    parser.add_argument("--split-at-pauses", default="none,0.3",
                        help="comma-separated: none (chunks only) and/or the --split-at-pauses seconds")
    parser.add_argument("--utterances", action="store_true",
                        help="transcribe the test utterances as files instead of long recordings (any speech "
                             "model, a transducer included): throughput, memory, CER")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    work = Path(args.work or Path(args.run_dir) / "bench-inference")
    work.mkdir(parents=True, exist_ok=True)
    items = utterances(args.corpus)
    if args.utterances:
        rows = utterance_rows(args, items)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    spans_file = work / f"word_spans-{args.corpus}.json"
    if not spans_file.is_file():
        spans_file.write_text(json.dumps(word_spans(args.run_dir, items)))
    spans = json.loads(spans_file.read_text())
    alone = transcribe_alone(args.run_dir, items, work)
    rows = []
    print("| recording | engine | threads | split at pauses | RTF | x real time | peak RSS (MB) | CER | WER | "
          "CER one by one | median word-time error (ms) |\n|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for minutes in (float(m) for m in args.minutes.split(",")):
        audio = make_recording(work, minutes, items, spans, args.corpus)
        truth = json.loads(audio.with_suffix(".json").read_text())
        for threads, pause, engine in itertools.product((int(t) for t in args.threads.split(",")),
                                                       args.split_at_pauses.split(","), args.engines.split(",")):
            pause_s = None if pause == "none" else float(pause)
            folder = ENGINES[engine]
            source = args.run_dir if folder is None else str(Path(args.run_dir) / "export" / folder)
            out = work / f"{engine}-{threads}t-{pause}-{minutes:g}min"
            out.mkdir(exist_ok=True)
            t = time.perf_counter()
            result = measure(source, audio, threads, out, pause_s)
            scores = score(result.pop("hypothesis"), truth, alone)
            row = {"minutes": minutes, "engine": engine, "threads": threads, "split_at_pauses": pause_s,
                   "rtf": result["seconds"] / truth["duration"], **result, **scores, "wall_s": time.perf_counter() - t}
            rows.append(row)
            alone_cer = "" if row["cer_alone"] is None else f"{row['cer_alone']:.4f}"
            time_err = "" if row["word_time_error_ms"] is None else f"{row['word_time_error_ms']:.0f}"
            print(f"| {minutes:g} min | {engine} | {threads} | {pause} | {row['rtf']:.4f} | {1 / row['rtf']:.0f} | "
                  f"{row['peak_rss_mb']:.0f} | {row['cer']:.4f} | {row['wer']:.4f} | {alone_cer} | {time_err} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
