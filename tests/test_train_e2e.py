"""The Hydra app end to end: fit + test, the run directory, resume=auto."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_result


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_fit_and_test_write_a_complete_run_dir(train_cli):
    proc, run_dir = train_cli()
    result = run_result(run_dir)
    assert set(result["metrics"]) == {"train_loss", "valid_loss", "valid_cer", "valid_wer", "valid_examples",
                                      "test_loss", "test_cer", "test_wer", "test_examples"}
    assert result["metrics"]["valid_examples"] == 16 and result["metrics"]["test_examples"] == 16  # every one
    assert result["monitor"] == "valid_cer" and result["mode"] == "min"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.trainer.max_epochs == 2 and cfg.model.hidden_size == 32
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "tokenizer.json").is_file()

    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert [e["epoch"] for e in index] == [1, 2]
    state = torch.load(run_dir / "checkpoints" / index[-1]["file"], weights_only=True)
    assert {"model", "optimizer", "scheduler", "progress", "rng", "model_config"} <= set(state)
    assert "sampler" not in state  # saved at an epoch boundary: no position inside an epoch
    done = state["progress"]
    assert state["format_version"] == 2 and done["epoch"] == 2 and done["step"] == index[-1]["step"] > 0

    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["step"] == done["step"]
    for h in history:  # the epoch's timing and throughput, also in train.log and TensorBoard
        assert h["epoch_s"] > 0 and h["examples_per_s"] > 0 and h["audio_s_per_s"] > 0
        assert 0 <= h["data_wait_fraction"] < 1 and 0 <= h["padding_fraction"] < 0.5
        assert h["train_s"] >= h["epoch_s"] and h["elapsed_s"] >= h["train_s"]
    assert history[1]["train_s"] == pytest.approx(history[0]["epoch_s"] + history[1]["epoch_s"])
    assert history[1]["train_loss"] < history[0]["train_loss"]  # it learns
    log = (run_dir / "train.log").read_text()
    assert f"epoch 2/2: {history[1]['steps']} steps in {history[1]['epoch_s']:.1f} s" in log

    losses = scalars(run_dir, "train/loss")
    assert len(losses) == done["step"]  # logged every step in this config
    assert all(v == v and v > 0 for _, v in losses)
    assert scalars(run_dir, "train/lr") and scalars(run_dir, "train/examples_per_s")
    valid = scalars(run_dir, "epoch/valid_cer")
    assert [v for _, v in valid] == pytest.approx([h["valid_cer"] for h in history])
    for tag in ("epoch/epoch_s", "epoch/audio_s_per_s", "epoch/data_wait_fraction", "epoch/padding_fraction"):
        assert len(scalars(run_dir, tag)) == 2, tag


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_resume_auto_continues_from_the_checkpoint(train_cli):
    _, run_dir = train_cli("trainer.max_epochs=1")
    first = json.loads((run_dir / "checkpoints" / "index.json").read_text())[-1]
    assert first["epoch"] == 1

    train_cli("trainer.max_epochs=3", "trainer.resume=auto", run_dir=run_dir)
    log = (run_dir / "train.log").read_text()
    assert f"resumed from {run_dir / 'checkpoints' / first['file']}: end of epoch 1, step {first['step']}" in log
    history = run_result(run_dir)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # the first epoch's entry kept, no restart from zero
    assert [h["step"] for h in history] == [first["step"], 2 * first["step"], 3 * first["step"]]
    steps = [s for s, _ in scalars(run_dir, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == history[-1]["step"]  # curves continue, not restart

    # resuming a finished run trains nothing and keeps the full metrics
    before = run_result(run_dir)["metrics"]
    train_cli("trainer.max_epochs=3", "trainer.resume=auto", run_dir=run_dir)
    after = run_result(run_dir)
    assert after["metrics"]["valid_cer"] == before["valid_cer"] and len(after["history"]) == 3


@pytest.mark.parametrize("batching", ["fixed", "sorted", "dynamic"])
def test_each_batching_strategy_trains_through_the_config(train_cli, batching):
    overrides = {"fixed": ["batching.batch_size=6"], "sorted": ["batching.batch_size=6"],
                 "dynamic": ["batching.max_batch_length=9", "batching.num_buckets=4"]}[batching]
    _, run_dir = train_cli(f"batching={batching}", *overrides, "trainer.max_epochs=1")
    epoch = run_result(run_dir)["history"][0]
    if batching != "dynamic":
        assert epoch["steps"] == 8 and epoch["mean_batch_size"] == 6  # 48 utterances / 6
    else:
        assert epoch["mean_batch_size"] <= 9 / 0.5  # a budget of 9 s, utterances of >= 0.5 s
    if batching == "sorted":
        assert epoch["padding_fraction"] < 0.1  # neighbours in length; random batches of 6 pad ~30% here
    assert scalars(run_dir, "epoch/padding_fraction") and scalars(run_dir, "epoch/mean_batch_size")
