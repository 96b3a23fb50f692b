"""Sweeps: a summary of every job when a multirun ends, and a resumable Optuna sweeper.

Each job of ``python -m framework.train -m ...`` writes ``metrics.json`` to its run dir
(:func:`framework.experiment.run`). When the sweep ends, :class:`SweepSummary` (a Hydra
callback, enabled in ``conf/train.yaml``) gathers them into ``summary.csv`` and
``summary.md`` (best first) and plots the monitored metric against each swept value in
``summary.png``, all in the sweep directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, status and final metrics."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": int(job.name)}
        for item in overrides:
            key, _, value = str(item).partition("=")
            row[key.lstrip("+~")] = value
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            result = json.loads(metrics_file.read_text())
            row.update(result["metrics"])
            row["status"] = "done"
            row["_monitor"], row["_mode"] = result["monitor"], result["mode"]
        else:
            row["status"] = "failed or unfinished"
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
    keys = sorted({k for r in rows for k in r if k not in ("job", "status") and not k.startswith("_")
                   and not isinstance(r[k], float)})
    # overrides shared by every job say nothing about the ranking; keep those that vary
    swept = [k for k in keys if len({str(r.get(k)) for r in rows}) > 1] or keys
    metrics = sorted({k for r in done for k, v in r.items() if isinstance(v, float)},
                     key=lambda k: (k != monitor, k))
    columns = ["job", *swept, *metrics, "status"]
    tmp = sweep_dir / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, sweep_dir / "summary.csv")

    def cell(v: Any) -> str:
        return "" if v is None else _four_digits(v)

    lines = [f"Sweep {sweep_dir}: {len(done)} of {len(rows)} jobs finished"
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


def missing_search_keys(params: Any, cfg: DictConfig) -> list[str]:
    """The keys of a sweeper's search space (``hydra.sweeper.params``) that the job's config
    does not have: a search over them would only run failing jobs."""
    missing = []
    for key in (params or {}):
        key = str(key)
        if key.startswith("+"):
            continue  # added on purpose
        if OmegaConf.select(cfg, key.lstrip("~"), default=_ABSENT, throw_on_missing=False) is _ABSENT:
            missing.append(key)
    return missing


_ABSENT = object()


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
    """Writes the sweep summary when a multirun ends (also after failed jobs)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(write_summary(sweep_dir))
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

            from framework.config.check import ConfigError

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
