"""Sharded training (``trainer.strategy=fsdp``) on 2 gloo ranks through a real torchrun."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from framework.trainer.checkpoint import Checkpointer, CheckpointError, load_checkpoint, materialize
from tests.conftest import ROOT, TINY, run_cli
from tests.helpers import (
    ENV,
    as_from_a_shell,
    assert_trained_alike,
    index_of,
    metrics_of,
    newest_state,
    one_line,
    tiny_args,
    torchrun,
    wait_for,
)


@pytest.mark.slow  # ~30 s: 2 torchruns; `python -m benchmarks fsdp` measures the same
def test_fsdp_halves_each_ranks_model_state_and_follows_ddps_losses(data_dir, tmp_path):
    """20 optimizer steps of the same run under DDP and FSDP (benchmarks/fsdp.py)."""
    from benchmarks.fsdp import compare

    overrides = [*TINY, f"dataset.root={data_dir}/tones-tiny", "trainer.device=cpu", "batching.max_batch_length=4"]
    result = compare(20, overrides, tmp_path)
    ddp, fsdp = result["ranks"]["ddp"], result["ranks"]["fsdp"]
    assert len(ddp[0]["losses"]) == len(fsdp[0]["losses"]) == 20
    assert result["max_loss_difference"] < 1e-4, (ddp[0]["losses"], fsdp[0]["losses"])
    assert ddp[0]["losses"][-1] < ddp[0]["losses"][0]  # it trained
    # each rank holds about half of the parameters (shards are padded to equal sizes), and of
    # their gradients and optimizer state
    assert all(0.45 < ratio < 0.56 for ratio in result["memory_ratio"]), result["memory_ratio"]
    assert fsdp[0]["local_parameters"] + fsdp[1]["local_parameters"] >= ddp[0]["local_parameters"]


def test_a_checkpoint_of_two_sharded_ranks_continues_in_one_process(data_dir, tmp_path):
    run_dir = tmp_path / "fsdp"
    # 13 and 17 evaluation utterances: the ranks evaluate different numbers of batches
    args = [*TINY, f"dataset.root={data_dir}/tones-ddp", "dataset.prepare.splits={train:47,valid:13,test:17}",
            f"hydra.run.dir={run_dir}", "trainer.device=cpu", "trainer.max_epochs=1", "trainer.grad_accumulation=2"]
    (tmp_path / "keeper.py").write_text(KEEPER)  # a tracker that keeps the files it is sent
    (tmp_path / "sitecustomize.py").write_text(HELD_AT_SHUTDOWN)
    torchrun(["-m", "framework.train", *args, "trainer.strategy=fsdp", "trainer.precision=bf16",
              "trainer.activation_checkpointing=[rnns]", "logger=csv", "+loggers.keeper._target_=keeper.Keeper",
              "logger.upload_checkpoint=true"], cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert "sharded over 2 ranks" in (run_dir / "train.log").read_text()
    # nothing holds the process group past its end (what does at exit can abort a gloo rank)
    assert [(tmp_path / f"held-{rank}").read_text() for rank in (0, 1)] == ["0 Brain, 0 sharded modules"] * 2
    # the best checkpoint was uploaded as one file: its state whole, no shards named
    best = Checkpointer(run_dir / "checkpoints").best()
    uploaded = run_dir / "kept" / best.name
    assert "shards" not in torch.load(uploaded, weights_only=True)
    whole, reference = load_checkpoint(uploaded), materialize(load_checkpoint(best))
    assert whole["model"].keys() == reference["model"].keys()
    assert all(torch.equal(whole["model"][k], reference["model"][k]) for k in reference["model"])
    assert not list(Path(tempfile.gettempdir()).glob("whole-checkpoint-*"))  # the temporary copy is gone
    # sharded: each rank wrote its own shards of the model and optimizer; the .pt holds neither
    pt = run_dir / "checkpoints" / index_of(run_dir)[-1]["file"]
    raw = torch.load(pt, weights_only=True)
    shards = pt.parent / raw["shards"]["folder"]
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert raw["model"] == {"sharded": "model"} and raw["optimizer"] == {"sharded": "optimizer"}
    assert sorted(raw["shards"]["sha256"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # read whole in one process: the model a single process trains, the optimizer state by name
    state = newest_state(run_dir)
    run_cli("framework.train", [*args, f"hydra.run.dir={tmp_path}/single", "trainer.strategy=fsdp"], cwd=tmp_path)
    assert "trainer.strategy=fsdp in one process: nothing to shard over" in (tmp_path / "single/train.log").read_text()
    reference = newest_state(tmp_path / "single")
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in reference["model"].items()}
    assert sorted(state["optimizer"]["state"]) == sorted(state["optimizer"]["param_groups"][0]["params"])
    assert len(state["optimizer"]["state"]) == len(reference["optimizer"]["state"])
    assert set(state["optimizer"]["state"]) <= set(reference["model"])

    # a damaged shard file is a damaged checkpoint, named with the file
    shard = shards / "__1_0.distcp"
    intact = shard.read_bytes()
    shard.write_bytes(intact[:100] + bytes([intact[100] ^ 0xFF]) + intact[101:])
    with pytest.raises(CheckpointError, match=f"is damaged: {shard}, one of its shards, differs"):
        load_checkpoint(pt)
    shard.write_bytes(intact)

    run_cli("framework.train", [*args, "trainer.max_epochs=2", "trainer.resume=auto"], cwd=tmp_path)
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and "epoch 2/2" in log
    assert index_of(run_dir)[-1]["epoch"] == 2
    assert len(metrics_of(run_dir)["history"]) == 2
    assert index_of(run_dir)[-1]["shards"] is None  # one file

    # and the other way: the one-process checkpoint continues sharded over 2 ranks
    torchrun(["-m", "framework.train", *args, "trainer.max_epochs=3", "trainer.resume=auto", "trainer.strategy=fsdp",
              "trainer.precision=bf16", "trainer.activation_checkpointing=[rnns]"], cwd=tmp_path)
    assert index_of(run_dir)[-1]["epoch"] == 3 and len(metrics_of(run_dir)["history"]) == 3
    assert (run_dir / "checkpoints" / index_of(run_dir)[-1]["shards"]).is_dir()


HELD_AT_SHUTDOWN = """
import gc, os
from framework.trainer import distributed

