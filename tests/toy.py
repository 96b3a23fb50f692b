"""A toy regression task for exercising the Brain without audio."""

from __future__ import annotations

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from framework.brain import Brain, Stage
from tests.conftest import ROOT


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=40, dim=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.lengths = np.array([int(x) for x in torch.randint(3, 12, (n,), generator=g)], dtype=float)
        self.x = [torch.randn(int(t), dim, generator=g) for t in self.lengths]
        self.y = [float(x.mean()) for x in self.x]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"id": str(i), "inputs": self.x[i], "target": self.y[i]}


class ToyModel(nn.Module):
    def __init__(self, dim=6, hidden=16, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x, lengths):
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).float()[..., None]
        pooled = (x * mask).sum(1) / lengths[:, None]
        return self.net(pooled).squeeze(-1)


class ToyBrain(Brain):
    model_factory = ToyModel
    fail = {}  # training micro-batch number -> exception or "nan", for fault tests
    calls = 0

    def build_model(self, train_set):
        return self.model_factory()

    def compute_forward(self, batch, stage):
        return self.model(batch.inputs, batch.inputs_lens)

    def compute_objectives(self, outputs, batch, stage):
        fault = None
        if stage == Stage.TRAIN:
            fault = self.fail.get(self.calls)
            self.calls += 1
        if isinstance(fault, BaseException):
            raise fault
        loss = ((outputs - batch.target.float()) ** 2).mean()
        return loss * float("nan") if fault == "nan" else loss


def toy_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train", overrides=["batching=fixed", "batching.batch_size=8", "trainer.device=cpu",
                                                      "scheduler=constant", "features=none", "trainer.checkpoint.monitor=loss", "trainer.num_threads=1",
                                                      *overrides])
    cfg.features = None
    cfg.run_dir = str(tmp_path)
    return cfg
