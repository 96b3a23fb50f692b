"""TensorBoard: scalars, text and the HParams view in ``<run dir>/tensorboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framework.trainer.loggers.base import Tracker


class TensorBoardLogger(Tracker):
    """Events under ``run_dir/<subdir>``, from the first event on. A resumed run appends to
    the same folder, so curves continue at the resumed step. At the end the hyperparameters
    and final metrics go to the HParams view, in the run's own folder: ``tensorboard
    --logdir multirun/<sweep>`` sets a sweep's jobs side by side."""

    def __init__(self, run_dir: str | Path, name: str | None = None, group: str | None = None,
                 subdir: str = "tensorboard") -> None:
        super().__init__(run_dir, name, group)
        self.directory = self.run_dir / subdir
        self._writer: Any = None
        self.params: dict[str, Any] = {}
        self.step = 0

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.directory))
        return self._writer

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.step = max(self.step, step)  # the final metrics go at the last training step

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def hyperparams(self, params: dict[str, Any]) -> None:
        # the HParams view takes numbers, strings and booleans (and leaves out nulls)
        self.params = {k: v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in params.items()}

    def finish(self, metrics: dict[str, float], best_checkpoint: Path | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        if best_checkpoint is not None:
            self.writer.add_text("best_checkpoint", str(best_checkpoint), self.step)
        for summary in hparams(self.params, metrics):  # the experiment, this session's start and end
            self.writer.file_writer.add_summary(summary)
        for key, value in metrics.items():  # the view reads each metric from the scalar of its name
            self.writer.add_scalar(key, value, self.step)
        self.writer.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, error: BaseException | None = None) -> str | None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return None