def shutdown(end=distributed.shutdown):
    from torch.distributed.fsdp import FSDPModule
    from framework.brain import Brain
    end()
    held = [type(o) for o in gc.get_objects() if isinstance(o, (Brain, FSDPModule))]
    with open(f"held-{os.environ['RANK']}", "w") as f:
        f.write(f"{sum(issubclass(t, Brain) for t in held)} Brain, {sum(issubclass(t, FSDPModule) for t in held)} sharded modules")

distributed.shutdown = shutdown
"""

KEEPER = """
import shutil
from framework.trainer.loggers import Tracker


class Keeper(Tracker):
    def artifact(self, path):
        (self.run_dir / "kept").mkdir(exist_ok=True)
        shutil.copy(path, self.run_dir / "kept" / path.name)
"""


def test_sharded_checkpoints_are_verified_pruned_and_their_leftovers_removed(tmp_path):
    """The files of sharded checkpoints, written in one process (torch.distributed.checkpoint
    without a process group), through the Checkpointer as training uses it."""
    directory = tmp_path / "checkpoints"

    def save(checkpointer: Checkpointer, step: int, value: float) -> str:
        shards = checkpointer.save_shards({"model": {"w": torch.full((3,), value)}}, step)
        checkpointer.save({"progress": {"step": step}, "shards": shards, "model": {"sharded": "model"}}, step)
        return shards["folder"]

    def weights(step: int) -> torch.Tensor:
        return materialize(load_checkpoint(directory / f"ckpt-{step:09d}.pt"))["model"]["w"]

    (directory / ".ckpt-000000007.0badcafe.dcp.tmp").mkdir(parents=True)  # a write killed mid-way
    (directory / ".ckpt-000000007.0badcafe.dcp.tmp" / "__0_0.distcp").write_bytes(b"partial")
    (directory / "ckpt-000000005.0badcafe.dcp").mkdir()  # written, then killed before its .pt
    checkpointer = Checkpointer(directory, keep_last=2, keep_best=0)
    folders = [save(checkpointer, step, float(step)) for step in (1, 2, 3)]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [folders[1], "ckpt-000000002.pt", "ckpt-000000002.pt.sha256",
         folders[2], "ckpt-000000003.pt", "ckpt-000000003.pt.sha256", "index.json"])
    assert torch.equal(weights(3), torch.full((3,), 3.0))

    # the same step saved again (at an epoch's end, after a periodic checkpoint): a new folder,
    # the one before kept until the .pt that names the new one is in place, then removed
    again = save(checkpointer, 3, 30.0)
    assert again != folders[2] and not (directory / folders[2]).exists()
    assert torch.equal(weights(3), torch.full((3,), 30.0))

    (directory / again / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=f"{again}/__0_0.distcp, one of its shards, is missing"):
        load_checkpoint(directory / "ckpt-000000003.pt")
    path, state = checkpointer.load_latest()  # falls back past it, as past any damaged checkpoint
    assert path.name == "ckpt-000000002.pt" and torch.equal(materialize(state)["model"]["w"], torch.full((3,), 2.0))

    # an index rebuilt from the files (no folder names in it): each kept .pt says which is its
    (directory / "index.json").write_text("not json")
    (directory / "ckpt-000000003.0badcafe.dcp").mkdir()
    save(checkpointer, 4, 4.0)
    assert not (directory / "ckpt-000000003.0badcafe.dcp").exists() and (directory / again).is_dir()
    assert not (directory / folders[1]).exists()  # step 2 pruned (keep_last=2), its folder with it


def test_a_sharded_best_checkpoint_is_uploaded_whole_and_a_damaged_one_costs_a_warning(tmp_path, caplog):
    """What a DDP run resumed from a sharded run (or a sharded run itself) hands the trackers at
    the end: one file, its shards read in; a damaged shard loses the upload, not the run."""
    from framework.trainer.loggers import Loggers, Tracker

    class Keeper(Tracker):
        kept: list[tuple[str, dict]] = []
        closed = False

        def artifact(self, path: Path) -> None:
            self.kept.append((path.name, torch.load(path, weights_only=True)))

        def close(self, error=None) -> None:
            type(self).closed = True

    directory = tmp_path / "checkpoints"
    checkpointer = Checkpointer(directory)
    shards = checkpointer.save_shards({"model": {"w": torch.arange(3.0)}}, 7)
    checkpointer.save({"progress": {"step": 7}, "shards": shards, "model": {"sharded": "model"}}, 7)
    best = directory / "ckpt-000000007.pt"

    Loggers({"keeper": Keeper(tmp_path)}, tmp_path, upload_checkpoint=True).finish({"test_cer": 0.1}, best)
    [(name, state)] = Keeper.kept
    assert name == best.name and "shards" not in state and torch.equal(state["model"]["w"], torch.arange(3.0))
    assert not list(Path(tempfile.gettempdir()).glob("whole-checkpoint-*"))

    Keeper.kept.clear()
    Keeper.closed = False
    (directory / shards["folder"] / "__0_0.distcp").write_bytes(b"damaged")
    with caplog.at_level("WARNING"):
        Loggers({"keeper": Keeper(tmp_path)}, tmp_path, upload_checkpoint=True).finish({"test_cer": 0.1}, best)
    assert Keeper.kept == [] and Keeper.closed
    assert f"the best checkpoint was not uploaded: checkpoint {best} is damaged" in caplog.text


@pytest.mark.slow  # ~60 s: two torchrun trainings and a resumed one (DDP's twin runs in the fast suite)
def test_sigterm_to_a_sharded_torchrun_resumes_bitwise(data_dir, tmp_path):
    args = ["trainer.device=cpu", "trainer.max_epochs=1", "trainer.checkpoint.every_n_steps=2", "trainer.strategy=fsdp",
            "batching.max_batch_length=4", "dataset.prepare.splits={train:64,valid:16,test:16}"]

    def start(run_dir: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "framework.train", *tiny_args(data_dir, run_dir, *args, *extra)]
        out = open(tmp_path / f"{run_dir.name}{len(extra)}.out", "w")
        env = {**ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=out, preexec_fn=as_from_a_shell)

    assert start(tmp_path / "straight").wait(timeout=600) == 0, (tmp_path / "straight0.out").read_text()
    run_dir = tmp_path / "stopped"
    (tmp_path / "sitecustomize.py").write_text(HELD_AT_SHUTDOWN)
    proc = start(run_dir)
    wait_for(run_dir / "checkpoints" / "ckpt-000000004.pt", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    # each rank ended the process group before exiting (a group left to the interpreter's end
    # can abort a gloo rank, and an abort is not the status 143 a scheduler requeues on)
    assert [(tmp_path / f"held-{rank}").read_text() for rank in (0, 1)] == ["0 Brain, 0 sharded modules"] * 2
    (tmp_path / "sitecustomize.py").unlink()
    assert 4 <= newest_state(run_dir)["progress"]["step"] < newest_state(tmp_path / "straight")["progress"]["step"]
    assert start(run_dir, "trainer.resume=auto").wait(timeout=600) == 0, (tmp_path / "stopped1.out").read_text()
    b = assert_trained_alike(tmp_path / "straight", run_dir)
    for key, value in newest_state(tmp_path / "straight")["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][key][k]) for k, v in value.items()), key


# run by 2 ranks: each unit gathers bf16 parameters for its forward, batch norms fp32; the
# shards, their gradients (reduced in fp32) and so the optimizer stay fp32
BF16_SHARDS = """
import torch, torch.distributed as dist
from framework.models.deepspeech2 import DeepSpeech2, RecurrentLayer
from framework.trainer.fsdp import shard
dist.init_process_group("gloo")
torch.manual_seed(0)
model = DeepSpeech2(num_classes=5, num_bins=16, conv_channels=[4], conv_kernels=[[3, 5]], conv_strides=[[2, 2]],
                    conv_padding=[[1, 2]], rnn_type="gru", hidden_size=8, num_layers=2, fc_size=8)
