"""Re-opening a finished run: its config, datasets and Brain, for evaluation and inference."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from framework.brain import Brain
from framework.cli import add_code_dir
from framework.errors import UserError
from framework.trainer.distributed import DistEnv


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """A training run's saved config with ``key=value`` overrides applied, checked like a
    training config."""
    from framework.config.check import ConfigError, validate

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found: {run_dir} is not a run directory of framework.train")
    cfg = OmegaConf.load(path)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or [])))
    except Exception as exc:
        raise ConfigError(f"overrides {' '.join(overrides or [])}: {exc}") from None
    cfg.run_dir = str(run_dir)
    cfg.trainer.resume = None
    add_code_dir(cfg.get("code_dir"))  # a recipe kept outside the package
    validate(cfg)
    return cfg


def open_brain(cfg: DictConfig, log_name: str, run_dir: str | Path | None = None, dist: DistEnv | None = None) -> Brain:
    """The run's Brain subclass, built for ``run_dir`` (default ``cfg.run_dir``)."""
    add_code_dir(cfg.get("code_dir"))  # a recipe kept outside the package
    return get_class(cfg.brain._target_)(cfg, run_dir=run_dir or cfg.run_dir, log_name=log_name, dist=dist)
