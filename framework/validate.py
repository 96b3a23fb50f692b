"""``python -m framework.validate [overrides]``: check a run's config without training.

Composes the config exactly as ``framework.train`` would, checks keys and types, builds
every part (datasets, features, batch sampler, model, optimizer) and prints a one-screen
summary. Nothing is trained and no run directory is created.
"""

from __future__ import annotations

import sys
import tempfile

from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from framework.brain import Stage
from framework.cli import exit_on_error, hydra_overrides, option
from framework.config import check_command_line, compose_command_line
from framework.config.compose import add_code_dir
from framework.data.batching import batch_stats
from framework.experiment import build_datasets
from framework.models import count_parameters
from framework.run_dir import open_brain


def summary(overrides: list[str], config_dir: str | None = None, config_name: str = "train") -> str:
    check_command_line(overrides, config_dir, config_name)
    cfg = compose_command_line(overrides, config_dir, config_name, hydra_runtime=True)
    run_dir = HydraConfig.get().run.dir  # what Hydra would create; nothing is created here
    lines = [f"config OK ({len(overrides)} override(s))"]
    datasets = build_datasets(cfg)
    for split, ds in datasets.items():
        lines.append(f"{'dataset.' + split:<16}{type(ds).__name__}: {len(ds)} examples, {ds.lengths.sum() / 3600:.2f} h")
    train = datasets["train"]
    with tempfile.TemporaryDirectory() as tmp:
        with open_dict(cfg):
            cfg.run_dir = tmp
            cfg.logger.tensorboard = False
        brain = open_brain(cfg, "validate", tmp)
        if brain.features is not None:
            lines.append(f"{'features':<16}{brain.features.describe()}")
        brain.setup(train)
        sampler = brain.make_dataloader(train, Stage.TRAIN).batch_sampler  # the batches training makes
        stats = batch_stats(list(sampler), sampler.lengths)
        lines.append(f"{'batching':<16}{type(sampler).__name__}: {stats['num_batches']} batches per epoch, padding "
                     f"{100 * stats['padding_fraction']:.1f}%, batch size {stats['mean_batch_size']:.1f} on average "
                     f"({stats['min_batch_size']}-{stats['max_batch_size']})")
        n = count_parameters(brain.module)
        lines.append(f"{'model':<16}{type(brain.module).__name__}: {n / 1e6:.2f} M trainable parameters")
        over = f" over {cfg.scheduler.over}" if cfg.get("scheduler") and cfg.scheduler.get("over") else ""
        lines.append(f"{'optimizer':<16}{type(brain.optimizer).__name__}, lr {cfg.optimizer.lr:g}; scheduler "
                     f"{cfg.scheduler._target_.rsplit('.', 1)[-1] if cfg.get('scheduler') else 'constant'}{over}")
        brain.logger.close()
    t = cfg.trainer
    budget = f" or {t.max_time} (whichever ends first)" if t.get("max_time") else ""
    lines.append(f"{'trainer':<16}{t.max_epochs} epochs{budget} on {brain.device}, {t.precision}, accumulation "
                 f"{t.grad_accumulation}, clip {t.max_grad_norm}, {t.num_workers} workers")
    lines.append(f"{'recipe':<16}{cfg.brain._target_}")
    lines.append(f"{'run dir':<16}{run_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    config_dir = option(argv, "--config-dir", "-cd")
    add_code_dir(config_dir)
    config_name = option(argv, "--config-name", "-cn") or "train"
    print(exit_on_error(lambda: summary(hydra_overrides(argv), config_dir, config_name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
