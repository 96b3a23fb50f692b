"""``python -m framework.evaluate RUN_DIR [key=value ...] [--checkpoint best|latest|PATH]``

Loads the run's best checkpoint (by ``trainer.checkpoint.monitor``) and reports the
test metrics as one JSON line. Works under torchrun: the test set is sharded and the
metrics are reduced over ranks.
"""

from __future__ import annotations

import argparse
import json
import sys

from framework.experiment import build_datasets
from framework.run_dir import load_run_config, open_brain
from framework.trainer import distributed


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m framework.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset.test.path=other.json")
    parser.add_argument("--checkpoint", default="best", help="best, latest or a checkpoint path")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run_dir, args.overrides)
    brain = open_brain(cfg, log_name="evaluate")
    datasets = build_datasets(cfg, brain.dist.is_main)
    if "test" not in datasets:
        sys.exit(f"{args.run_dir}: the config has no dataset.test; pass dataset.test.path=... ")
    metrics = brain.evaluate(datasets["test"], load=args.checkpoint)
    if brain.dist.is_main:
        print(json.dumps(metrics))
    distributed.shutdown()
    return metrics


if __name__ == "__main__":
    main()
