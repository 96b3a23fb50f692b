"""Checkpoint averaging: the mean of the chosen checkpoints' tensors, usable by evaluate."""

from __future__ import annotations

import json

import pytest
import torch

from framework.average import average_states
from tests.conftest import run_cli


def test_the_average_of_two_checkpoints_is_the_mean_of_their_tensors():
    a = {"step": 1, "model": {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(3)},
         "optimizer": {"x": 1}}
    b = {"step": 2, "model": {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(5)},
         "optimizer": {"x": 2}}
    out = average_states([a, b])
    assert torch.equal(out["model"]["w"], torch.tensor([2.0, 4.0]))
    assert out["model"]["bn.num_batches_tracked"].item() == 5 and out["optimizer"] == {"x": 2}  # from the newest
    assert out["averaged_from"] == [1, 2]


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_average_command_writes_a_checkpoint_evaluate_can_use(train_cli, tmp_path):
    _, run_dir = train_cli("trainer.max_epochs=1", "trainer.checkpoint.every_n_steps=2",
                           "trainer.checkpoint.keep_last=3")
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    last_two = sorted(index, key=lambda e: e["step"])[-2:]
    out = run_cli("framework.average", [str(run_dir), "--last", "2"], cwd=tmp_path).stdout
    assert f"the last 2: steps {last_two[0]['step']}, {last_two[1]['step']}" in out
    averaged = torch.load(run_dir / "checkpoints" / "averaged.pt", weights_only=True)
    states = [torch.load(run_dir / "checkpoints" / e["file"], weights_only=True) for e in last_two]
    for key, value in averaged["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (states[0]["model"][key] + states[1]["model"][key]) / 2)
    assert (run_dir / "checkpoints" / "averaged.pt.sha256").is_file()

    proc = run_cli("framework.evaluate", [str(run_dir), "--checkpoint", "averaged"], cwd=tmp_path)
    assert f"weights from {run_dir / 'checkpoints' / 'averaged.pt'}" in proc.stderr
    assert 0 <= json.loads(proc.stdout)["test_cer"] <= 1.5
    # overrides may come after the option, as in: evaluate RUN --checkpoint averaged decoder=beam ...
    other_set = f"dataset.test.path={run_dir.parent / 'none.json'}"
    moved = run_cli("framework.evaluate", [str(run_dir), "--checkpoint", "averaged", other_set], cwd=tmp_path, check=False)
    assert moved.returncode == 2 and moved.stderr.strip().endswith("none.json: manifest not found")  # it reached the config

    too_many = run_cli("framework.average", [str(run_dir), "--best", "9"], cwd=tmp_path, check=False)
    assert too_many.returncode == 2 and "holds 1 checkpoint(s) for the 9 best by valid cer" in too_many.stderr
