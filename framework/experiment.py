"""One run, start to end: seed, run directory, data, Brain, fit, test.

``run(cfg)`` is what ``python -m framework.train`` executes for each (multi)run job; it
returns the monitored validation metric so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import json
import logging
import random
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from framework.config import ConfigError, split_given, validate
from framework.config.compose import add_code_dir
from framework.config.schema import trainer_options
from framework.data.manifest import building_split
from framework.files import write_text_atomic
from framework.process import start_process
from framework.run_dir import open_brain
from framework.trainer import distributed
from framework.trainer.logs import format_metrics
from framework.trainer.run_lock import RunLock
from framework.trainer.stopping import StopRequested

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_datasets(cfg: DictConfig, is_main: bool = True) -> dict[str, object]:
    """Runs ``dataset.prepare`` once (on rank 0, the others wait), then builds each split.
    A split that is null, or whose ``path`` is null, is left out. Datasets of precomputed
    features set the run's feature extractor (:func:`take_recorded_features`)."""
    if cfg.dataset.get("prepare") is not None:
        if is_main:
            instantiate(cfg.dataset.prepare)
        distributed.barrier()
    datasets = {}
    for split in SPLITS:
        if split_given(cfg, split):
            with building_split(split):  # its errors name dataset.<split>'s overrides
                datasets[split] = instantiate(cfg.dataset[split])
    for split, dataset in datasets.items():
        take_recorded_features(cfg, dataset, f"dataset.{split}")
    return datasets


def take_recorded_features(cfg: DictConfig, dataset: object, where: str) -> None:
    """Features computed ahead (an HDF5 file packed with ``--features``) come with the
    extractor config that made them: with ``features=none`` the run takes it (so the model
    gets the right number of bins and inference on audio computes the same features); a
    different extractor is refused, since the model would be built for features it never gets."""
    recorded = getattr(dataset, "feature_config", None)
    if recorded is None or cfg.get("features") is None:
        return
    chosen = OmegaConf.to_container(cfg.features.extractor, resolve=True)
    if chosen.get("_target_") == "framework.features.raw":
        with open_dict(cfg):
            cfg.features.extractor = recorded
        log.info("features: the extractor recorded in %s (%s)", where, recorded)
    elif any(chosen.get(k) != v for k, v in recorded.items()):
        path = getattr(dataset, "path", where)
        raise ConfigError(f"features.extractor {chosen} differs from the features {path} holds ({recorded}); use "
                          "features=none to train on the file's features, or pack the data again with these")


def run(cfg: DictConfig, sweep_job: bool = False) -> float | None:
    add_code_dir(cfg.get("code_dir"))  # a recipe kept outside the package
    validate(cfg)  # before anything is built: typos, wrong types, values out of range
    env = distributed.init_distributed(trainer_options(cfg.trainer).device)
    # rank 0 chose the run directory (Hydra); every rank uses that one
    run_dir = Path(distributed.broadcast_object(str(cfg.run_dir)))
    seed_everything(cfg.seed)
    lock = RunLock(run_dir).acquire() if env.is_main else None  # one training run per run directory
    try:
        start_process(cfg, run_dir, "train")
        datasets = build_datasets(cfg, env.is_main)  # may take the features recorded in the data
        brain = open_brain(cfg, "train", run_dir, dist=env)
        if sweep_job:
            brain.resume_hint = (f"rerun this job alone with trainer.resume=auto hydra.run.dir={run_dir} and its "
                                 f"overrides ({run_dir}/.hydra/overrides.yaml)")
        try:
            metrics = brain.fit(datasets["train"], datasets.get("valid"))
            if "test" in datasets:
                metrics.update(brain.evaluate(datasets["test"]))
        except BaseException as exc:
            brain.logger.close(exc)  # the tracked run ends as stopped or failed
            if isinstance(exc, StopRequested):  # every rank stops at the same step, checkpointed
                del brain  # its own frames in the traceback hold it too
                traceback.clear_frames(exc.__traceback__)
                distributed.shutdown()
            raise
        log.info("finished in %s: %s", run_dir, format_metrics(metrics))
        monitor = f"valid_{cfg.trainer.checkpoint.monitor}"
        if env.is_main:  # for sweep summaries and scripts
            result = {"metrics": metrics, "monitor": monitor, "mode": cfg.trainer.checkpoint.mode,
                      "history": brain.history}
            write_text_atomic(run_dir / "metrics.json", json.dumps(result, indent=1))
        brain.logger.finish(metrics, brain.state.files.best())
        del brain  # before the process group ends (distributed.shutdown says why)
        distributed.shutdown()
        return metrics.get(monitor)
    finally:
        if lock is not None:
            lock.release()
