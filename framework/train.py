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


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def cli() -> None:
    from framework.config.check import ConfigError, check_command_line

    argv = sys.argv[1:]
    config_dir = _option(argv, "--config-dir", "-cd")
    if config_dir:  # a user's recipe folder: its Python modules become importable
        sys.path.insert(0, os.path.abspath(config_dir))
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        values = {v for v in (config_dir, _option(argv, "--config-name", "-cn"), _option(argv, "--cfg", "-c"),
                              _option(argv, "--package", "-p"), _option(argv, "--config-path", "-cp"))}
        overrides = [a for a in argv if "=" in a and not a.startswith("-") and a not in values]
        try:
            check_command_line(overrides, config_dir, _option(argv, "--config-name", "-cn") or "train",
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
