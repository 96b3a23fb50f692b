"""The Hydra app end to end: fit + test, the run directory, resume=auto."""

from __future__ import annotations

import json
import re

import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_fit_and_test_write_a_complete_run_dir(train_cli):
    proc, run_dir = train_cli()
    log = (run_dir / "train.log").read_text()
    assert "test: test_loss=" in log and "test_cer=" in log
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.trainer.max_epochs == 2 and cfg.model.hidden_size == 32
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "tokenizer.json").is_file()

    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert [e["epoch"] for e in index] == [1, 2]
    state = torch.load(run_dir / "checkpoints" / index[-1]["file"], weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "sampler"} <= set(state)
    assert state["epoch"] == 2 and state["step"] == index[-1]["step"] > 0

    losses = scalars(run_dir, "train/loss")
    assert len(losses) == state["step"]  # logged every step in this config
    assert all(v == v and v > 0 for _, v in losses)
    assert scalars(run_dir, "train/lr") and scalars(run_dir, "train/examples_per_s")
    valid = scalars(run_dir, "epoch/valid_cer")
    assert len(valid) == 2 and all(0 <= v <= 2 for _, v in valid)
    assert scalars(run_dir, "epoch/padding_fraction")


def test_resume_auto_continues_from_the_checkpoint(train_cli):
    _, run_dir = train_cli("trainer.max_epochs=1")
    first = json.loads((run_dir / "checkpoints" / "index.json").read_text())[-1]
    assert first["epoch"] == 1

    proc, _ = train_cli("trainer.max_epochs=3", "trainer.resume=auto", run_dir=run_dir)
    log = (run_dir / "train.log").read_text()
    assert re.search(r"resumed from .*ckpt-0*%d\.pt: epoch 1, step %d" % (first["step"], first["step"]), log)
    assert "epoch 1/3" not in log  # no restart from zero
    assert "epoch 2/3" in log and "epoch 3/3" in log
    last = json.loads((run_dir / "checkpoints" / "index.json").read_text())[-1]
    assert last["epoch"] == 3 and last["step"] == 3 * first["step"]
    steps = [s for s, _ in scalars(run_dir, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == last["step"]  # curves continue, not restart


def test_resume_from_a_missing_path_fails_loudly(train_cli, tmp_path):
    proc, _ = train_cli(f"trainer.resume={tmp_path}/nope.pt", check=False)
    assert proc.returncode != 0
    assert f"checkpoint {tmp_path}/nope.pt does not exist" in proc.stderr


import pytest  # noqa: E402


@pytest.mark.parametrize("batching", ["fixed", "sorted", "dynamic"])
def test_each_batching_strategy_trains_through_the_config(train_cli, batching):
    overrides = {"fixed": ["batching.batch_size=6"], "sorted": ["batching.batch_size=6"],
                 "dynamic": ["batching.max_batch_length=9", "batching.num_buckets=4"]}[batching]
    _, run_dir = train_cli(f"batching={batching}", *overrides, "trainer.max_epochs=1")
    log = (run_dir / "train.log").read_text()
    steps = int(re.search(r"epoch 1: (\d+) steps, padding ([\d.]+)%, mean batch size ([\d.]+)", log).group(1))
    if batching != "dynamic":
        assert steps == 8  # 48 utterances / 6
    assert scalars(run_dir, "epoch/padding_fraction") and scalars(run_dir, "epoch/mean_batch_size")
