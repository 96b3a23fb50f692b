"""Trainer options: precision, accumulation, clipping, activation checkpointing, faults,
checkpoints and exact resume."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from framework.brain import NonFiniteLossError, Stage
from framework.data.collate import collate
from framework.models import DeepSpeech2
from framework.trainer.accumulation import loss_weights, windows
from framework.trainer.activation_checkpointing import apply_activation_checkpointing
from framework.trainer.checkpoint import Checkpointer, CheckpointError, load_checkpoint
from framework.trainer.precision import Precision
from tests.conftest import ROOT, TINY, run_cli, run_result
from tests.toy import ToyBrain, ToyData, ToyModel, toy_cfg


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------ precision
def test_bf16_training_through_the_cli(train_cli):
    _, run_dir = train_cli("trainer.precision=bf16")
    result = run_result(run_dir)
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]  # it learns in bf16
    assert all(math.isfinite(v) for v in result["metrics"].values())


@pytest.mark.slow  # compilation: ~40 s on 2 cores
def test_compiled_training_through_the_cli(train_cli):
    _, run_dir = train_cli("trainer.compile=true", "trainer.limit_batches=4")
    result = run_result(run_dir)
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]
    assert all(math.isfinite(v) for v in result["metrics"].values())


def test_fp16_on_cpu_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*use trainer.precision=bf16"):
        Precision("fp16", torch.device("cpu"))


def test_bf16_autocast_runs_matmuls_in_bf16_on_cpu():
    p = Precision("bf16", torch.device("cpu"), eval_precision="fp32")
    a = torch.randn(4, 4)
    with p.autocast(training=True):
        assert (a @ a).dtype == torch.bfloat16
    with p.autocast(training=False):
        assert (a @ a).dtype == torch.float32


# ---------------------------------------------------------------------- accumulation
def test_windows_keep_the_last_partial_window():
    assert [len(w) for w in windows(range(7), 3)] == [3, 3, 1]


@pytest.mark.parametrize("sizes", [[4, 4, 4], [5, 4, 3], [1, 9]])
def test_accumulated_gradients_equal_one_big_batch(tmp_path, sizes):
    """Fixed and dynamic (uneven) micro-batches: weighted by examples, the sum of their
    gradients is the big batch's gradient."""
    torch.manual_seed(0)
    brain = ToyBrain(toy_cfg(tmp_path, "trainer.grad_accumulation=3"))
    brain.model_factory = lambda: ToyModel(dropout=0.0).eval()  # BN in eval: batch-independent
    data = ToyData(sum(sizes))
    brain.setup(data)
    brain.model.eval()
    examples = [data[i] for i in range(len(data))]
    chunks, start = [], 0
    for n in sizes:
        chunks.append(collate(examples[start : start + n]))
        start += n
    brain.optimization.accumulate(chunks, loss_weights(sizes), brain.fit_batch)
    accumulated = grads(brain.module)
    brain.optimizer.zero_grad()
    brain.optimization.accumulate([collate(examples)], [1.0], brain.fit_batch)
    big = grads(brain.module)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------- clipping
def test_clipping_bounds_the_global_norm_and_reports_the_unclipped_one():
    model = ToyModel()
    out = model(torch.randn(8, 5, 6) * 100, torch.full((8,), 5))
    (out**2).sum().backward()
    before = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    norm = Precision("fp32", torch.device("cpu")).clip(torch.optim.SGD(model.parameters(), lr=0.1),
                                                      model.parameters(), max_grad_norm=0.5)
    after = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert before > 0.5
    torch.testing.assert_close(norm, before)
    assert after <= 0.5 + 1e-5


