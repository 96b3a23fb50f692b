"""Feature extraction on torchaudio: spectrogram, mel/fbank, MFCC or raw audio;
normalisation; SpecAugment. See :mod:`framework.features.pipeline`."""

from framework.features.pipeline import (
    FeaturePipeline,
    GlobalNorm,
    SpecAugment,
    UtteranceNorm,
    fbank,
    mel,
    mfcc,
    raw,
    spectrogram,
)

__all__ = ["FeaturePipeline", "GlobalNorm", "SpecAugment", "UtteranceNorm", "fbank", "mel", "mfcc", "raw", "spectrogram"]
