"""``python -m framework.train [recipe=...] [overrides]``: compose the config, train, test."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from framework.experiment import run

    return run(cfg)


def cli() -> None:
    from framework.cli import add_code_dir, hydra_overrides, option
    from framework.config.check import ConfigError, check_command_line

    argv = sys.argv[1:]
    config_dir = option(argv, "--config-dir", "-cd")
    add_code_dir(config_dir)  # a user's recipe folder: its Python modules become importable
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        try:
            check_command_line(hydra_overrides(argv), config_dir, option(argv, "--config-name", "-cn") or "train",
                               multirun="-m" in argv or "--multirun" in argv)
        except ConfigError as exc:
            print(f"Config error:\n{exc}", file=sys.stderr)
            sys.exit(2)
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun only rank 0 creates the run directory; the others receive its
        # path from rank 0, so a ${now:} in the path cannot split one run into several.
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/hydra_logging=none", "hydra/job_logging=none"]
    main()


if __name__ == "__main__":
    cli()