# ----------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_gives_the_same_gradients_and_bn_statistics():
    def run(checkpointed):
        torch.manual_seed(0)
        model = DeepSpeech2(num_classes=7, num_bins=20, conv_channels=(4, 4), conv_padding=((0, 5), (0, 5)),
                            hidden_size=16, num_layers=2, fc_size=16, rnn_type="gru", shared_projection=True)
        model.rnns[0].dropout = torch.nn.Dropout(0.3)  # dropout inside a checkpointed block
        forward = model.rnns[0].forward
        model.rnns[0].forward = lambda x, lengths, mask: forward(model.rnns[0].dropout(x), lengths, mask)
        if checkpointed:
            assert apply_activation_checkpointing(model, ["rnns", "fc"]) == ["rnns.0", "rnns.1", "fc"]
        torch.manual_seed(1)
        x, lengths = torch.randn(3, 60, 20), torch.tensor([60, 45, 30])
        logits, _ = model(x, lengths)
        logits.square().mean().backward()
        stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}
        return grads(model), stats

    plain_grads, plain_stats = run(False)
    ckpt_grads, ckpt_stats = run(True)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-6)
    for name in plain_stats:  # updated once, not twice
        torch.testing.assert_close(ckpt_stats[name], plain_stats[name])


def test_activation_checkpointing_names_unknown_blocks():
    with pytest.raises(ValueError, match="'lstm'.*its blocks are: convs, rnns"):
        apply_activation_checkpointing(DeepSpeech2(num_bins=40, hidden_size=8, num_layers=1, fc_size=8), ["lstm"])


