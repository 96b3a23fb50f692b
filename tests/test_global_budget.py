"""``batching.budget=global`` under a real torchrun (gloo on CPU): one process and two
take the same optimizer steps per epoch."""

from __future__ import annotations

import pytest

from tests.conftest import TINY, run_cli
from tests.helpers import steps_per_epoch, torchrun


@pytest.mark.slow  # two training runs and a torchrun start: ~30 s on 2 idle cores
def test_global_budget_takes_the_same_steps_per_epoch_on_one_and_two_ranks(tmp_path, data_dir):
    common = [*TINY, f"dataset.root={data_dir}/tones-budget", "trainer.device=cpu", "trainer.max_epochs=1",
              "batching.budget=global"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("framework.train", [*common, f"hydra.run.dir={one}"], cwd=tmp_path)
    torchrun(["-m", "framework.train", *common, f"hydra.run.dir={two}"], cwd=tmp_path)
    single = steps_per_epoch((one / "train.log").read_text())
    assert single[0] > 1
    assert steps_per_epoch((two / "train.log").read_text()) == single
    assert steps_per_epoch((two / "train-rank1.log").read_text()) == single
