"""Faults injected the way they happen, through the real commands: signals to real
processes, damaged files, bad audio and manifests, a full disk, two runs racing.

Each test asserts the exit status, the one-line message naming the right thing, and what
is on disk afterwards (checkpoints intact, no partial files, resume at the right step).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile
import torch

from framework.data.collate import SkippedExample
from framework.data.hdf5 import HDF5Dataset, HDF5FormatError, HDF5Writer
from framework.trainer.checkpoint import Checkpointer, CheckpointWriteError, materialize
from tests.conftest import run_cli
from tests.helpers import (
    ENV,
    FIGURES,
    as_from_a_shell,
    assert_trained_alike,
    metrics_of,
    newest_state,
    one_line,
    start_training,
    stuck_corpus_args,
    tiny_args,
    tiny_manifests,
    wait_for,
    wait_for_children,
)


# ------------------------------------------------------- 1. never score untrained weights
def test_a_monitor_that_validation_does_not_report_is_refused_at_start(train_cli):
    proc, run_dir = train_cli("trainer.checkpoint.monitor=acc", check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("error: trainer.checkpoint.monitor=acc: validation reports no such metric; it "
                                     "reports loss, cer, wer")
    assert not list((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").exists() else True


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_evaluate_and_transcribe_never_use_untrained_weights(train_cli, data_dir, tmp_path):
    _, run_dir = train_cli("trainer.max_epochs=1", "trainer.checkpoint.every_n_steps=2")
    wav = str(data_dir / "tones-tiny" / "test" / "test-00000.wav")
    (run_dir / "checkpoints" / "index.json").unlink()  # no record of which checkpoint is best
    newest = max(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.pt"))
    proc = run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path)
    assert f"no checkpoint of {run_dir / 'checkpoints'} scored by valid cer: using the newest, {newest}" in proc.stderr
    assert json.loads(proc.stdout)["test_cer"] <= 1.0

    for p in (run_dir / "checkpoints").glob("ckpt-*"):
        p.unlink()
    for module, args in (("framework.evaluate", [str(run_dir)]), ("framework.transcribe", [str(run_dir), wav])):
        proc = run_cli(module, args, cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert one_line(proc.stderr) == (f"error: no usable checkpoint in {run_dir / 'checkpoints'}: nothing trained "
                                         "to evaluate; train the run first (or pass --checkpoint PATH)")
        assert proc.stdout == ""


# -------------------------------------------------------- 2. SIGTERM / SIGINT keep the work
def test_sigterm_mid_epoch_checkpoints_the_step_and_resume_is_bitwise_equal(train_cli, data_dir, tmp_path):
    args = ["trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1", "batching.max_batch_length=6"]
    _, straight = train_cli(*args, run_dir=tmp_path / "straight")
    steps_per_epoch = metrics_of(straight)["history"][0]["steps"]
    assert steps_per_epoch >= 8

    run_dir = tmp_path / "stopped"
    proc = start_training(data_dir, run_dir, *args, cwd=tmp_path)
    wait_for(run_dir / "checkpoints" / f"ckpt-{steps_per_epoch + 3:09d}.pt", proc)  # 3 steps into epoch 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received: finishing the current step" in stderr and "Traceback" not in stderr
    state = newest_state(run_dir)
    done = state["progress"]
    assert done["epoch"] == 1 and done["batch_in_epoch"] == done["step"] - steps_per_epoch > 0  # mid-epoch
    assert state["meter"][0]["steps"] == done["batch_in_epoch"]  # the epoch's figures so far travel with it
    assert not list(run_dir.rglob(".*.tmp"))

    train_cli(*args, "trainer.resume=auto", run_dir=run_dir)
    assert f"resumed from {run_dir / 'checkpoints'}" in (run_dir / "train.log").read_text()
    # the interrupted epoch's figures are those of the whole epoch
    assert_trained_alike(straight, run_dir, (*FIGURES, "valid_cer"))


def test_ctrl_c_stops_after_the_step_with_status_130_and_no_traceback(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_training(data_dir, run_dir, "trainer.checkpoint.every_n_steps=2", "trainer.checkpoint.every_epoch=false",
                          cwd=tmp_path)
    wait_for(run_dir / "checkpoints" / "ckpt-000000004.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "SIGINT received" in stderr and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    state = newest_state(run_dir)
    assert state["progress"]["step"] >= 4 and state["progress"]["batch_in_epoch"] == state["progress"]["step"]
    assert "stopped by a signal" in (run_dir / "train.log").read_text()


def test_a_command_started_ignoring_sigint_ignores_it_in_training_too(data_dir, tmp_path):
    # a script's `python -m framework.train ... &` starts with SIGINT ignored, as under nohup:
    # training, like every other stage, keeps ignoring it; SIGTERM still stops it
    def sigint_ignored():
        as_from_a_shell()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "framework.train", *tiny_args(data_dir, run_dir, "trainer.checkpoint.every_n_steps=2",
                                                               "trainer.max_epochs=50")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_ignored)
    wait_for(run_dir / "checkpoints" / "ckpt-000000004.pt", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # still training
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGINT" not in stderr and "SIGTERM received" in stderr


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resumes_exactly(data_dir, tmp_path):
    args = ["trainer.device=cpu", "trainer.max_epochs=1", "trainer.checkpoint.every_n_steps=2",
            "batching.max_batch_length=4", "dataset.prepare.splits={train:64,valid:16,test:16}"]

    def torchrun(run_dir: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "framework.train", *tiny_args(data_dir, run_dir, *args, *extra)]
        out = open(tmp_path / f"{run_dir.name}{len(extra)}.out", "w")  # a pipe nobody reads could fill up
        return subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=out, stderr=out,
                                preexec_fn=as_from_a_shell)

    straight = torchrun(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight0.out").read_text()
    # the epoch's figures are the run's: both ranks' examples, in the slowest rank's time, in either rank's log
    epoch = metrics_of(tmp_path / "straight")["history"][0]
    # (64 examples, a few repeated so the ranks take as many batches; one rank alone trains about half)
    assert 64 <= epoch["examples"] < 72
    line = next(x for x in (tmp_path / "straight" / "train-rank1.log").read_text().splitlines() if "epoch 1/1:" in x)
    assert f"({epoch['examples_per_s']:.0f} examples/s" in line
    run_dir = tmp_path / "stopped"
    proc = torchrun(run_dir)
    wait_for(run_dir / "checkpoints" / "ckpt-000000004.pt", proc)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    assert proc.wait(timeout=120) != 0
    state = newest_state(run_dir)
    assert 4 <= state["progress"]["step"] < newest_state(tmp_path / "straight")["progress"]["step"]
    ranks = [line for line in (run_dir / "train-rank1.log").read_text().splitlines() if "stopped by a signal" in line]
    main = [line for line in (run_dir / "train.log").read_text().splitlines() if "stopped by a signal" in line]
    assert ranks and main and ranks[0].split("at step ")[1] == main[0].split("at step ")[1]  # the same step

    resumed = torchrun(run_dir, "trainer.resume=auto")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "stopped1.out").read_text()
    # every rank's running sums of the interrupted epoch were saved and restored: its figures are
    # those of the uninterrupted run, not rank 0's sums counted on every rank
    assert_trained_alike(tmp_path / "straight", run_dir)


def test_data_workers_ride_out_a_group_sigterm_and_end_with_the_main_process(train_cli, data_dir, tmp_path):
    # a scheduler's SIGTERM to the whole process group: the workers ignore it, the main process
    # finishes its step, checkpoints and stops
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "framework.train", *tiny_args(data_dir, run_dir, "trainer.num_workers=2",
                                                               "trainer.checkpoint.every_n_steps=2")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_shell, start_new_session=True)
    wait_for(run_dir / "checkpoints" / "ckpt-000000004.pt", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received: finishing the current step" in stderr and "Traceback" not in stderr

    # an error raised in a worker: one line and status 2, without waiting for the workers, which
    # ignore the process group's SIGTERM but not the main process's own at its exit
    assert_missing_audio_named(train_cli, data_dir, tmp_path, "train", "trainer.num_workers=1")


def test_a_bad_validation_file_says_which_split_to_skip_bad_in_and_that_works(train_cli, data_dir, tmp_path):
    assert_missing_audio_named(train_cli, data_dir, tmp_path, "valid", "trainer.max_epochs=1")
    # the default dataset too (its own config, not dataset=manifest's), and the override it names works
    proc, _ = train_cli("trainer.max_epochs=1", f"dataset.valid.path={tmp_path}/valid.json", check=False,
                        run_dir=tmp_path / "tones")
    assert proc.returncode == 2 and one_line(proc.stderr).endswith("or pass dataset.valid.skip_bad=true"), proc.stderr
    _, run_dir = train_cli("trainer.max_epochs=1", f"dataset.valid.path={tmp_path}/valid.json",
                           "dataset.valid.skip_bad=true", run_dir=tmp_path / "skipped")
    assert "valid_cer" in metrics_of(run_dir)["metrics"]


def assert_missing_audio_named(train_cli, data_dir: Path, tmp_path: Path, split: str, *overrides: str) -> None:
    """A run whose ``split`` manifest names an audio file that is not there: one line naming the
    file and entry, and the override that skips such entries in that split; exit status 2."""
    root = tiny_manifests(data_dir, tmp_path)
    entries = json.loads((root / f"{split}.json").read_text())
    first = next(iter(entries))
    entries[first]["wav"] = str(tmp_path / "gone.flac")
    (tmp_path / f"{split}.json").write_text(json.dumps(entries))
    paths = [f"dataset.{s}.path={tmp_path if s == split else root}/{s}.json" for s in ("train", "valid")]
    proc, _ = train_cli("dataset=manifest", *paths, f"dataset.data_root={root}", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == (f"error: {tmp_path}/{split}.json: entry {first!r}: {tmp_path}/gone.flac: audio "
                                     "file not found; check the manifest path or its data_root placeholder, or pass "
                                     f"dataset.{split}.skip_bad=true")


def test_a_second_ctrl_c_while_the_run_stops_never_finds_it_joining_a_stuck_worker(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "framework.train", *stuck_corpus_args(data_dir, tmp_path, run_dir),
           "trainer.num_workers=2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_shell, start_new_session=True)
    wait_for_children(proc, 2)  # the epoch has begun: its data workers run
    time.sleep(1)  # training, then waiting for the stuck batch
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group; the workers ignore it
    stopped = time.time()
    while not list((run_dir / "checkpoints").glob("ckpt-*.pt")) and proc.poll() is None:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)  # a second Ctrl-C while the run ends: the stuck worker is gone already
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert time.time() - stopped < 4  # torch's own shutdown gives the stuck worker 5 s
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))


# ------------------------------------------------------------------- 3. non-finite input
@pytest.fixture()
def corpus_with_bad_audio(train_cli, data_dir, tmp_path):
    """The tiny corpus' manifests with one extra training utterance of NaN samples and a
    validation transcript holding a character training never saw."""
    root = tiny_manifests(data_dir, tmp_path)
    train = json.loads((root / "train.json").read_text())
    wav = np.full(8000, 0.1, dtype=np.float32)
    wav[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    train["nan-utt"] = {"wav": str(tmp_path / "nan.wav"), "duration": 0.5, "words": "one"}
    (tmp_path / "train.json").write_text(json.dumps(train))
    valid = json.loads((root / "valid.json").read_text())
    first = next(iter(valid))
    valid[first]["words"] += " zq#"
    (tmp_path / "valid.json").write_text(json.dumps(valid))
    return ["dataset=manifest", f"dataset.train.path={tmp_path}/train.json", f"dataset.valid.path={tmp_path}/valid.json",
            f"dataset.data_root={root}", "trainer.max_epochs=1"]


def test_audio_with_nan_samples_is_named_or_counted_and_skipped(train_cli, corpus_with_bad_audio, tmp_path):
    proc, _ = train_cli(*corpus_with_bad_audio, run_dir=tmp_path / "strict", check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"error: {tmp_path}/train.json: entry 'nan-utt': {tmp_path}/nan.wav: contains NaN "
                                     "or infinite samples; replace the file, or pass dataset.train.skip_bad=true")

    _, run_dir = train_cli(*corpus_with_bad_audio, "dataset.train.skip_bad=true", run_dir=tmp_path / "skip")
    log = (run_dir / "train.log").read_text()
    assert "1 example(s) skipped as unreadable so far (skip_bad); first: nan-utt" in log
    assert log.count("characters outside the training alphabet") == 1 and "'#' x1" in log  # warned once
    metrics = metrics_of(run_dir)["metrics"]
    assert all(np.isfinite(v) for v in metrics.values())
    state = newest_state(run_dir)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_hdf5_examples_with_garbage_are_named_or_skipped(tmp_path):
    path = tmp_path / "a.h5"
    with HDF5Writer(path, "features", attrs={"sample_rate": 16000}) as w:
        for i in range(3):
            w.add(f"utt{i}", np.ones((10, 4), dtype=np.float32), length=0.1, text="a")
    with h5py.File(path, "r+") as f:
        f["data"][12, 2] = np.inf  # inside utt1
    assert torch.equal(HDF5Dataset(path)[0]["inputs"], torch.ones(10, 4))
    with pytest.raises(HDF5FormatError, match=f"^{path}: example 'utt1' holds NaN or infinite values .*skip_bad=true"):
        HDF5Dataset(path)[1]
    assert isinstance(HDF5Dataset(path, skip_bad=True)[1], SkippedExample)


# ------------------------------------------------------------ 7. bad manifest entries named
def write_csv(path: Path, rows: list[list]) -> Path:
    """A manifest; a None cell ends its row early (the column is missing, not empty)."""
    lines = ["ID,wav,duration,wrd", *(",".join(str(c) for c in r if c is not None) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("rows,message", [
    ([["a", "a.wav", 1.0, "one"], ["b", "b.wav", 1.0, None]],
     "entry 'b' has no transcript (key 'wrd', which other entries have); add it or remove the entry, or pass "
     "dataset.train.skip_bad=true"),
    ([["a", "a.wav", -1.0, "one"]], "entry 'a': duration='-1.0' is not a positive length"),
    ([["a", "a.wav", "nan", "one"]], "entry 'a': duration='nan' is not a positive length"),
    ([["a", "a.wav", 1.0, "one"], ["b", "b.wav", 1.0, "two"], ["a", "c.wav", 1.0, "three"]],
     "id 'a' appears twice (row 2 and row 4); ids must be unique"),
])
def test_bad_manifest_entries_are_named_with_file_and_entry(tmp_path, rows, message):
    from framework.data.manifest import load_entries
    from framework.errors import UserError

    manifest = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(UserError) as info:
        load_entries(manifest, replacements={})
    assert str(info.value).startswith(f"{manifest}: {message}") and len(str(info.value).splitlines()) == 1


def test_a_bad_manifest_entry_stops_validate_in_one_line_with_status_2(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [["a", "a.wav", -1.0, "one"]])
    proc = run_cli("framework.validate", ["dataset=manifest", f"dataset.train.path={manifest}",
                                          f"dataset.valid.path={manifest}", f"dataset.data_root={tmp_path}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"error: {manifest}: entry 'a': duration='-1.0' is not a positive length; fix the "
                                     "entry or remove it, or pass dataset.train.skip_bad=true")


def test_skip_bad_leaves_bad_entries_out_with_a_count(tmp_path, caplog):
    from framework.data.manifest import load_entries

    manifest = write_csv(tmp_path / "m.csv", [["a", "a.wav", 1.0, "one"], ["b", "b.wav", -2, "two"],
                                              ["c", "c.wav", 1.0, "three"]])
    entries = load_entries(manifest, replacements={}, skip_bad=True)
    assert [e.id for e in entries] == ["a", "c"]
    assert f"{manifest}: 1 bad entry skipped (skip_bad); first: {manifest}: entry 'b': duration='-2'" in caplog.text


# ------------------------------------------------------------------ 4. one run per run dir
def test_a_second_run_in_a_busy_run_dir_is_refused_and_a_stale_lock_taken_over(train_cli, data_dir, tmp_path):
    run_dir = tmp_path / "shared"
    first = start_training(data_dir, run_dir, "trainer.max_epochs=1000", cwd=tmp_path)  # killed long before its end
    wait_for(run_dir / "train.log", first)
    owner = json.loads((run_dir / ".lock").read_text())
    assert owner["pid"] == first.pid
    proc, _ = train_cli("trainer.max_epochs=3", "trainer.resume=auto", run_dir=run_dir, check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith(f"error: {run_dir} is in use by another training run (pid {first.pid} on ")
    first.kill()  # a SIGKILL leaves the lock file behind; the kernel has dropped the lock itself
    first.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == first.pid
    # the same run resumed (from wherever it got to), for two seconds more at most
    proc, _ = train_cli("trainer.max_epochs=1000", "trainer.max_time=2s", "trainer.resume=auto", run_dir=run_dir)
    assert f"taking over the lock of a run that is gone (pid {first.pid} on" in proc.stderr
    assert (run_dir / ".lock").read_text() == ""  # released at the end


# --------------------------------------------------------------- 5. damaged checkpoints
def test_a_checkpoint_damaged_in_the_middle_is_detected_and_skipped(train_cli, tmp_path):
    _, run_dir = train_cli("trainer.max_epochs=1", "trainer.checkpoint.every_n_steps=2", "trainer.checkpoint.keep_last=3")
    files = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    newest = files[-1]
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)  # torch.load does not check the zip's CRCs
    newest.write_bytes(bytes(data))
    proc, _ = train_cli("trainer.max_epochs=2", "trainer.resume=auto", run_dir=run_dir)
    assert (f"checkpoint {newest} is damaged: its SHA-256 differs from the one recorded when it was written "
            f"({newest.name}.sha256); trying the previous checkpoint") in proc.stderr
    assert f"resumed from {files[-2]}" in proc.stderr


def test_a_damaged_index_is_rebuilt_and_unlisted_checkpoints_pruned(tmp_path, caplog):
    ck = Checkpointer(tmp_path, keep_last=2, keep_best=1, monitor="cer", mode="min")
    for step, cer in [(1, 0.5), (2, 0.2)]:
        ck.save({"step": step}, step, {"cer": cer})
    (tmp_path / "index.json").write_text(json.dumps({"file": "ckpt-000000001.pt"}))  # valid JSON, wrong structure
    torch.save({"step": 3}, tmp_path / "ckpt-000000003.pt")  # a kill between a checkpoint's rename and its index
    torch.save({"step": 4}, tmp_path / "ckpt-000000004.pt")
    assert [e["step"] for e in ck.index()] == [1, 2, 3, 4]
    assert "index.json is damaged (unexpected structure); rebuilding it" in caplog.text
    ck.save({"step": 5}, 5, {"cer": 0.9})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-000000004.pt", "ckpt-000000005.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == ["ckpt-000000005.pt.sha256"]


# --------------------------------------------------------------------------- 6. disk full
@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")  # the write-failure path is also covered below, without a mount
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_earlier_checkpoints(train_cli, small_disk):
    run_dir = small_disk / "run"
    proc, _ = train_cli("trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1", "trainer.checkpoint.keep_last=50",
                        "logger.tensorboard=false", run_dir=run_dir, check=False)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert line.startswith(f"error: CheckpointWriteError: cannot write {run_dir / 'checkpoints'}/ckpt-")
    assert "No space left on device" in line and "earlier checkpoints are intact" in line
    assert "No space left on device" in (run_dir / "train.log").read_text()
    assert not list(run_dir.rglob(".*.tmp"))
    kept = Checkpointer(run_dir / "checkpoints")
    assert kept.index() and kept.load_latest() is not None  # the newest complete one loads and verifies


def test_a_full_disk_under_a_sharded_checkpoint_is_one_line_and_keeps_the_earlier_one(small_disk):
    """The folder torch.distributed.checkpoint writes (trainer.strategy=fsdp), in one process."""
    ck = Checkpointer(small_disk / "checkpoints")
    for step, size in ((1, 1000), (2, 600_000)):  # the second does not fit the 1.2 MB disk
        try:
            shards = ck.save_shards({"model": {"w": torch.zeros(size)}}, step)
        except CheckpointWriteError as exc:
            message = str(exc)
            break
        ck.save({"progress": {"step": step}, "shards": shards, "model": {"sharded": "model"}}, step)
    assert re.match(f"cannot write {small_disk}/checkpoints/ckpt-000000002.[0-9a-f]{{8}}.dcp: rank 0: ", message)
    assert "as on a full disk" in message and "earlier checkpoints are intact" in message and "\n" not in message
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == [
        shards["folder"], "ckpt-000000001.pt", "ckpt-000000001.pt.sha256", "index.json"]
    path, state = ck.load_latest()
    assert path.name == "ckpt-000000001.pt" and materialize(state)["model"]["w"].shape == (1000,)


def test_a_failed_checkpoint_write_names_the_cause_and_leaves_no_partial_file(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path)
    ck.save({"w": torch.zeros(10)}, 1)

    class FullDisk:
        def __init__(self, raw):
            self.raw = raw

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.raw, name)

    import framework.trainer.checkpoint as module

    monkeypatch.setattr(module, "_HashingWriter", lambda raw, cls=module._HashingWriter: cls(FullDisk(raw)))
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*ckpt-000000002.pt: No space left on device"):
        ck.save({"w": torch.ones(10)}, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000001.pt", "ckpt-000000001.pt.sha256", "index.json"]


# -------------------------------------------------------------- 9. one line, exit status 2
# (bad values on the command line: tests/test_config.py, test_typos_wrong_types_and_bad_values_...)


def test_every_command_fails_in_one_line_with_status_2(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": print}, evil)
    (tmp_path / "notarun").mkdir()
    cases = [
        ("framework.evaluate", [str(tmp_path / "notarun")], f"{tmp_path}/notarun/config.yaml not found"),
        ("framework.transcribe", [str(tmp_path / "notarun"), "a.wav"], f"{tmp_path}/notarun/config.yaml not found"),
        ("framework.validate", ["dataset=manifest", "dataset.train.path=/nope.json", "dataset.valid.path=/nope.json"],
         "/nope.json: manifest not found"),
        ("framework.prepare", ["hdf5", "/nope.json", str(tmp_path / "x.h5")], "/nope.json: manifest not found"),
        ("framework.prepare", ["manifest", "/nope", str(tmp_path / "m.json")], "/nope: no *.trans.txt files found"),
        ("framework.prepare", ["stats", "/nope.json"], "/nope.json: manifest not found"),
    ]
    for module, args, message in cases:
        proc = run_cli(module, args, cwd=tmp_path, check=False)
        assert proc.returncode == 2, (module, proc.stderr)
        assert message in one_line(proc.stderr), (module, proc.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x.h5").exists()
    from framework.trainer.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    assert "not loaded, since loading it could run arbitrary code" in str(info.value)
    assert "weights_only" not in str(info.value)


def test_under_torchrun_each_rank_reports_a_bad_value_in_a_line_of_its_own(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "framework.train",
           "trainer.max_time=10x", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=300)
    message = "error: trainer.max_time='10x': expected a duration such as 90s, 10m or 1h30m"
    assert sorted(line for line in proc.stderr.splitlines() if line.startswith(("error:", "[rank"))) == \
        sorted([message, f"[rank 1] {message}"]), proc.stderr
