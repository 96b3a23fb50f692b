"""Sweeps: a summary of every job when a multirun ends, and a resumable Optuna sweeper.

Each job of ``python -m framework.train -m ...`` writes ``metrics.json`` to its run dir
(:func:`framework.experiment.run`). When the sweep ends, :class:`SweepSummary` (a Hydra
callback, enabled in ``conf/train.yaml``) gathers them into ``summary.csv`` and
``summary.md`` (best first) and plots the monitored metric against each swept value in
``summary.png``, all in the sweep directory.

A job that fails (:func:`run_job`) records its one-line error in ``failure.json`` in its
folder and fails for the sweeper too (Optuna records a failed trial). Hydra's basic sweeper
then stops after the batch of jobs it was running, without ending the multirun;
:func:`end_sweep` writes the summary in that case, and makes the command exit non-zero with
one line naming the failed jobs in every case.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from framework.cli import describe_error, exit_on_error
from framework.config.validate import missing_search_keys
from framework.errors import ConfigError
from framework.files import write_text_atomic

log = logging.getLogger(__name__)
FAILURE = "failure.json"  # in a failed job's folder: its one-line error and exit status


class JobFailed(CompactHydraException):
    """A sweep's job failed; its one-line error (Hydra prints it without a traceback)."""


def run_job(run: Callable[[], float | None], job_dir: Path) -> float | None:
    """One job of a sweep: ``run()``, its failure reported in one line, recorded in the job's
    folder for the summary and raised again, so the sweeper counts a failed job."""
    (job_dir / FAILURE).unlink(missing_ok=True)  # from an earlier sweep in this folder
    try:
        return exit_on_error(run, reraise=True)
    except Exception as exc:
        text, status = describe_error(exc)
        text = " ".join(text.split())  # one line in the summary's table
        write_text_atomic(job_dir / FAILURE, json.dumps({"error": text, "exit_status": status}))
        raise JobFailed(text) from exc


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, status and final metrics."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": int(job.name), "_overrides": []}
        for item in overrides:
            key, _, value = str(item).partition("=")
            row[key.lstrip("+~")] = value
            row["_overrides"].append(key.lstrip("+~"))
        metrics_file = job / "metrics.json"
        if (job / FAILURE).is_file():
            failure = json.loads((job / FAILURE).read_text())
            row["status"], row["error"], row["_exit_status"] = "failed", failure["error"], failure["exit_status"]
        elif metrics_file.is_file():
            result = json.loads(metrics_file.read_text())
            row.update(result["metrics"])
            row["_metrics"] = list(result["metrics"])
            row["status"] = "done"
            row["_monitor"], row["_mode"] = result["monitor"], result["mode"]
        else:
            row["status"] = "unfinished"
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    done = [r for r in rows if r["status"] == "done"]
    monitor = done[0]["_monitor"] if done else None
    mode = done[0]["_mode"] if done else "min"
    if monitor:
        rows.sort(key=lambda r: (r.get(monitor) is None or (isinstance(r.get(monitor), float) and math.isnan(r[monitor])),
                                 (r.get(monitor, 0) if mode == "min" else -r.get(monitor, 0))))
    swept = swept_keys(rows)
    metrics = sorted({k for r in done for k in r["_metrics"]}, key=lambda k: (k != monitor, k))
    failed = [r for r in rows if r["status"] == "failed"]
    columns = ["job", *swept, *metrics, "status"] + (["error"] if failed else [])
    tmp = sweep_dir / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, sweep_dir / "summary.csv")

    def cell(v: Any) -> str:
        return "" if v is None else _four_digits(v).replace("|", "\\|")

    lines = [f"Sweep {sweep_dir}: {len(done)} of {len(rows)} jobs finished"
             + (f", {len(failed)} failed" if failed else "")
             + (f", best first by {monitor} ({mode})" if monitor else ""), "",
             "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    tmp = sweep_dir / ".summary.md.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, sweep_dir / "summary.md")
    if monitor and done and swept:
        plot(done, swept, monitor, sweep_dir / "summary.png")
    return text


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides that vary between the jobs (all of them when none does): those shared by
    every job say nothing about the ranking."""
    keys = sorted({k for r in rows for k in r["_overrides"]})
    return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1] or keys


def end_sweep(status: int) -> int:
    """The exit status of a command whose multirun ended with ``status`` (0; Hydra's 1 after a
    failed job; 128 + signal): the summary is written if the sweeper stopped before writing
    it, and a failed job makes the status non-zero (2 when every failure was a user's
    mistake), named in one line."""
    sweep_dir, SweepSummary.sweep_dir = SweepSummary.sweep_dir, None
    if sweep_dir is None or not sweep_dir.is_dir():
        return status
    if not SweepSummary.written:
        print(write_summary(sweep_dir))
    rows = collect(sweep_dir)
    failed = [r for r in rows if r["status"] == "failed"]
    if not failed or status > 128:  # a stop signal: the job it stopped has said so
        return status
    keys = swept_keys(rows)
    jobs = "; ".join(f"job {r['job']} ({' '.join(f'{k}={r[k]}' for k in keys if k in r)}): {r['error']}" for r in failed)
    print(f"error: {len(failed)} of {len(rows)} jobs failed: {jobs} (summary: {sweep_dir / 'summary.md'})",
          file=sys.stderr)
    return 2 if all(r["_exit_status"] == 2 for r in failed) else 1


def _four_digits(value: Any) -> str:
    """Floats, and overrides that spell one (``optimizer.lr=0.0031622776601683794``), to 4 significant digits."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if not any(c in value for c in ".eE") or not math.isfinite(number):
            return value  # integers and words stay as written
        value = number
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot(rows: list[dict[str, Any]], swept: list[str], monitor: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.2), squeeze=False)
    for ax, key in zip(axes[0], swept):
        values = [r.get(key) for r in rows]
        try:
            xs = [float(v) for v in values]
            log_scale = min(xs) > 0 and max(xs) / min(xs) >= 100
        except (TypeError, ValueError):
            labels = sorted({str(v) for v in values})
            xs, log_scale = [labels.index(str(v)) for v in values], False
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, [r[monitor] for r in rows], color="#4477aa")
        if log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(monitor)
    fig.tight_layout()
    tmp = path.with_name(".summary.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


class SweepSummary(Callback):
    """Writes the sweep summary when a multirun ends (also after failed jobs); remembers the
    multirun of this process for :func:`end_sweep`."""

    sweep_dir: ClassVar[Path | None] = None
    written: ClassVar[bool] = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.sweep_dir, SweepSummary.written = Path(config.hydra.sweep.dir), False

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(write_summary(sweep_dir))
            SweepSummary.written = True
            from framework.trainer.loggers import attach_sweep_summary

            attach_sweep_summary(config, sweep_dir)  # to the trackers that keep files (MLflow, W&B)


try:  # the Optuna sweeper is an optional extra
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """Optuna through Hydra, resumable: with a storage (``sqlite:///<sweep dir>/optuna.db``)
        a sweep started again in the same sweep dir runs only the trials still missing, and
        numbers their job folders after the existing ones."""

        def sweep(self, arguments: list[str]) -> None:
            import optuna


            impl = self.sweeper
            missing = missing_search_keys(impl.params, impl.config)
            if missing:  # before the study (and its optuna.db) exists
                raise ConfigError(f"hydra.sweeper.params searches {', '.join(missing)}, which the config does not have")
            if impl.storage and str(impl.storage).startswith("sqlite:///"):
                Path(str(impl.storage)[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
                try:
                    study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
                except KeyError:
                    study = None
                if study is not None:
                    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
                    log.info("resuming study %s: %d trial(s) complete, %d to go", impl.study_name, done,
                             max(0, impl.n_trials - done))
                    impl.job_idx = len(study.trials)
                    impl.n_trials = max(0, impl.n_trials - done)
                    continue_sampling(impl.sampler, len(study.trials))
            return impl.sweep(arguments)


def continue_sampling(sampler: Any, trials_so_far: int) -> None:
    """Reseeds a freshly built sampler for a resumed study: the sequence it draws depends on
    its configured seed and the trials already in the study, so a resumed search neither
    repeats the first trials' parameters nor loses its reproducibility."""
    import numpy as np

    def states(obj: Any, seen: set[int]) -> list[tuple[Any, str]]:
        found = []
        for name, value in vars(obj).items():
            if isinstance(value, np.random.RandomState):
                found.append((obj, name))
            elif hasattr(value, "sample_independent") and id(value) not in seen:  # a nested sampler
                seen.add(id(value))
                found += states(value, seen)
        return found

    targets = states(sampler, {id(sampler)})
    if not targets:
        return
    base = int(getattr(targets[0][0], targets[0][1]).randint(0, 2**31 - 1))  # a function of the configured seed
    for i, (owner, name) in enumerate(targets):
        seed = np.random.SeedSequence([base, trials_so_far, i]).generate_state(1)[0]
        setattr(owner, name, np.random.RandomState(seed))


PLUGIN_NAME = "hydra_plugins.framework.ResumableOptunaSweeper"


def register_resumable_optuna() -> None:
    """Hydra builds sweepers only from classes in its plugin registry under a
    ``hydra_plugins.`` name; this puts ours there (when the Optuna extra is installed).
    It runs when this module is imported, which Hydra does for :class:`SweepSummary`
    before it builds the sweeper."""
    if OptunaSweeper is None:
        return
    from hydra.core.plugins import Plugins

    Plugins.instance().class_name_to_class[PLUGIN_NAME] = ResumableOptunaSweeper


register_resumable_optuna()
