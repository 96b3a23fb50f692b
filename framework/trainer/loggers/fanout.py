"""``brain.logger``: every tracker the config chooses, receiving the same events."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from framework.config.schema import LoggerConfig, typed
from framework.trainer.checkpoint import CheckpointError, whole_checkpoint
from framework.trainer.loggers.base import Tracker, flatten, sweep_group

log = logging.getLogger(__name__)
# the files of a run directory that make up its result, sent at the end to the trackers that keep files
RESULT_FILES = ("config.yaml", "metrics.json", "*.tsv", "*.png")
SWEEP_FILES = ("summary.md", "summary.csv", "summary.png")


class Loggers:
    """The trackers of ``loggers.*`` (``logger=tensorboard|csv|mlflow|wandb|many`` chooses
    them), built on rank 0 only, with the shared settings of ``logger.*``
    (:class:`~framework.config.schema.LoggerConfig`). Each event goes to every tracker."""

    def __init__(self, trackers: dict[str, Tracker], run_dir: Path, log_every_n_steps: int = 10,
                 upload_checkpoint: bool = False) -> None:
        self.trackers = trackers
        self.run_dir = Path(run_dir)
        self.log_every_n_steps = log_every_n_steps
        self.upload_checkpoint = upload_checkpoint

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: str | Path, enabled: bool = True, name: str | None = None,
                    group: str | None = None) -> Loggers:
        """``enabled`` false (ranks other than 0): no tracker. ``group``: the sweep's (found
        from Hydra when not given)."""
        options = typed(LoggerConfig, cfg.get("logger") or {})
        trackers: dict[str, Tracker] = {}
        if enabled:
            group = group or sweep_group()
            for key, node in (cfg.get("loggers") or {}).items():
                if node is None or (key == "tensorboard" and not options.tensorboard):
                    continue
                trackers[str(key)] = instantiate(node, run_dir=Path(run_dir), name=name, group=group,
                                                 _convert_="all")
        return cls(trackers, Path(run_dir), options.log_every_n_steps, options.upload_checkpoint)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers.values():
            tracker.scalars(values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        for tracker in self.trackers.values():
            tracker.text(tag, text, step)

    def hyperparams(self, config: DictConfig | dict[str, Any]) -> None:
        """The run's config, resolved and flattened to dotted keys."""
        if not self.trackers:
            return
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        params = flatten(config)
        for tracker in self.trackers.values():
            tracker.hyperparams(params)

    def artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file():
            for tracker in self.trackers.values():
                tracker.artifact(path)

    def finish(self, metrics: dict[str, float], best_checkpoint: Path | None = None) -> None:
        """The run ended as planned: the result files of the run directory, the best
        checkpoint (its file with ``logger.upload_checkpoint``; a sharded one read whole into
        one file first), the final metrics as ``final/<name>``; then :meth:`close`."""
        for pattern in RESULT_FILES:
            for path in sorted(self.run_dir.glob(pattern)):
                self.artifact(path)
        with ExitStack() as uploads:  # a whole copy of a sharded checkpoint lives until the trackers have sent it
            if best_checkpoint is not None and self.upload_checkpoint and self.trackers:
                try:
                    self.artifact(uploads.enter_context(whole_checkpoint(best_checkpoint)))
                except (CheckpointError, OSError) as exc:  # the run is trained and scored: say so, send the rest
                    log.warning("the best checkpoint was not uploaded: %s", exc)
            final = {f"final/{k}": float(v) for k, v in metrics.items()}
            for tracker in self.trackers.values():
                tracker.finish(final, best_checkpoint)
            self.close()

    def flush(self) -> None:
        for tracker in self.trackers.values():
            tracker.flush()

    def close(self, error: BaseException | None = None) -> None:
        """Ends every tracked run (as stopped or failed with ``error``) and says what a
        tracker could not record."""
        trackers, self.trackers = self.trackers, {}
        for tracker in trackers.values():
            unsent = tracker.close(error)
            if unsent:
                log.warning("%s", unsent)


def attach_sweep_summary(cfg: DictConfig, sweep_dir: Path) -> None:
    """A sweep's summary, as a run named ``summary`` in the sweep's group, for the trackers
    that keep files (MLflow, W&B)."""
    loggers = Loggers.from_config(cfg, sweep_dir, name="summary", group=sweep_dir.name)
    for name in SWEEP_FILES:
        loggers.artifact(sweep_dir / name)
    loggers.close()