seen = {}
for name, m in model.named_modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm1d)):
        m.register_forward_pre_hook(lambda m, _, name=name: seen.update({name: next(m.parameters()).dtype}))
names = {m: name for name, m in model.named_modules()}
recurrence = RecurrentLayer.reversed_in_length  # on the CPU the GRU's weights are stepped here, not by nn.GRU
def recorded(layer, x, lengths):
    seen[names[layer] + ".rnn"] = layer.rnn.weight_hh_l0.dtype
    return recurrence(layer, x, lengths)
RecurrentLayer.reversed_in_length = recorded
shard(model, [], torch.device("cpu"), torch.bfloat16)
with torch.autocast("cpu", dtype=torch.bfloat16):
    logits, _ = model(torch.randn(3, 40, 16), torch.tensor([40, 31, 22]))
logits.float().logsumexp(-1).mean().backward()
assert seen["convs.0.conv"] == seen["rnns.1.rnn"] == seen["output"] == torch.bfloat16, seen
assert seen["convs.0.bn"] == seen["fc_bn"] == torch.float32, seen
grads = [p.grad for p in model.parameters() if p.grad is not None]  # (the GRUs' input weights are not used)
assert len(grads) > 10 and {p.dtype for p in model.parameters()} == {g.dtype for g in grads} == {torch.float32}
if dist.get_rank() == 0:
    print("dtypes", sorted(seen.items()))
dist.destroy_process_group()
"""


def test_bf16_sharded_units_gather_bf16_parameters_and_keep_batch_norms_and_shards_fp32(tmp_path):
    (tmp_path / "bf16_shards.py").write_text(BF16_SHARDS)
    proc = torchrun([str(tmp_path / "bf16_shards.py")], cwd=tmp_path)
    assert "dtypes" in proc.stdout and "('convs.0.bn', torch.float32)" in proc.stdout


def test_what_sharding_does_not_do_is_refused_before_the_run(tmp_path):
    proc = run_cli("framework.train", [*TINY, "trainer.strategy=fsdp", "trainer.ema_decay=0.99",
                                       f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("error: trainer.ema_decay with trainer.strategy=fsdp: the weight average is not "
                                     "sharded; use trainer.strategy=ddp for it")
    proc = run_cli("framework.train", [*TINY, "trainer.strategy=fsdp", "trainer.precision=bf16",
                                       "trainer.eval_precision=fp32", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith("error: trainer.eval_precision with trainer.strategy=fsdp: under "
                                            "trainer.precision=bf16 the shards gather bf16 parameters")
