"""Experiment trackers: TensorBoard, CSV, MLflow, Weights & Biases, or a class of your own.

``logger=<name>`` (``conf/logger/``) chooses which: each option holds ``loggers.<name>``
nodes with a ``_target_`` here; ``logger=many`` holds several. The Brain logs to one
:class:`Loggers`, which passes every event on to each of them (on rank 0 only). MLflow and
W&B are optional extras, imported only when chosen.
"""

from framework.trainer.loggers.base import Tracker
from framework.trainer.loggers.csv_logger import CSVLogger
from framework.trainer.loggers.fanout import Loggers, attach_sweep_summary
from framework.trainer.loggers.mlflow_logger import MLflowLogger
from framework.trainer.loggers.tensorboard_logger import TensorBoardLogger
from framework.trainer.loggers.wandb_logger import WandbLogger

__all__ = ["CSVLogger", "Loggers", "MLflowLogger", "TensorBoardLogger", "Tracker", "WandbLogger",
           "attach_sweep_summary"]
