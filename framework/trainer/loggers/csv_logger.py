"""CSV: one file per stage, for pandas and spreadsheets."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, TextIO

from framework.files import write_text_atomic
from framework.trainer.loggers.base import Tracker


def stage_of(tag: str) -> str:
    """The file a tag goes to: ``train/loss`` -> train, ``epoch/valid_cer`` -> epoch, ``test_cer`` -> test."""
    return re.split(r"[/_]", tag, maxsplit=1)[0] or "other"


class CSVLogger(Tracker):
    """Under ``run_dir/<subdir>``: ``train.csv`` (every logged step), ``epoch.csv`` (each
    epoch's training and validation figures), ``test.csv``, ``final.csv`` (the final metrics
    and the best checkpoint), each with a ``step`` column and one column per tag; the
    hyperparameters in ``hparams.csv`` (key, value). Rows are written as they come."""

    def __init__(self, run_dir: str | Path, name: str | None = None, group: str | None = None,
                 subdir: str = "csv") -> None:
        super().__init__(run_dir, name, group)
        self.directory = self.run_dir / subdir
        self.tables: dict[str, _Table] = {}
        self.step = 0

    def scalars(self, values: dict[str, float], step: int) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            rows.setdefault(stage_of(key), {})[key] = value
        for stage, row in rows.items():
            if stage not in self.tables:
                self.tables[stage] = _Table(self.directory / f"{stage}.csv")
            self.tables[stage].add(step, row)
        self.step = max(self.step, step)  # the final metrics go at the last training step

    def hyperparams(self, params: dict[str, Any]) -> None:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["key", "value"])
        writer.writerows(params.items())
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.directory / "hparams.csv", out.getvalue())

    def finish(self, metrics: dict[str, float], best_checkpoint: Path | None) -> None:
        extra = {"final/best_checkpoint": str(best_checkpoint)} if best_checkpoint is not None else {}
        self.scalars({**metrics, **extra}, self.step)

    def close(self, error: BaseException | None = None) -> str | None:
        for table in self.tables.values():
            table.close()
        self.tables.clear()
        return None


class _Table:
    """One CSV file: ``step``, then a column per tag. A tag first seen later widens the
    header (the file is rewritten once). The first row a process writes replaces the file's
    rows at and after its step: a resumed run does those steps again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self.file: TextIO | None = None

    def add(self, step: int, row: dict[str, Any]) -> None:
        if self.file is None:
            columns, rows = self._read()
            self._rewrite(columns or ["step"], [r for r in rows if float(r["step"]) < step], row)
        elif any(key not in self.columns for key in row):
            self.file.close()
            columns, rows = self._read()
            self._rewrite(columns, rows, row)
        csv.DictWriter(self.file, self.columns, restval="").writerow({"step": step, **row})
        self.file.flush()  # readable while the run goes on, and complete if it is killed

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        if not self.path.is_file():
            return [], []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, columns: list[str], rows: list[dict[str, str]], row: dict[str, Any]) -> None:
        self.columns = columns + [key for key in row if key not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, out.getvalue())
        self.file = open(self.path, "a", newline="")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
