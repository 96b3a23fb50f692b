"""``python -m framework.train [recipe=...] [overrides]``: compose the config, train, test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from framework.cli import exit_on_error
    from framework.experiment import run
    from framework.sweep import run_job

    if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweeper and the summary learn of a failed job
        return run_job(lambda: run(cfg, sweep_job=True), Path(cfg.run_dir))
    return exit_on_error(lambda: run(cfg))


def cli() -> None:
    from framework.cli import exit_on_error, hydra_overrides, option, report
    from framework.config import ConfigError, check_command_line
    from framework.config.compose import add_code_dir
    from framework.sweep import end_sweep  # a multirun's summary, also when the sweeper stopped at a failed job

    argv = sys.argv[1:]
    config_dir = option(argv, "--config-dir", "-cd")
    add_code_dir(config_dir)  # a user's recipe folder: its Python modules become importable
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        try:
            check_command_line(hydra_overrides(argv), config_dir, option(argv, "--config-name", "-cn") or "train",
                               multirun="-m" in argv or "--multirun" in argv)
        except ConfigError as exc:
            report(f"error: {exc}")
            sys.exit(2)
        run_dir = next((o.split("=", 1)[1] for o in hydra_overrides(argv) if o.startswith("hydra.run.dir=")), None)
        if run_dir and "-m" not in argv and "--multirun" not in argv and int(os.environ.get("RANK", "0")) == 0:
            _refuse_busy_run_dir(run_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            _refuse_unwritable_output_dir(argv)
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun only rank 0 creates the run directory; the others receive its
        # path from rank 0, so a ${now:} in the path cannot split one run into several.
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/hydra_logging=none", "hydra/job_logging=none"]
    try:
        exit_on_error(main)  # a stop signal between a sweep's jobs ends it in one line too
    except SystemExit as exc:
        sys.exit(end_sweep(exc.code or 0))
    sys.exit(end_sweep(0))


def _refuse_busy_run_dir(run_dir: str) -> None:
    """Stops before Hydra writes into a run directory that another training run holds (the
    run itself takes the lock; this only spares the other run's .hydra/ files)."""
    from framework.cli import report
    from framework.trainer.run_lock import RunLock

    busy = RunLock(run_dir).held_by()
    if busy:
        report(f"error: {busy}")
        sys.exit(2)


def _refuse_unwritable_output_dir(argv: list[str]) -> None:
    """Stops in one line, before Hydra fails with a traceback, when the run (or sweep)
    directory cannot be written or created: an archived, read-only run, say."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from framework.cli import hydra_overrides, report

    known = HydraConfig.get() if HydraConfig.initialized() else None  # the command line's, as checked
    sweep = "-m" in argv or "--multirun" in argv or (known is not None and known.mode == RunMode.MULTIRUN)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    given = next((o.split("=", 1)[1] for o in hydra_overrides(argv) if o.lstrip("+").startswith(key + "=")), None)
    if given is None and known is not None:
        given = known.sweep.dir if sweep else known.run.dir
    if given is None:
        return
    path = Path(given).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        what = f"{'sweep' if sweep else 'run'} directory {path}"
        where = "it is not writable" if existing == path else f"{existing} is not writable"
        report(f"error: cannot write the {what}: {where}; choose another {key} (or make it writable)")
        sys.exit(2)


if __name__ == "__main__":
    cli()
