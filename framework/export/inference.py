"""Runs the exported model in this folder; needs numpy and soundfile, and onnxruntime (``model.onnx``)
or torch (``model.pt2``, ``model.ts``), not the framework that trained it.

    python inference.py audio.wav [more.flac ...] [--batch-size 8] [--threads N]

prints ``file<TAB>transcript`` for a speech recognition model (greedy CTC decoding with the
run's alphabet, ``tokenizer.json``), and for a classifier takes ``.npy`` arrays of inputs
(``[N, ...]`` as the model takes them) and prints ``file<TAB>row<TAB>class``. A file that
cannot be used is reported in one line and the others are still processed; the exit status
is then 2. Each file is read whole: for long recordings (chunks, timestamps) use
``python -m framework.transcribe THIS_FOLDER ...`` where the framework is installed.

From Python: ``Artifact(folder).run(inputs, lengths)`` gives the model's outputs as numpy
arrays (log-probabilities ``[B, T, C]`` and frame counts for speech), ``.transcribe(paths)``
the transcripts. ``artifact.json`` describes the model, its inputs and the parity check made
when it was exported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile

HERE = Path(__file__).resolve().parent


class Artifact:
    """An exported model folder: ``artifact.json``, the network, and for speech the alphabet."""

    def __init__(self, folder: str | Path = HERE, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "artifact.json").read_text())
        self.format = self.meta["format"]
        path = str(self.folder / self.meta["model"])
        if self.format == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise SystemExit("error: this model needs onnxruntime: pip install onnxruntime") from None
            options = onnxruntime.SessionOptions()
            options.enable_cpu_mem_arena = False  # the arena keeps the largest batch's memory for good
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.module = torch.export.load(path).module() if self.format == "torch_export" else torch.jit.load(path)
        tokenizer = self.meta.get("tokenizer")
        self.symbols = None
        if tokenizer:
            self.symbols = ["", *json.loads((self.folder / tokenizer).read_text())["symbols"]]  # 0: the CTC blank

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    def run(self, inputs: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """The model's outputs for a padded batch ``inputs [B, S, ...]`` with ``lengths [B]``."""
        pad = int(self.meta["pad_to"]) - inputs.shape[1]
        if pad > 0:  # the graph is exported for batches at least this long; padding changes no output
            inputs = np.pad(inputs, [(0, 0), (0, pad)] + [(0, 0)] * (inputs.ndim - 2))
        lengths = np.asarray(lengths, dtype=np.int64)
        if self.format == "onnx":
            names = [i.name for i in self.session.get_inputs()]
            feed = dict(zip(names, (inputs, lengths)))
            return list(self.session.run(None, feed))
        import torch

        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(lengths))
        return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]

    def read(self, path: str | Path) -> np.ndarray:
        """A mono float32 waveform at the model's sample rate; ValueError naming the file otherwise."""
        try:
            audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:  # soundfile raises several types for bad files
            raise ValueError(f"{path}: cannot read audio ({exc})") from None
        if rate != self.sample_rate:
            raise ValueError(f"{path}: sample rate {rate} Hz; the model takes {self.sample_rate} Hz: resample the file "
                             "(or transcribe it with python -m framework.transcribe, which resamples)")
        audio = audio.mean(1)
        if len(audio) < int(self.meta["min_samples"]):
            raise ValueError(f"{path}: {len(audio)} samples, shorter than the {self.meta['min_samples']} the model needs")
        if not np.isfinite(audio).all():
            raise ValueError(f"{path}: contains NaN or infinite samples")
        return audio

    def transcribe(self, waveforms: list[np.ndarray], batch_size: int = 8) -> list[str]:
        """Greedy transcripts of mono waveforms, batched by length."""
        order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))
        texts = [""] * len(waveforms)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            lengths = np.array([len(waveforms[i]) for i in chosen], dtype=np.int64)
            batch = np.zeros((len(chosen), int(lengths.max())), dtype=np.float32)
            for row, i in enumerate(chosen):
                batch[row, : lengths[row]] = waveforms[i]
            log_probs, frames = self.run(batch, lengths)[:2]
            for row, i in enumerate(chosen):
                texts[i] = greedy_text(log_probs[row, : frames[row]], self.symbols)
        return texts


def greedy_text(log_probs: np.ndarray, symbols: list[str]) -> str:
    """Best path decoding of ``[T, C]``: each frame's best label, repeats merged, blanks (0)
    removed; whitespace collapsed."""
    best = log_probs.argmax(-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return " ".join("".join(symbols[i] for i in best[keep & (best != 0)]).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python inference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="audio files (speech), or .npy arrays of inputs (a classifier)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    args = parser.parse_args(argv)
    artifact = Artifact(HERE, args.threads)
    failed = 0
    if artifact.meta["task"] == "ctc":
        paths, waveforms = [], []
        for path in args.files:
            try:
                waveforms.append(artifact.read(path))
                paths.append(path)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
        for path, text in zip(paths, artifact.transcribe(waveforms, args.batch_size)):
            print(f"{path}\t{text}")
    else:
        for path in args.files:
            try:
                inputs = np.load(path)
            except Exception as exc:
                print(f"error: {path}: cannot read a numpy array ({exc})", file=sys.stderr)
                failed += 1
                continue
            logits = artifact.run(inputs, np.full(len(inputs), inputs.shape[1], dtype=np.int64))[0]
            for row, label in enumerate(logits.argmax(-1)):
                print(f"{path}\t{row}\t{label}")
    if failed:
        print(f"error: {failed} of {len(args.files)} files failed (named above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