# ---------------------------------------------------------------------------- faults
def test_nonfinite_steps_are_skipped_then_the_run_stops_with_the_checkpoint_intact(tmp_path):
    brain = ToyBrain(toy_cfg(tmp_path, "trainer.nonfinite_patience=2", "trainer.checkpoint.every_n_steps=1",
                             "trainer.max_epochs=3"))
    brain.fail = {2: "nan", 3: "nan"}  # two NaN batches...
    data = ToyData(40)
    brain.fit(data)  # two skips are within patience
    assert brain.progress.nonfinite_steps == 2
    assert all(torch.isfinite(p).all() for p in brain.module.parameters())

    brain2 = ToyBrain(toy_cfg(tmp_path / "b", "trainer.nonfinite_patience=2", "trainer.checkpoint.every_n_steps=1"))
    brain2.fail = {i: "nan" for i in range(1, 100)}  # ...here every batch after the first
    with pytest.raises(NonFiniteLossError, match="3 steps had a non-finite loss.*the newest checkpoint, .*"
                                                 "ckpt-000000001.pt, holds the weights before") as info:
        brain2.fit(data)
    assert "bf16" not in str(info.value) and "fp16" not in str(info.value)  # an fp32 run: no precision to blame
    path, state = brain2.state.files.load_latest()
    assert state["progress"]["step"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_skipped_nonfinite_step_leaves_the_model_exactly_as_before(tmp_path):
    """Batch-norm statistics move in the forward pass; a step that is not applied must not
    leave them (or anything else) changed."""
    brain = ToyBrain(toy_cfg(tmp_path))
    data = ToyData(16)
    brain.setup(data)
    brain.model.train()
    batch = collate([data[i] for i in range(8)])
    before = {k: v.clone() for k, v in brain.module.state_dict().items()}
    optimizer_before = copy.deepcopy(brain.optimizer.state_dict())
    brain.fail = {0: "nan"}
    loss, _ = brain.train_step([batch], [1.0])
    assert loss is None and brain.progress.nonfinite_steps == 1 and brain.step == 0
    for key, value in brain.module.state_dict().items():
        assert torch.equal(value, before[key]), key  # running_mean / running_var / num_batches_tracked too
    assert brain.optimizer.state_dict()["state"] == optimizer_before["state"]
    loss, _ = brain.train_step([batch], [1.0])  # a good step changes them
    assert loss is not None and not torch.equal(brain.module.net[1].running_mean, before["net.1.running_mean"])


def test_a_nonfinite_validation_loss_ends_the_run_instead_of_reporting_it(tmp_path):
    class BrokenInEvaluation(ToyBrain):
        def compute_objectives(self, outputs, batch, stage):
            loss = super().compute_objectives(outputs, batch, stage)
            return loss if stage == Stage.TRAIN else loss * float("inf")

    brain = BrokenInEvaluation(toy_cfg(tmp_path, "trainer.max_epochs=1"))
    with pytest.raises(NonFiniteLossError, match="the valid loss is inf: the model's outputs are not finite"):
        brain.fit(ToyData(16), ToyData(8, seed=1))


# -------------------------------------------------------------------- step hook and EMA
def test_on_train_step_end_sees_every_applied_step(tmp_path):
    seen = []

    class Watching(ToyBrain):
        def on_train_step_end(self, step, loss, grad_norm):
            seen.append((step, float(loss), float(grad_norm)))

    brain = Watching(toy_cfg(tmp_path, "trainer.max_epochs=2"))
    brain.fail = {3: "nan"}
    brain.fit(ToyData(40))
    assert [s for s, _, _ in seen] == list(range(1, brain.step + 1)) and brain.step == 9  # 10 steps, one skipped
    assert all(math.isfinite(loss) and norm > 0 for _, loss, norm in seen)


def test_weight_ema_is_used_for_validation_and_kept_in_checkpoints(tmp_path):
    brain = ToyBrain(toy_cfg(tmp_path, "trainer.max_epochs=2", "trainer.ema_decay=0.9"))
    valid = ToyData(8, seed=1)
    brain.fit(ToyData(40), valid)
    ema = brain.ema
    assert ema.updates == brain.step == 10
    live = {k: v.clone() for k, v in brain.module.state_dict().items()}
    averaged = ema.averaged_state()
    assert any(not torch.equal(live[k], averaged[k]) for k in averaged)
    with ema.swapped_in():  # validation runs on the averaged weights...
        for k, v in averaged.items():
            assert torch.equal(brain.module.state_dict()[k], v)
    for k, v in live.items():  # ...and training continues on its own
        assert torch.equal(brain.module.state_dict()[k], v)
    expected = brain.run_eval(brain.make_dataloader(valid, Stage.VALID), Stage.VALID, 2)
    assert brain.history[-1]["valid_loss"] == pytest.approx(expected["valid_loss"])
    _, state = brain.state.files.load_latest()
    assert state["ema"]["updates"] == 10
    for k, v in averaged.items():
        assert torch.equal(state["ema"]["averaged"][k], v)


def test_ema_follows_its_formula(tmp_path):
    from framework.trainer.ema import WeightEMA

    model = torch.nn.Linear(2, 1)
    ema = WeightEMA(model, decay=0.5)
    first = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()  # warm-up decay min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.averaged_state()["weight"], 0.1 * first + 0.9 * (first + 1))


def test_out_of_memory_batches_are_skipped_and_counted(tmp_path, caplog):
    brain = ToyBrain(toy_cfg(tmp_path, "trainer.max_epochs=1"))
    brain.fail = {1: torch.OutOfMemoryError("CUDA out of memory (simulated)")}
    with caplog.at_level(logging.WARNING):
        brain.fit(ToyData(40))
    assert brain.skips.oom_steps == 1
    assert "out of memory on a batch of inputs [(8," in caplog.text
    assert brain.step == 4  # 5 batches, one skipped

    strict = ToyBrain(toy_cfg(tmp_path / "s", "trainer.max_epochs=1", "trainer.skip_oom=false"))
    strict.fail = {1: torch.OutOfMemoryError("simulated")}
    with pytest.raises(torch.OutOfMemoryError):
        strict.fit(ToyData(40))


# ----------------------------------------------------------------------- checkpoints
def test_checkpoints_keep_last_and_best_and_fall_back_past_a_damaged_one(tmp_path, caplog):
    ck = Checkpointer(tmp_path, keep_last=2, keep_best=1, monitor="cer", mode="min")
    for step, cer in [(1, 0.5), (2, 0.2), (3, 0.4), (4, 0.6)]:
        ck.save({"step": step, "w": torch.full((3,), float(step))}, step, {"cer": cer})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == [f"ckpt-{s:09d}.pt" for s in (2, 3, 4)]
    assert ck.best().name == "ckpt-000000002.pt"
    assert not list(tmp_path.glob(".*.tmp"))

    newest = tmp_path / "ckpt-000000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        path, state = ck.load_latest()
    assert path.name == "ckpt-000000003.pt" and state["step"] == 3
    assert "ckpt-000000004.pt is damaged" in caplog.text


def test_checkpoints_load_without_unpickling_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "ckpt-000000001.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain values \\(print\\); it was not written by this framework"):
        load_checkpoint(path)


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_resume_with_another_model_config_is_refused(train_cli):
    _, run_dir = train_cli("trainer.max_epochs=1")
    proc, _ = train_cli("trainer.max_epochs=2", "trainer.resume=auto", "model.hidden_size=48", run_dir=run_dir,
                        check=False)
    assert proc.returncode != 0
    assert "was written for another model config (differs in: hidden_size)" in proc.stderr
    assert "hidden_size: 32" in (run_dir / "config.yaml").read_text()  # the run still evaluates as it was trained

    # a model option added since (null by default) is no difference: a config without it still loads the weights
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("  intermediate_layer: null\n", "", 1))
    assert "intermediate_layer" not in config.read_text()
    run_cli("framework.evaluate", [str(run_dir)], cwd=run_dir.parent)


