"""A small speech-like corpus synthesised on the spot: words spelled in dual tones.

Each letter is a pair of sine tones (one from a low group, one from a high group, as
telephone keypads do); letters last 90-150 ms with a short fade, words are separated by
silence, and every utterance gets random loudness and background noise. Transcripts are
real English words, so CTC models learn a real alignment problem in minutes on a CPU.
The corpus is written as WAV files plus JSON manifests, the same inputs a user's corpus
would be.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile

log = logging.getLogger(__name__)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
LOW_HZ = (300.0, 420.0, 590.0, 830.0, 1160.0, 1620.0)
HIGH_HZ = (2270.0, 2840.0, 3550.0, 4440.0, 5550.0)
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first water"
).split()


def letter_tone(letter: str, duration: float, sample_rate: int) -> np.ndarray:
    k = LETTERS.index(letter)
    low, high = LOW_HZ[k % len(LOW_HZ)], HIGH_HZ[k // len(LOW_HZ)]
    t = np.arange(int(duration * sample_rate)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * low * t) + 0.5 * np.sin(2 * np.pi * high * t)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms ramps avoid clicks
    return wave * fade


def synthesize(text: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    pieces = [np.zeros(int(rng.uniform(0.05, 0.2) * sample_rate))]
    for word_index, word in enumerate(text.split()):
        if word_index:
            pieces.append(np.zeros(int(rng.uniform(0.12, 0.22) * sample_rate)))
        for letter in word:
            pieces.append(letter_tone(letter, rng.uniform(0.09, 0.15), sample_rate))
            pieces.append(np.zeros(int(rng.uniform(0.0, 0.02) * sample_rate)))
    pieces.append(np.zeros(int(rng.uniform(0.05, 0.2) * sample_rate)))
    wave = np.concatenate(pieces) * rng.uniform(0.2, 0.8)
    wave += rng.normal(0.0, rng.uniform(0.005, 0.03), size=wave.shape)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def prepare_tone_corpus(
    root: str | Path,
    splits: dict[str, int] | None = None,
    max_words: int = 3,
    sample_rate: int = 16000,
    seed: int = 1234,
) -> Path:
    """Writes ``root/{split}/*.wav`` and ``root/{split}.json`` unless already complete.

    Built in a temporary folder and renamed at the end, so an interrupted run never
    leaves a corpus that looks complete.
    """
    root = Path(root)
    splits = dict(splits or {"train": 800, "valid": 100, "test": 100})
    stamp = {"splits": splits, "max_words": max_words, "sample_rate": sample_rate, "seed": seed, "version": 1}
    done = root / "corpus.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return root
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        (tmp / split).mkdir(parents=True)
        manifest = {}
        for i in range(count):
            text = " ".join(rng.choice(WORDS, size=rng.integers(1, max_words + 1)))
            wave = synthesize(text, rng, sample_rate)
            uid = f"{split}-{i:05d}"
            soundfile.write(tmp / split / f"{uid}.wav", wave, sample_rate, subtype="PCM_16")
            manifest[uid] = {"wav": f"{{data_root}}/{split}/{uid}.wav", "duration": len(wave) / sample_rate, "words": text}
        (tmp / f"{split}.json").write_text(json.dumps(manifest, indent=1))
    (tmp / "corpus.json").write_text(json.dumps(stamp))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    log.info("wrote the tone corpus to %s (%s)", root, splits)
    return root


# ---------------------------------------------------------------------------- images
def _glyphs(size: int = 64) -> np.ndarray:
    """Digits 0-9 in three fonts that matplotlib ships, rendered once: [fonts, 10, size, size]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = np.zeros((3, 10, size, size), dtype=np.float32)
    for f, family in enumerate(("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono")):
        for d in range(10):
            fig = Figure(figsize=(1, 1), dpi=size)
            canvas = FigureCanvasAgg(fig)
            fig.text(0.5, 0.5, str(d), fontsize=size * 0.7, family=family, ha="center", va="center")
            canvas.draw()
            out[f, d] = 1.0 - np.asarray(canvas.buffer_rgba())[..., 0] / 255.0
    return out


def prepare_digit_images(root: str | Path, splits: dict[str, int] | None = None, size: int = 32, seed: int = 1234) -> Path:
    """Digit images (10 classes, 1 channel) in ``root/{split}.h5``: glyphs in three fonts
    under random rotation, scale, shift, stroke contrast and noise."""
    import torch
    import torch.nn.functional as F

    from framework.data.hdf5 import HDF5Writer

    root = Path(root)
    splits = dict(splits or {"train": 3000, "valid": 500, "test": 500})
    stamp = {"splits": splits, "size": size, "seed": seed, "version": 1}
    done = root / "digits.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return root
    root.mkdir(parents=True, exist_ok=True)
    glyphs = torch.from_numpy(_glyphs())
    g = torch.Generator().manual_seed(seed)
    for split, count in splits.items():
        fonts = torch.randint(0, 3, (count,), generator=g)
        labels = torch.randint(0, 10, (count,), generator=g)
        angle = (torch.rand(count, generator=g) - 0.5) * 0.6
        scale = 0.9 + torch.rand(count, generator=g) * 0.5
        shift = (torch.rand(count, 2, generator=g) - 0.5) * 0.3
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        src = glyphs[fonts, labels][:, None]
        grid = F.affine_grid(theta, (count, 1, size, size), align_corners=False)
        img = F.grid_sample(src, grid, align_corners=False) * (0.5 + 0.5 * torch.rand(count, 1, 1, 1, generator=g))
        img = (img + 0.15 * torch.rand(count, 1, size, size, generator=g)).clamp(0, 1)
        with HDF5Writer(root / f"{split}.h5", "images", attrs={"classes": 10}) as w:
            for i in range(count):
                w.add(f"{split}-{i:05d}", (img[i] * 255).to(torch.uint8).numpy(), 1.0, label=int(labels[i]))
    done.write_text(json.dumps(stamp))
    return root


# ----------------------------------------------------------------- sound events
def prepare_event_recording(path: str | Path, minutes: float = 10.0, sample_rate: int = 16000, events_per_minute: float = 20.0,
                            seed: int = 1234) -> Path:
    """One long recording with bird-call-like events in noise, and per-second labels (1 when
    an event covers at least 0.1 s of that second), as ``path`` (HDF5: ``audio``, ``labels``)."""
    import h5py

    path = Path(path)
    stamp = json.dumps({"minutes": minutes, "sample_rate": sample_rate, "events": events_per_minute, "seed": seed})
    if path.is_file():
        with h5py.File(path, "r") as f:
            if f.attrs.get("stamp") == stamp:
                return path
    rng = np.random.default_rng(seed)
    seconds = int(minutes * 60)
    n = seconds * sample_rate
    audio = rng.normal(0, 1, n).astype(np.float32)
    audio = np.convolve(audio, np.ones(8) / 8, mode="same") * 0.05  # dull background noise
    t_all = np.arange(n) / sample_rate
    audio += 0.02 * np.sin(2 * np.pi * 50 * t_all) * (1 + 0.5 * np.sin(2 * np.pi * 0.01 * t_all))  # mains hum
    covered = np.zeros(seconds)
    for _ in range(int(events_per_minute * minutes)):
        dur = rng.uniform(0.15, 0.8)
        start = rng.uniform(0, seconds - dur)
        m = int(dur * sample_rate)
        t = np.arange(m) / sample_rate
        f0, f1 = rng.uniform(1800, 3000), rng.uniform(3000, 5000)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur))
        call = (np.sin(phase) + 0.3 * np.sin(2 * phase)) * np.hanning(m) * rng.uniform(0.03, 0.3)
        i0 = int(start * sample_rate)
        audio[i0 : i0 + m] += call.astype(np.float32)
        for s in range(int(start), int(start + dur) + 1):
            covered[s] += max(0.0, min(s + 1, start + dur) - max(s, start))
    labels = (covered >= 0.1).astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "framework-recording"
        f.attrs["sample_rate"] = sample_rate
        f.attrs["stamp"] = stamp
        f.create_dataset("audio", data=audio, chunks=(sample_rate,))
        f.create_dataset("labels", data=labels)
    os.replace(tmp, path)
    return path
