"""Feature extraction on torchaudio: spectrogram, mel/fbank, MFCC or raw audio, and
normalisation; the run's augmentation inside. See :mod:`framework.features.pipeline`."""

from framework.features.pipeline import (
    FeaturePipeline,
    GlobalNorm,
    UtteranceNorm,
    fbank,
    mel,
    mfcc,
    raw,
    spectrogram,
)

__all__ = ["FeaturePipeline", "GlobalNorm", "UtteranceNorm", "fbank", "mel", "mfcc", "raw", "spectrogram"]
