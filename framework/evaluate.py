"""``python -m framework.evaluate RUN_DIR [key=value ...] [--checkpoint best|latest|PATH]``

Loads the run's best checkpoint (by ``trainer.checkpoint.monitor``) and reports the
test metrics as one JSON line. Overrides change the test set (``dataset.test.path=...``) or
the decoding (``decoder=beam decoder.lm=lm.arpa decoder.lexicon=train``). Works under torchrun: the test set is sharded and the
metrics are reduced over ranks.
"""

from __future__ import annotations

import argparse
import json

from framework.cli import exit_on_error
from framework.config import split_given
from framework.errors import UserError
from framework.experiment import build_datasets
from framework.run_dir import load_run_config, open_brain
from framework.trainer import distributed


def evaluate(run_dir: str, overrides: list[str], checkpoint: str = "best") -> dict[str, float]:
    cfg = load_run_config(run_dir, overrides)
    if not split_given(cfg, "test"):
        raise UserError(f"{run_dir}: the run's config has no test set; name one with dataset.test.path=...")
    brain = open_brain(cfg, log_name="evaluate")
    datasets = build_datasets(cfg, brain.dist.is_main)
    brain.setup(None, trains=False)
    metrics = brain.evaluate(datasets["test"], load=checkpoint)
    brain.logger.close()
    if brain.dist.is_main:
        print(json.dumps(metrics))
    del brain  # before the process group ends (distributed.shutdown says why)
    distributed.shutdown()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m framework.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset.test.path=other.json")
    parser.add_argument("--checkpoint", default="best", help="best, latest, averaged (framework.average) or a checkpoint path")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --checkpoint
    return exit_on_error(lambda: evaluate(args.run_dir, args.overrides, args.checkpoint))


if __name__ == "__main__":
    main()