@pytest.mark.parametrize("pct_start, cause", [
    ("0.25", "ZeroDivisionError"),  # OneCycleLR divides by zero when pct_start x total steps is exactly one step
    ("1.5", "ValueError: Expected float between 0 and 1 pct_start"),
])
def test_a_schedule_its_scheduler_refuses_is_one_line_exit_2(train_cli, pct_start, cause):
    proc, _ = train_cli("trainer.max_epochs=1", "trainer.limit_batches=4", f"scheduler.pct_start={pct_start}",
                        check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: scheduler framework.trainer.schedule.OneCycle over 4 optimizer steps "
                           f"(4 per epoch x trainer.max_epochs=1): {cause}"), last
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------ exact resume
def final_state(run_dir):
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    last = max(index, key=lambda e: e["step"])
    return torch.load(run_dir / "checkpoints" / last["file"], weights_only=True), last


def test_sigkill_mid_epoch_then_resume_ends_bitwise_equal(tmp_path, data_dir, train_cli):
    args = ["trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1", "trainer.checkpoint.keep_last=3",
            "batching.max_batch_length=6", "features=mel", "features.extractor.n_mels=20", "model.rnn_type=rnn"]
    _, straight = train_cli(*args, run_dir=tmp_path / "straight")
    state_a, last_a = final_state(straight)
    steps_per_epoch = last_a["step"] // 2
    assert steps_per_epoch >= 6

    # the same run, killed with SIGKILL once it has checkpointed a few steps into epoch 2
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "framework.train", *TINY, f"dataset.root={data_dir}/tones-tiny",
           f"hydra.run.dir={run_dir}", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run_dir / "checkpoints" / f"ckpt-{steps_per_epoch + 3:09d}.pt"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run ended before it could be killed mid-epoch"
    killed_at, _ = final_state(run_dir)
    assert killed_at["progress"]["step"] < last_a["step"] and killed_at["progress"]["batch_in_epoch"] > 0  # mid-epoch

    train_cli(*args, "trainer.resume=auto", run_dir=run_dir)
    assert "resumed from" in (run_dir / "train.log").read_text()
    state_b, last_b = final_state(run_dir)
    assert last_b["step"] == last_a["step"]
    for key, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][key]), key
