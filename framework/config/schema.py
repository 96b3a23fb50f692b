"""Typed schemas of the config groups, registered in Hydra's ConfigStore.

Each group's YAML files extend the group's schema (``defaults: [/schema/<group>@_here_]``),
so Hydra checks every value's type and refuses keys the schema does not have, whether
they come from a YAML file, ``key=value``, ``+key=value`` or ``++key=value``.
:mod:`framework.config.check` turns those refusals into messages that suggest the
closest valid key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Annotations use typing.Optional/List: OmegaConf reads them at runtime on Python 3.10.
# ruff: noqa: UP006, UP007, UP045


@dataclass
class CheckpointConfig:
    every_epoch: bool = True
    every_n_steps: int = 0
    keep_last: int = 2
    keep_best: int = 1
    monitor: str = "loss"
    mode: str = "min"


@dataclass
class TrainerConfig:
    device: str = "auto"
    max_epochs: int = 12
    limit_batches: Optional[int] = None
    precision: str = "fp32"
    eval_precision: Optional[str] = None
    grad_accumulation: int = 1
    max_grad_norm: Optional[float] = 5.0
    num_workers: int = 0
    nonfinite_patience: int = 10
    resume: Optional[str] = None
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    activation_checkpointing: list[str] = field(default_factory=list)
    skip_oom: bool = True
    tf32: bool = False
    compile: bool = False


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    log_every_n_steps: int = 10


@dataclass
class FixedBatchingConfig:
    _target_: str = "framework.data.batching.FixedBatchSampler"
    batch_size: int = 16
    shuffle: bool = True
    drop_last: bool = False


@dataclass
class SortedBatchingConfig:
    _target_: str = "framework.data.batching.SortedBatchSampler"
    batch_size: int = 16
    descending: bool = False
    shuffle: bool = True
    drop_last: bool = False


@dataclass
class DynamicBatchingConfig:
    _target_: str = "framework.data.batching.DynamicBatchSampler"
    max_batch_length: float = 60.0
    num_buckets: Optional[int] = 20
    bucket_boundaries: Optional[list[float]] = None
    boundary_method: str = "padding"
    max_batch_ex: Optional[int] = None
    quadratic: Optional[float] = None
    shuffle: bool = True
    batch_ordering: str = "random"
    too_long: str = "drop"
    drop_last: bool = False
    mix_buckets: int = 1
    budget: str = "rank"


@dataclass
class FeaturesConfig:
    _target_: str = "framework.features.FeaturePipeline"
    extractor: Any = MISSING
    normalize: str = "utterance"
    where: str = "device"
    specaugment: Any = None


@dataclass
class ManifestSplitConfig:
    _target_: str = "framework.data.manifest.ManifestDataset"
    path: str = MISSING
    sample_rate: int = 16000
    data_root: Optional[str] = None
    replacements: Optional[dict[str, str]] = None
    audio_key: Optional[str] = None
    text_key: Optional[str] = None
    duration_key: Optional[str] = None
    samples_key: Optional[str] = None
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None
    select_n: Optional[int] = None
    resample: bool = True
    mono: bool = True
    skip_bad: bool = False


@dataclass
class HDF5SplitConfig:
    _target_: str = "framework.data.hdf5.HDF5Dataset"
    path: str = MISSING
    sample_rate: Optional[int] = None
    select_n: Optional[int] = None


SCHEMAS = {
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "batching/fixed": FixedBatchingConfig,
    "batching/sorted": SortedBatchingConfig,
    "batching/dynamic": DynamicBatchingConfig,
    "features": FeaturesConfig,
    "dataset/manifest_split": ManifestSplitConfig,
    "dataset/hdf5_split": HDF5SplitConfig,
}


def register() -> None:
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        group, _, leaf = name.rpartition("/")
        cs.store(group=f"schema/{group}" if group else "schema", name=leaf, node=node)
