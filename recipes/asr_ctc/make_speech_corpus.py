"""Synthesises the small English speech corpus in ``recipes/asr_ctc/speech/`` with espeak-ng.

    apt-get install espeak-ng && python recipes/asr_ctc/make_speech_corpus.py

480 utterances of 1-3 common English words, spoken by 6 espeak-ng English voices with
5 voice variants, at random speed and pitch; 16 kHz FLAC plus SpeechBrain-style JSON
manifests (train 400 / valid 40 / test 40). The corpus is committed, so training needs
neither espeak-ng nor a network; this script documents how it was made.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from framework.data.synthetic import WORDS

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m3", "m7", "f2", "f4"]
OUT = Path(__file__).resolve().parent / "speech"


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return AF.resample(torch.from_numpy(audio), rate, 16000).numpy()


def main(seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", 400), ("valid", 40), ("test", 40)):
        (OUT / split).mkdir(parents=True, exist_ok=True)
        manifest = {}
        for i in range(count):
            text = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
            voice = f"{rng.choice(VOICES)}+{rng.choice(VARIANTS)}"
            audio = speak(text, voice, int(rng.integers(140, 200)), int(rng.integers(30, 70)))
            audio = audio / max(1e-3, np.abs(audio).max()) * rng.uniform(0.3, 0.9)
            uid = f"{split}-{i:04d}"
            soundfile.write(OUT / split / f"{uid}.flac", audio, 16000, subtype="PCM_16")
            manifest[uid] = {"wav": f"{{data_root}}/{split}/{uid}.flac", "duration": round(len(audio) / 16000, 4),
                             "words": text, "voice": voice}
        (OUT / f"{split}.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
