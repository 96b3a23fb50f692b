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
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun only rank 0 creates the run directory; the others receive its
        # path from rank 0, so a ${now:} in the path cannot split one run into several.
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/hydra_logging=none", "hydra/job_logging=none"]
    main()


if __name__ == "__main__":
    cli()
