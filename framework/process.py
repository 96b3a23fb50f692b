"""One process of a run, set up by the entry point before the Brain exists: the process
group (under torchrun), the log files, the CPU threads and TensorFloat-32."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from framework.config.schema import trainer_options
from framework.trainer import distributed
from framework.trainer.distributed import DistEnv
from framework.trainer.logs import setup_file_logging
from framework.trainer.threads import set_num_threads


def start_process(cfg: DictConfig, run_dir: str | Path, log_name: str) -> DistEnv:
    """Joins the process group (once), logs to ``<run_dir>/<log_name>.log``, sets torch's CPU
    threads (``trainer.num_threads``) and TF32 (``trainer.tf32``); returns the distributed
    environment the Brain runs in."""
    options = trainer_options(cfg.trainer)
    env = distributed.init_distributed(options.device)
    setup_file_logging(Path(run_dir), env.rank, env.world_size, log_name)
    set_num_threads(options.num_threads)
    if options.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return env
