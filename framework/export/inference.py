"""Runs the exported model in this folder; needs numpy and soundfile, and onnxruntime (``model.onnx``)
or torch (``model.pt2``, ``model.ts``), not the framework that trained it.

    python inference.py audio.wav [more.flac ...] [--batch-size 8] [--threads N]

prints ``file<TAB>transcript`` for a speech recognition model (greedy decoding, CTC or
transducer, with the run's units, ``tokenizer.json``), and for a classifier takes ``.npy`` arrays of inputs
(``[N, ...]`` as the model takes them) and prints ``file<TAB>row<TAB>class``. A file that
cannot be used is reported in one line and the others are still processed; the exit status
is then 2. Each file is read whole: for long recordings (chunks, timestamps) use
``python -m framework.transcribe THIS_FOLDER ...`` where the framework is installed.

From Python: ``Artifact(folder).run(inputs, lengths)`` gives the model's outputs as numpy
arrays (log-probabilities ``[B, T, C]`` and frame counts for CTC; a transducer's encoder
frames ``[B, T, J]`` and their counts, which ``.search`` decodes through its prediction
network and joiner, ``.predict`` and ``.join``), ``.transcribe(waveforms)`` the transcripts. ``artifact.json`` describes the model, its inputs and the parity check made
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
    """An exported model folder: ``artifact.json``, the graphs, and for speech the alphabet."""

    def __init__(self, folder: str | Path = HERE, threads: int | None = None) -> None:
        self.folder = Path(folder)
        if not (self.folder / "artifact.json").is_file():
            raise FileNotFoundError(f"{self.folder} is not an exported model folder (no artifact.json); write one with "
                                    "python -m framework.export RUN_DIR --format ...")
        self.meta = json.loads((self.folder / "artifact.json").read_text())
        self.format = self.meta["format"]
        self.threads = threads
        self.model = self.load(self.meta["model"])
        self.transducer = self.meta.get("transducer")
        if self.transducer:
            self.predictor = self.load(self.transducer["predictor"])
            self.joiner = self.load(self.transducer["joiner"])
        tokenizer = self.meta.get("tokenizer")
        self.symbols = None
        if tokenizer:
            self.symbols = ["", *json.loads((self.folder / tokenizer).read_text())["symbols"]]  # 0: the blank

    def load(self, name: str):
        """One graph of the folder as a function of numpy arrays to a list of numpy arrays."""
        path = str(self.folder / name)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: the exported model folder is incomplete; export it again")
        if self.format == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise SystemExit("error: this model needs onnxruntime: pip install onnxruntime") from None
            options = onnxruntime.SessionOptions()
            options.enable_cpu_mem_arena = False  # the arena keeps the largest batch's memory for good
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return lambda *arrays: list(session.run(None, dict(zip(names, arrays))))
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        module = torch.export.load(path).module() if self.format == "torch_export" else torch.jit.load(path)

        def run(*arrays: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                outputs = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
            return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]

        return run

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    def run(self, inputs: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """The model's outputs for a padded batch ``inputs [B, S, ...]`` with ``lengths [B]``
        (a transducer's: its encoder's frames and their counts)."""
        pad = int(self.meta["pad_to"]) - inputs.shape[1]
        if pad > 0:  # the graph is exported for batches at least this long; padding changes no output
            inputs = np.pad(inputs, [(0, 0), (0, pad)] + [(0, 0)] * (inputs.ndim - 2))
        return self.model(inputs, np.asarray(lengths, dtype=np.int64))

    # ------------------------------------------------------------------ a transducer's steps
    def initial_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """The prediction network's LSTM state before any label: zeros ``[layers, B, hidden]``."""
        layers, hidden = self.transducer["state"]
        return np.zeros((layers, batch, hidden), np.float32), np.zeros((layers, batch, hidden), np.float32)

    def predict(self, labels: np.ndarray, state: tuple[np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The prediction network after one more label a row: ``[B, J]`` and the new state."""
        prediction, h, c = self.predictor(np.asarray(labels, dtype=np.int64), *state)
        return prediction, (h, c)

    def join(self, encodings: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        """The joiner's label scores ``[N, V]`` for ``N`` (frame, prediction) pairs ``[N, J]``."""
        return self.joiner(np.ascontiguousarray(encodings), np.ascontiguousarray(predictions))[0]

    def search(self, encodings: np.ndarray, frames: np.ndarray) -> list[list[int]]:
        """Greedy transducer decoding of a batch of encoder frames ``[B, T, J]``: at each frame
        the best label is emitted and the prediction network advanced until the blank (0)
        wins, at most ``max_symbols_per_frame`` labels a frame. Label ids of each row."""
        batch = len(encodings)
        hyps: list[list[int]] = [[] for _ in range(batch)]
        prediction, state = self.predict(np.zeros(batch, np.int64), self.initial_state(batch))  # the blank starts
        for t in range(int(frames.max()) if batch else 0):
            active = t < frames  # rows that still have frame t
            for _ in range(int(self.transducer["max_symbols_per_frame"])):
                best = self.join(encodings[:, t], prediction).argmax(-1)
                emit = active & (best != 0)
                if not emit.any():
                    break
                for i in np.flatnonzero(emit):
                    hyps[i].append(int(best[i]))
                new_prediction, new_state = self.predict(best, state)
                prediction = np.where(emit[:, None], new_prediction, prediction)  # the others stay where they were
                state = tuple(np.where(emit[None, :, None], new, old) for new, old in zip(new_state, state))
                active = emit  # only a row that emitted may emit again at this frame
        return hyps

    # ------------------------------------------------------------------ files
    def read(self, path: str | Path) -> np.ndarray:
        """A mono float32 waveform at the model's sample rate; ValueError naming the file otherwise."""
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
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
            outputs, frames = self.run(batch, lengths)[:2]
            if self.transducer:
                for i, ids in zip(chosen, self.search(outputs, frames)):
                    texts[i] = spelled(ids, self.symbols)
            else:
                for row, i in enumerate(chosen):
                    texts[i] = greedy_text(outputs[row, : frames[row]], self.symbols)
        return texts


def spelled(ids, symbols: list[str]) -> str:
    """The text of label ids, whitespace collapsed (a subword piece that starts a word spells
    its leading space)."""
    return " ".join("".join(symbols[i] for i in ids).split())


def greedy_text(log_probs: np.ndarray, symbols: list[str]) -> str:
    """Best path decoding of ``[T, C]``: each frame's best label, repeats merged, blanks (0)
    removed; whitespace collapsed."""
    best = log_probs.argmax(-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return spelled(best[keep & (best != 0)], symbols)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python inference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="audio files (speech), or .npy arrays of inputs (a classifier)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--batch-size and --threads must be at least 1")
    try:
        artifact = Artifact(HERE, args.threads)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    if artifact.meta["task"] in ("ctc", "transducer"):
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
