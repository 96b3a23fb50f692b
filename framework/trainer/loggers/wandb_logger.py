"""Weights & Biases: history, config, summary and files of a W&B run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from framework.trainer.loggers.base import MissingExtra, Tracker, save_run_id, saved_run_id
from framework.trainer.loggers.sender import BackgroundSender


class WandbLogger(Tracker):
    """One W&B run per run directory, its files under ``<run dir>/wandb``; the jobs of a sweep
    share a group named after the sweep directory. ``mode`` null: ``WANDB_MODE`` (``offline``
    keeps everything local until ``wandb sync``). A resumed run and ``framework.evaluate``
    continue the same W&B run (its id is kept in ``trackers.json``). W&B's calls run on a
    thread of their own: the run starts without holding training up, and a failure costs one
    warning. W&B keeps a run's history in step order, so values of an earlier step (the test
    metrics of an earlier best checkpoint) go to the run's summary."""

    def __init__(self, run_dir: str | Path, name: str | None = None, group: str | None = None,
                 project: str = "framework", entity: str | None = None, mode: str | None = None,
                 tags: list[str] | None = None, close_timeout_s: float = 120.0) -> None:
        super().__init__(run_dir, name, group)
        try:
            import wandb
        except ImportError:
            raise MissingExtra("wandb", "wandb", "logger=wandb (loggers.wandb)") from None
        self.wandb = wandb
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])
        self.sender = BackgroundSender("wandb", close_timeout_s=close_timeout_s)
        self.run: Any = None
        self.history_step = -1  # the newest step in the run's history (the sender's thread only)
        self.step = 0

    def _open(self) -> Any:
        if self.run is None:
            saved = saved_run_id(self.run_dir, "wandb")
            run_id = saved["id"] if saved and saved.get("project") == self.project else None
            self.run = self.wandb.init(
                project=self.project, entity=self.entity, group=self.group, name=self.name, tags=self.tags,
                dir=str(self.run_dir), mode=self.mode, id=run_id, resume="allow" if run_id else None,
                settings=self.wandb.Settings(console="off"),  # the run's own log files keep the console
            )
            save_run_id(self.run_dir, "wandb", {"id": self.run.id, "project": self.project})
        return self.run

    def _log(self, values: dict[str, float], step: int) -> None:
        run = self._open()
        if step >= self.history_step:
            run.log(values, step=step)
            self.history_step = step
        else:
            run.summary.update(values)

    def scalars(self, values: dict[str, float], step: int) -> None:
        values = dict(values)
        self.sender.submit(lambda: self._log(values, step), step, values=len(values))
        self.step = max(self.step, step)  # the final metrics go at the last training step

    def hyperparams(self, params: dict[str, Any]) -> None:
        params = dict(params)
        self.sender.submit(lambda: self._open().config.update(params, allow_val_change=True), self.step,
                           values=len(params))

    def artifact(self, path: Path) -> None:
        # files in the run's own folder are W&B's files of the run (a copy: the file as it is now)
        self.sender.submit(lambda: shutil.copy2(path, Path(self._open().dir) / path.name), self.step, files=1)

    def finish(self, metrics: dict[str, float], best_checkpoint: Path | None) -> None:
        summary = {**metrics, **({"best_checkpoint": str(best_checkpoint)} if best_checkpoint is not None else {})}
        self.sender.submit(lambda: self._open().summary.update(summary), self.step, values=len(summary))

    def close(self, error: BaseException | None = None) -> str | None:
        exit_code = 0 if error is None else getattr(error, "exit_code", 1)  # W&B marks a run failed by it

        def end() -> None:
            if self.run is not None:
                self.run.finish(exit_code=exit_code)

        if self.sender.submitted:  # a process that recorded nothing has no W&B run to end
            self.sender.submit(end, self.step)
        return self.sender.close()
