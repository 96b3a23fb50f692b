"""Training-time augmentation (the ``augment=`` config group): speed perturbation, quiet
padding and additive noise on waveforms, SpecAugment on features; identity in eval mode. Randomness
comes from torch's RNG only, so checkpointed RNG states make a resumed run draw the same
augmentations (``features.where=device``)."""

from framework.augment.augmentation import Augmentation
from framework.augment.noise import AddNoise
from framework.augment.quiet import QuietPadding
from framework.augment.specaugment import SpecAugment
from framework.augment.speed import SpeedPerturbation

__all__ = ["AddNoise", "Augmentation", "QuietPadding", "SpecAugment", "SpeedPerturbation"]
