"""Re-opening a finished run: its config, datasets and Brain, for evaluation and inference.

A run directory that cannot be written (an archived, read-only run) is evaluated and
transcribed without writing into it: no TensorBoard events (here), no log file
(:func:`framework.trainer.logs.setup_file_logging`), no test transcripts (the ASR recipe),
each said in one warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from framework.brain import Brain
from framework.config.compose import add_code_dir
from framework.errors import UserError
from framework.process import start_process
from framework.trainer.distributed import DistEnv

log = logging.getLogger(__name__)


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """A training run's saved config with ``key=value`` overrides applied, checked like a
    training config."""
    from framework.config import ConfigError, validate

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found: {run_dir} is not a run directory of framework.train")
    cfg = OmegaConf.load(path)
    values = []
    for override in overrides or []:
        choice = _group_choice(override)
        if choice is None:
            values.append(override)
        else:
            cfg[choice[0]] = choice[1]
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(values))
    except Exception as exc:
        raise ConfigError(f"overrides {' '.join(values)}: {exc}") from None
    cfg.run_dir = str(run_dir)
    cfg.trainer.resume = None
    add_code_dir(cfg.get("code_dir"))  # a recipe kept outside the package
    validate(cfg)
    return cfg


def _group_choice(override: str) -> tuple[str, DictConfig] | None:
    """``group=option`` (e.g. ``decoder=beam``): the option's node from the framework's
    config groups; None for a ``key=value`` override."""
    from framework.config import ConfigError, compose_command_line
    from framework.paths import CONF_DIR

    key, _, value = override.partition("=")
    if "." in key or not key.isidentifier() or not (CONF_DIR / key).is_dir():
        return None
    if not (CONF_DIR / key / f"{value}.yaml").is_file():
        options = ", ".join(sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml")))
        raise ConfigError(f"{key}={value}: no such option in conf/{key}/; available: {options}")
    return key, compose_command_line([override])[key]


def open_brain(cfg: DictConfig, log_name: str, run_dir: str | Path | None = None, dist: DistEnv | None = None) -> Brain:
    """The run's Brain subclass, built for ``run_dir`` (default ``cfg.run_dir``). Without
    ``dist`` the process is set up first (:func:`framework.process.start_process`: log file
    ``<log_name>.log``, threads, the process group under torchrun)."""
    run_dir = Path(run_dir or cfg.run_dir)
    if dist is None:
        dist = start_process(cfg, run_dir, log_name)
    add_code_dir(cfg.get("code_dir"))  # a recipe kept outside the package
    if cfg.get("logger") is not None and cfg.logger.get("tensorboard") and not os.access(run_dir, os.W_OK):
        log.warning("%s is not writable: TensorBoard events are not written", run_dir)
        cfg.logger.tensorboard = False
    return get_class(cfg.brain._target_)(cfg, run_dir=run_dir, dist=dist)
