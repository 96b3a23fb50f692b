"""One run, start to end: seed, run directory, data, Brain, fit, test.

``run(cfg)`` is what ``python -m framework.train`` executes for each (multi)run job; it
returns the monitored validation metric so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from framework.config.check import validate
from framework.run_dir import open_brain
from framework.trainer import distributed

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_datasets(cfg: DictConfig, is_main: bool = True) -> dict[str, object]:
    """Runs ``dataset.prepare`` once (on rank 0, the others wait), then builds each split."""
    if cfg.dataset.get("prepare") is not None:
        if is_main:
            instantiate(cfg.dataset.prepare)
        distributed.barrier()
    return {split: instantiate(cfg.dataset[split]) for split in ("train", "valid", "test") if cfg.dataset.get(split) is not None}


def run(cfg: DictConfig) -> float | None:
    validate(cfg)  # before anything is built: typos and wrong types fail here
    env = distributed.init_distributed(cfg.trainer.device)
    # rank 0 chose the run directory (Hydra); every rank uses that one
    run_dir = Path(distributed.broadcast_object(str(cfg.run_dir)))
    seed_everything(cfg.seed)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "config.yaml.tmp"
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tmp.replace(run_dir / "config.yaml")
    datasets = build_datasets(cfg, env.is_main)
    brain = open_brain(cfg, "train", run_dir)
    metrics = brain.fit(datasets["train"], datasets.get("valid"))
    if "test" in datasets:
        metrics.update(brain.evaluate(datasets["test"]))
    brain.logger.close()
    summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    log.info("finished in %s: %s", run_dir, summary)
    monitor = f"valid_{cfg.trainer.checkpoint.monitor}"
    if env.is_main:  # for sweep summaries and scripts
        result = {"metrics": metrics, "monitor": monitor, "mode": cfg.trainer.checkpoint.mode}
        tmp = run_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(run_dir / "metrics.json")
    return metrics.get(monitor)
