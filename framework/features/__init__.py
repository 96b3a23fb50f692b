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


def build_features(cfg, device):
    """``cfg.features`` with the run's augmentation (``cfg.augment``) inside, on ``device``;
    None for a run without features."""
    from hydra.utils import instantiate

    if not cfg.get("features"):
        return None
    augmentation = instantiate(cfg.augment) if cfg.get("augment") else None
    return instantiate(cfg.features, augmentation=augmentation).to(device)


__all__ = ["FeaturePipeline", "build_features", "GlobalNorm", "UtteranceNorm", "fbank", "mel", "mfcc", "raw", "spectrogram"]
