"""Waveform augmentation for training: ``forward(wav [B, S], lengths [B]) -> (wav', lengths')``
with zero padding beyond the lengths; identity in eval mode. Randomness comes from torch's
global RNG only, so checkpointed RNG states make a resumed run draw the same augmentations."""

from framework.augment.noise import AddNoise
from framework.augment.speed import SpeedPerturbation

__all__ = ["AddNoise", "SpeedPerturbation"]
