"""``python -m framework.transcribe SOURCE [FILE ...] [--manifest M] [--format text|json|srt|vtt]
[overrides]``: transcripts of audio files of any length, with a run directory's checkpoint
and decoder (or another: ``decoder=beam decoder.lm=lm.arpa``) or an exported artifact
folder (``framework.export``; greedy decoding).

Files are read from disk in chunks (``--chunk`` seconds, ``--overlap`` seconds shared by
neighbours) that are batched across files (``--batch-size`` chunks per forward pass), so
memory stays bounded by one batch whatever the recording's length. A transducer, whose
outputs cannot be merged across chunks, reads each file (or stretch, with
``--split-at-pauses``) whole instead. The chunks' outputs are
merged at the CTC level: each chunk keeps its frames up to the middle of its overlaps, so
every frame comes from the chunk that saw most context around it, and the merged frame
sequence is decoded as a whole (other decoders than greedy: in pieces of up to a minute, cut
at pauses). Word times come from the CTC alignment: the best path's frames for greedy
decoding, ``torchaudio.functional.forced_align`` of each piece's hypothesis for other
decoders; a word's confidence is the geometric mean of its characters' frame probabilities.

A model trained on single utterances runs the words on either side of a long recording's
pauses together: ``--split-at-pauses 0.3`` cuts recordings where they are quiet for 0.3 s or
more (:mod:`framework.data.pauses`) and transcribes each stretch on its own; word times still
count from the start of the file.

Output: ``file<TAB>transcript`` lines (``text``), one JSON object per file (``json``: text,
words with start/end seconds and confidence), or subtitles (``srt``, ``vtt``). ``--out DIR``
writes one file per input instead. A file that cannot be read is reported in one line and
the others are still transcribed; the command then exits with status 2, naming how many failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
import torch
import torchaudio.functional as AF

from framework.augment.quiet import quiet_lead_of
from framework.cli import exit_on_error
from framework.data.pauses import ONSET_LEAD_S, lead_for
from framework.errors import UserError
from framework.text.decoders import GreedyDecoder
from framework.text.subword import SentencePieceTokenizer
from framework.text.tokenizer import CharTokenizer

FORMATS = ("text", "json", "srt", "vtt")
MAX_PIECE_S = 60.0  # longer frame sequences are decoded and aligned in pieces cut at pauses (a forced
# alignment's memory grows with frames x characters)


@dataclass
class Job:
    """One input: an audio file, or a segment of one (a manifest entry with start/stop)."""

    name: str
    path: str
    start: float | None = None
    stop: float | None = None


@dataclass
class Chunk:
    job: int
    first_frame: int  # the chunk's first output frame in the job's frame sequence
    samples: torch.Tensor
    keep: tuple[int, float]  # the job's output frames taken from this chunk, [from, to) (to: inf for the last)
    last: bool
    duration: float  # seconds of the job's audio


@dataclass
class Failure:
    job: int
    message: str


@dataclass
class Word:
    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Result:
    name: str
    text: str
    duration: float
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True)
class Geometry:
    sample_rate: int
    samples_per_frame: int  # input samples per output frame: chunks start on multiples of it
    min_samples: int  # the shortest input the model takes
    pad_to: int  # the shortest batch the model takes (padding changes no output)
    first_frame_centre: float = 0.0  # the sample output frame 0 is centred on


def plan_chunks(total: int, chunk: int, overlap: int, unit: int) -> list[tuple[int, int, int, float]]:
    """``(first sample, end sample, first kept frame, end of kept frames)`` of each chunk of
    ``total`` samples: chunks of ``chunk`` samples starting every ``chunk - overlap``, on
    multiples of ``unit`` (samples per output frame); the last one ends at the end, so every
    chunk is full length. Neighbours split their overlap in the middle."""
    chunk = max(unit, chunk // unit * unit)
    step = max(unit, chunk - overlap // unit * unit)
    if total <= chunk:
        return [(0, total, 0, math.inf)]
    starts = list(range(0, total - chunk, step))
    last = (total - chunk) // unit * unit
    if last > starts[-1]:
        starts.append(last)
    ends = [*[s + chunk for s in starts[:-1]], total]
    cuts = [round((starts[i + 1] + ends[i]) / 2 / unit) for i in range(len(starts) - 1)]
    bounds = [0, *cuts, math.inf]
    return [(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, ends))]


def read_chunks(job_index: int, job: Job, geometry: Geometry, chunk_s: float, overlap_s: float
                ) -> Iterator[Chunk]:
    """The job's chunks, read from disk one at a time (resampled and mixed down to mono)."""
    rate_out = geometry.sample_rate
    with soundfile.SoundFile(job.path) as f:
        rate = f.samplerate
        first = round(job.start * rate) if job.start else 0
        last = min(f.frames, round(job.stop * rate)) if job.stop is not None else f.frames
        total = (last - first) * rate_out // rate
        if total < geometry.min_samples:
            raise ValueError(f"{total / rate_out:.3f} s of audio, shorter than the {geometry.min_samples / rate_out:.3f} s "
                             "the model needs")
        plan = plan_chunks(total, round(chunk_s * rate_out), round(overlap_s * rate_out), geometry.samples_per_frame)
        for i, (start, end, keep_from, keep_to) in enumerate(plan):
            a, b = first + start * rate // rate_out, min(last, first + -(-end * rate // rate_out))
            f.seek(a)
            frames = f.read(b - a, dtype="float32", always_2d=True)
            data = torch.from_numpy(frames[:, 0] if frames.shape[1] == 1 else frames.mean(1))
            if rate != rate_out:
                data = AF.resample(data, rate, rate_out)
            data = data[: end - start]
            if len(data) < end - start:
                data = torch.nn.functional.pad(data, (0, end - start - len(data)))
            if not torch.isfinite(torch.stack(torch.aminmax(data))).all():  # NaN and inf reach the min or max
                raise ValueError("contains NaN or infinite samples")
            unit = geometry.samples_per_frame
            yield Chunk(job_index, start // unit, data, (keep_from, keep_to), i == len(plan) - 1, total / rate_out)


def chunk_stream(jobs: list[Job], geometry: Geometry, chunk_s: float, overlap_s: float) -> Iterator[Chunk | Failure]:
    """Every job's chunks in order; a job that cannot be read ends in a :class:`Failure`."""
    for i, job in enumerate(jobs):
        try:
            yield from read_chunks(i, job, geometry, chunk_s, overlap_s)
        except Exception as exc:  # soundfile raises several types for bad files
            reason = str(exc) if isinstance(exc, ValueError) and str(exc) else f"cannot read audio ({exc})"
            if not Path(job.path).exists():
                reason = "audio file not found"
            yield Failure(i, f"{job.name}: {reason}")


def check_chunking(chunk_s: float, overlap_s: float, batch_size: int) -> None:
    if chunk_s <= 0 or not 0 <= overlap_s < chunk_s:
        raise UserError(f"--chunk {chunk_s} --overlap {overlap_s}: the chunk must be positive and the overlap "
                        "shorter than it")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")


class Transcriber:
    """Chunked, batched CTC inference over many jobs and the merge, decoding and alignment of
    each job's frames."""

    def __init__(self, run, geometry: Geometry, decoder, tokenizer: CharTokenizer, chunk_s: float = 30.0,
                 overlap_s: float = 3.0, batch_size: int = 4, timestamps: bool = False) -> None:
        check_chunking(chunk_s, overlap_s, batch_size)
        self.run, self.geometry, self.decoder, self.tokenizer = run, geometry, decoder, tokenizer
        self.chunk_s, self.overlap_s, self.batch_size, self.timestamps = chunk_s, overlap_s, batch_size, timestamps
        self.frame_s = geometry.samples_per_frame / geometry.sample_rate

    def __call__(self, jobs: list[Job]) -> Iterator[Result | Failure]:
        """Results (and failures) in the jobs' order, each as soon as its last chunk is done."""
        kept: dict[int, list[torch.Tensor]] = {}
        failed: set[int] = set()
        batch: list[Chunk] = []
        for item in chunk_stream(jobs, self.geometry, self.chunk_s, self.overlap_s):
            if isinstance(item, Failure):
                failed.add(item.job)
                kept.pop(item.job, None)
                batch = [c for c in batch if c.job != item.job]
                yield item
                continue
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from self.process(batch, jobs, kept, failed)
                batch = []
        yield from self.process(batch, jobs, kept, failed)

    def process(self, batch: list[Chunk], jobs: list[Job], kept: dict[int, list[torch.Tensor]], failed: set[int]
                ) -> Iterator[Result]:
        if not batch:
            return
        lengths = torch.tensor([len(c.samples) for c in batch])
        inputs = torch.zeros(len(batch), max(int(lengths.max()), self.geometry.pad_to))
        for row, c in enumerate(batch):
            inputs[row, : len(c.samples)] = c.samples
        log_probs, frames = self.run(inputs, lengths)[:2]
        log_probs, frames = log_probs.float().cpu(), frames.cpu()
        for row, c in enumerate(batch):
            if c.job in failed:
                continue
            lo = max(0, c.keep[0] - c.first_frame)
            hi = int(frames[row]) if math.isinf(c.keep[1]) else int(min(frames[row], c.keep[1] - c.first_frame))
            kept.setdefault(c.job, []).append(log_probs[row, lo:hi])
            if c.last:
                yield self.finish(jobs[c.job], torch.cat(kept.pop(c.job)), c.duration)

    def finish(self, job: Job, log_probs: torch.Tensor, duration: float) -> Result:
        """The transcript (and words) of a job's merged frames ``[T, C]``."""
        if isinstance(self.decoder, GreedyDecoder):  # the best path is the alignment
            text = " ".join(self.decoder.decode(log_probs[None], torch.tensor([len(log_probs)]))[0].split())
            words = self.words(log_probs.argmax(-1), log_probs, 0) if self.timestamps else []
            return Result(job.name, text, duration, words)
        texts, words = [], []
        for lo, hi in pieces(log_probs.argmax(-1), round(MAX_PIECE_S / self.frame_s)):
            piece = log_probs[lo:hi]
            text = " ".join(self.decoder.decode(piece[None], torch.tensor([hi - lo]))[0].split())
            texts.append(text)
            ids = self.tokenizer.encode(text, drop_unknown=True)
            if self.timestamps and ids:
                path = aligned_path(piece, ids)
                if path is not None:
                    words.extend(self.words(path, piece, lo))
        return Result(job.name, " ".join(t for t in texts if t), duration, words)

    def words(self, path: torch.Tensor, log_probs: torch.Tensor, offset: int) -> list[Word]:
        """Words of a frame alignment (a label per frame, 0 the blank): a word runs from its
        first character's first frame to its last character's last frame."""
        space = self.tokenizer.index.get(" ")
        words: list[Word] = []
        letters: list[str] = []
        scores: list[float] = []
        start = end = previous = 0
        for t, label in enumerate(path.tolist()):
            new = label != previous  # a label repeated on the next frame is the same character
            previous = label
            if label == 0:
                continue
            if label == space:
                if new and letters:
                    words.append(self.word(letters, start, end, scores, offset))
                    letters, scores = [], []
                continue
            if new:
                start = t if not letters else start
                letters.append(self.tokenizer.symbols[label])
            end = t + 1
            scores.append(float(log_probs[t, label]))
        if letters:
            words.append(self.word(letters, start, end, scores, offset))
        return words

    def word(self, letters: list[str], start: int, end: int, scores: list[float], offset: int) -> Word:
        """From the start of its first frame to the end of its last (frames are centred on
        their time, ``frame_s`` apart)."""
        centre = self.geometry.first_frame_centre / self.geometry.sample_rate - self.frame_s / 2
        return Word("".join(letters), round(max(0.0, centre + (start + offset) * self.frame_s), 3),
                    round(centre + (end + offset) * self.frame_s, 3), round(math.exp(sum(scores) / len(scores)), 4))


def pieces(best: torch.Tensor, max_frames: int) -> list[tuple[int, int]]:
    """``[from, to)`` frame ranges of at most ``max_frames`` (the whole when it is no longer),
    each cut in the middle of the longest blank stretch of the best path near its end."""
    blank = (best == 0).tolist()
    pauses, t = [], 0  # (length, middle) of each blank stretch
    while t < len(blank):
        u = t
        while u < len(blank) and blank[u] == blank[t]:
            u += 1
        if blank[t]:
            pauses.append((u - t, (t + u) // 2))
        t = u
    bounds, lo = [0], 0
    while len(blank) - lo > max_frames:
        inside = [(n, m) for n, m in pauses if lo + max_frames // 2 < m <= lo + max_frames]
        lo = max(inside)[1] if inside else lo + max_frames
        bounds.append(lo)
    return list(zip(bounds, [*bounds[1:], len(blank)]))


def aligned_path(log_probs: torch.Tensor, ids: list[int]) -> torch.Tensor | None:
    """The forced CTC alignment of ``ids`` to ``log_probs [T, C]`` (a label per frame), or
    None where the frames are too few for them."""
    try:
        path, _ = AF.forced_align(log_probs[None], torch.tensor([ids], dtype=torch.int32), blank=0)
    except RuntimeError:
        return None
    return path[0]


# ---------------------------------------------------------------------------- output
def timestamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def cues(words: list[Word], max_words: int = 10, max_gap: float = 1.0, max_s: float = 5.0) -> list[list[Word]]:
    """Words grouped into subtitle cues: a new cue after a pause, or when one gets long."""
    groups: list[list[Word]] = []
    for w in words:
        current = groups[-1] if groups else None
        if current and len(current) < max_words and w.start - current[-1].end <= max_gap and w.end - current[0].start <= max_s:
            current.append(w)
        else:
            groups.append([w])
    return groups


def render(result: Result, fmt: str) -> str:
    if fmt == "text":
        return f"{result.name}\t{result.text}\n"
    if fmt == "json":
        words = [vars(w) for w in result.words]
        return json.dumps({"file": result.name, "text": result.text, "duration": round(result.duration, 3),
                           "words": words}) + "\n"
    separator = "," if fmt == "srt" else "."
    blocks = []
    for i, group in enumerate(cues(result.words), 1):
        times = f"{timestamp(group[0].start, separator)} --> {timestamp(group[-1].end, separator)}"
        text = " ".join(w.word for w in group)
        blocks.append(f"{i}\n{times}\n{text}\n" if fmt == "srt" else f"{times}\n{text}\n")
    header = "WEBVTT\n\n" if fmt == "vtt" else ""
    return header + "\n".join(blocks)


def write(result: Result, fmt: str, out: Path | None) -> None:
    text = render(result, fmt)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    suffix = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}[fmt]
    target = out / (Path(result.name).name + suffix)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


@torch.no_grad()
def whole_recordings(recognize: Callable[[torch.Tensor], str], jobs: list[Job],
                     geometry: Geometry) -> Iterator[Result | Failure]:
    """Each job in one pass through ``recognize(samples [S]) -> text`` (a model whose outputs
    cannot be merged across chunks, such as a transducer): memory grows with the recording's
    length."""
    for i, job in enumerate(jobs):
        failed = None
        for chunk in chunk_stream([job], geometry, chunk_s=1e9, overlap_s=0.0):
            if isinstance(chunk, Failure):
                failed = Failure(i, chunk.message)
                continue
            text = recognize(chunk.samples)
        yield failed or Result(job.name, text, chunk.duration)


def brain_recognizer(brain) -> Callable[[torch.Tensor], str]:
    """``brain.recognize`` of one waveform, on the weights evaluation uses."""
    brain.set_mode(training=False)

    def recognize(samples: torch.Tensor) -> str:
        samples = samples.to(brain.device)[None]
        with brain.eval_weights():
            feats, feat_lens = brain.features.extract(samples, torch.tensor([samples.shape[1]], device=brain.device))
            return brain.recognize(feats, feat_lens)[0]

    return recognize


def refuse_timestamps(fmt: str, model: str) -> None:
    if fmt != "text":
        raise UserError(f"--format {fmt}: word times come from a CTC alignment; {model} gives transcripts only "
                        "(--format text)")


def split_at_pauses(jobs: list[Job], min_pause_s: float, lead_s: float) -> tuple[list[Job], list[int], list[float]]:
    """Each job's stretches between pauses of at least ``min_pause_s`` seconds, started
    ``lead_s`` before their onsets (:mod:`framework.data.pauses`), as jobs of their own, the
    index of the job each came from, and each job's duration. A file that cannot be read stays
    whole: its failure is reported as any file's."""
    from framework.data.pauses import speech_spans_of

    spans, parents, durations = [], [], []
    for i, job in enumerate(jobs):
        offset = job.start or 0.0
        try:
            info = soundfile.info(job.path)
            durations.append((job.stop if job.stop is not None else info.duration) - offset)
            found = [Job(job.name, job.path, offset + a, offset + b)
                     for a, b in speech_spans_of(job.path, job.start, job.stop, min_pause_s, lead_s)]
        except Exception:  # soundfile raises several types for bad files
            durations.append(0.0)
            found = [job]
        spans += found
        parents += [i] * len(found)
    return spans, parents, durations


def joined(items: Iterator[Result | Failure], jobs: list[Job], spans: list[Job], parents: list[int],
           durations: list[float]) -> Iterator[Result | Failure]:
    """The results of each job's spans joined into one (times from the job's start), yielded
    once all its spans are done; a job with a failed span fails as a whole, once."""
    waiting = list(range(len(spans)))  # results come in span order, failures may come early
    left = {i: parents.count(i) for i in set(parents)}
    parts: dict[int, list[Result]] = {}
    failed: set[int] = set()
    for item in items:
        index = item.job if isinstance(item, Failure) else waiting[0]
        waiting.remove(index)
        job = parents[index]
        left[job] -= 1
        if isinstance(item, Failure):
            if job not in failed:
                failed.add(job)
                yield Failure(job, item.message)
            continue
        shift = (spans[index].start or 0.0) - (jobs[job].start or 0.0)
        item.words = [Word(w.word, round(w.start + shift, 3), round(w.end + shift, 3), w.confidence) for w in item.words]
        parts.setdefault(job, []).append(item)
        if left[job] == 0 and job not in failed:
            done = parts.pop(job)
            yield Result(jobs[job].name, " ".join(r.text for r in done if r.text), durations[job],
                         [w for r in done for w in r.words])


# ---------------------------------------------------------------------------- sources
def jobs_of(files: list[str], manifest: str | None, data_root: str | None) -> list[Job]:
    jobs = [Job(f, f) for f in files]
    if manifest:
        from framework.data.manifest import load_entries

        root = str(Path(data_root or Path(manifest).parent).resolve())  # relative paths join the manifest's folder
        jobs += [Job(e.id, e.path, e.start, e.stop) for e in load_entries(manifest, replacements={"data_root": root})]
    if not jobs:
        raise UserError("no audio to transcribe: name files, or a manifest with --manifest")
    return jobs


def transcribe(source: str, files: list[str], checkpoint: str = "best", overrides: list[str] | None = None,
               fmt: str = "text", out: str | None = None, manifest: str | None = None, data_root: str | None = None,
               chunk_s: float = 30.0, overlap_s: float = 3.0, batch_size: int = 4, threads: int | None = None,
               pause_s: float | None = None) -> list[Result]:
    """Transcribes ``files`` (and a manifest's entries) with a run directory or an exported
    artifact folder; prints or writes each result as it is done. Raises :class:`UserError`
    at the end when some files failed (each reported on stderr when it did)."""
    from framework.cli import report
    from framework.export.runners import artifact_runner, brain_runner, is_artifact

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    check_chunking(chunk_s, overlap_s, batch_size)  # a transducer, which takes each file whole, is given them too
    jobs = jobs_of(files, manifest, data_root)
    if pause_s is not None and pause_s <= 0:
        raise UserError(f"--split-at-pauses {pause_s}: give the shortest pause to cut at, in seconds (e.g. 0.3)")
    out_dir = Path(out) if out else None
    if out_dir is None and fmt in ("srt", "vtt") and len(jobs) > 1:
        raise UserError(f"--format {fmt} of {len(jobs)} files: subtitles are one file per input; name a folder for "
                        "them with --out DIR")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    timestamps = fmt != "text"
    results: list[Result] = []
    failures = 0

    def spanned(transcribe_jobs, lead_s: float) -> Iterator[Result | Failure]:
        """``transcribe_jobs(jobs)``, or over the stretches between pauses, joined again (each
        stretch started ``lead_s`` before its speech, as the model's training utterances were)."""
        if pause_s is None:
            return transcribe_jobs(jobs)
        spans, parents, durations = split_at_pauses(jobs, pause_s, lead_s)
        return joined(transcribe_jobs(spans), jobs, spans, parents, durations)

    def emit(items) -> None:
        nonlocal failures
        for item in items:
            if isinstance(item, Failure):
                failures += 1
                report(f"error: {item.message}")
            else:
                results.append(item)
                write(item, fmt, out_dir)

    if is_artifact(source):
        from framework.export.inference import Artifact

        if overrides:
            raise UserError(f"{source} is an exported model: config overrides ({' '.join(overrides)}) apply to run "
                            "directories only")
        try:
            artifact = Artifact(source, threads)
        except FileNotFoundError as exc:  # a graph of the folder is missing
            raise UserError(str(exc)) from None
        meta = artifact.meta
        lead_s = meta.get("stretch_lead_s", ONSET_LEAD_S)
        if meta["task"] == "transducer":
            refuse_timestamps(fmt, f"{source}, an exported transducer,")
            geometry = Geometry(meta["sample_rate"], 1, meta["min_samples"], 0)
            emit(spanned(lambda some: whole_recordings(lambda samples: artifact.transcribe([samples.numpy()])[0], some,
                                                       geometry), lead_s))
        elif meta["task"] == "ctc":
            units = meta.get("subword_model")
            tokenizer = (SentencePieceTokenizer.load(Path(source) / units) if units
                         else CharTokenizer.load(Path(source) / meta["tokenizer"]))
            geometry = Geometry(meta["sample_rate"], meta["samples_per_frame"], meta["min_samples"], meta["pad_to"],
                                meta["first_frame_centre"])
            emit(spanned(Transcriber(artifact_runner(artifact), geometry, GreedyDecoder(tokenizer), tokenizer, chunk_s,
                                     overlap_s, batch_size, timestamps), lead_s))
        else:
            raise UserError(f"{source}: an exported {meta['task']} model, not speech recognition")
    else:
        from framework.export.graph import frame_geometry
        from framework.run_dir import load_run_config, open_brain

        cfg = load_run_config(source, [*(overrides or []), *([f"trainer.num_threads={threads}"] if threads else [])])
        brain = open_brain(cfg, log_name="transcribe")
        brain.setup(None, trains=False)
        if not hasattr(brain, "tokenizer"):
            raise UserError(f"{cfg.brain._target_} has no tokenizer: this run is not a speech recognition recipe")
        brain.load_weights(checkpoint)
        lead_s = lead_for(quiet_lead_of(brain.features))  # where the model's training utterances started
        if not getattr(brain, "ctc", True):  # a transducer: no CTC frames to merge chunks at or align words with
            refuse_timestamps(fmt, cfg.brain._target_)
            recognize = brain_recognizer(brain)
            emit(spanned(lambda some: whole_recordings(recognize, some, Geometry(int(cfg.sample_rate), 1, 1, 0)), lead_s))
        else:
            unit, min_samples, centre = frame_geometry(brain.features, brain.module)
            geometry = Geometry(int(cfg.sample_rate), unit, min_samples, 0, centre)
            with brain_runner(brain) as run:
                emit(spanned(Transcriber(run, geometry, brain.decoder, brain.tokenizer, chunk_s, overlap_s, batch_size,
                                         timestamps), lead_s))
        brain.logger.close()
    if failures:
        raise UserError(f"{failures} of {len(jobs)} files could not be transcribed (named above); "
                        + ("the others were transcribed" if failures < len(jobs) else "nothing was transcribed"))
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m framework.transcribe", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory (framework.train) or an exported model folder (framework.export)")
    parser.add_argument("files", nargs="*", help="audio files, then any config overrides (decoder=beam decoder.lm=...)")
    parser.add_argument("--manifest", help="a JSON, JSONL or CSV manifest whose entries to transcribe")
    parser.add_argument("--data-root", help="the manifest's {data_root} (default: its folder)")
    parser.add_argument("--format", default="text", choices=FORMATS, help="text (file<TAB>transcript), json, srt, vtt")
    parser.add_argument("--out", help="a folder for one output file per input (default: standard output)")
    parser.add_argument("--chunk", type=float, default=30.0, help="seconds of audio per chunk (default 30)")
    parser.add_argument("--overlap", type=float, default=3.0, help="seconds neighbouring chunks share (default 3)")
    parser.add_argument("--batch-size", type=int, default=4, help="chunks per forward pass (default 4)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the run's trainer.num_threads or the runtime's)")
    parser.add_argument("--split-at-pauses", type=float, metavar="SECONDS", dest="pause_s",
                        help="cut recordings where they are quiet for this long (e.g. 0.3) and transcribe each stretch "
                             "on its own: for models trained on single utterances")
    parser.add_argument("--checkpoint", default="best", help="best, latest, averaged (framework.average) or a checkpoint path")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    files = [f for f in args.files if "=" not in f or Path(f).exists()]
    overrides = [f for f in args.files if f not in files]
    return exit_on_error(lambda: transcribe(args.source, files, args.checkpoint, overrides, args.format, args.out,
                                            args.manifest, args.data_root, args.chunk, args.overlap, args.batch_size,
                                            args.threads, args.pause_s))


if __name__ == "__main__":
    main()
