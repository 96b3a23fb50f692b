"""WebDataset shards: `prepare shards` and `dataset=shards`, through the real commands where
possible: round trip, resumable writing, per-epoch order, every example once per epoch (one
process, and 2 ranks x 2 workers), SIGTERM mid-epoch and an exact resume, damaged shards,
shards served over HTTP."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from framework.data import shards as shards_module
from framework.data import stream
from framework.data.audio import PCM, read_audio
from framework.data.batching import DynamicBatchSampler
from framework.data.collate import collate
from framework.data.loader import make_loader
from framework.data.manifest import load_entries
from framework.data.shards import ShardDataset, ShardError, tar_spans
from framework.data.synthetic import prepare_tone_corpus
from framework.prepare.shards import write_shards
from tests.conftest import TINY, run_cli
from tests.helpers import (
    ENV,
    FIGURES,
    as_from_a_shell,
    assert_trained_alike,
    children_of,
    index_of,
    kill_with_children,
    metrics_of,
    newest_state,
    one_line,
    run_doc,
    steps_per_epoch,
    survivors,
    torchrun,
    wait_for,
)

TINY_MODEL = [o for o in TINY if not o.startswith("dataset.")]
SPLITS = {"train": 48, "valid": 16, "test": 16}  # the tiny corpus of TINY's dataset.prepare.splits


@pytest.fixture(scope="module")
def tones(data_dir) -> Path:
    root = data_dir / "tones-tiny"
    prepare_tone_corpus(root, SPLITS)
    return root


@pytest.fixture(scope="module")
def shards(tones, tmp_path_factory) -> Path:
    """The tiny corpus' train (8 shards of 6) and valid (2 shards of 8) splits as shards."""
    out = tmp_path_factory.mktemp("shards")
    for split, size in (("train", 6), ("valid", 8)):
        run_cli("framework.prepare", ["shards", str(tones / f"{split}.json"), str(out / split), "--shard-size",
                                      str(size), "--data-root", str(tones), "--workers", "2"], cwd=out)
    return out


def train_args(shards: Path, run_dir: Path, *overrides: str, train: str | None = None) -> list[str]:
    return [*TINY_MODEL, "dataset=shards", f"dataset.train.path={train or shards / 'train'}",
            f"dataset.valid.path={shards / 'valid'}", f"hydra.run.dir={run_dir}", *overrides]


def ids_of(loader) -> list[list[str]]:
    return [list(batch["id"]) for batch in loader]


def tar_members(data: memoryview):
    """``(path, contents)`` of each file of the tar held in ``data``, as :func:`tar_spans` finds them."""
    for path, start, size in tar_spans(data):
        yield path, data[start:start + size]


def without_tar_walks(monkeypatch) -> None:
    """Reading a shard whose index says where each payload lies walks no tar headers (in
    this process, and in DataLoader workers forked from it)."""
    def walk(data):
        raise AssertionError("walked the tar's headers")

    monkeypatch.setattr(shards_module, "_keys", walk)


# ------------------------------------------------------------------------------ writing
def test_prepare_shards_round_trips_every_utterance(tones, shards):
    entries = load_entries(tones / "train.json", replacements={"data_root": str(tones)}, sample_rate=16000)
    dataset = ShardDataset(str(shards / "train"), sample_rate=16000)
    assert dataset.ids == [e.id for e in entries] and len(dataset.shards) == 8
    for i, entry in enumerate(entries):
        example = dataset[i]
        assert example["id"] == entry.id and example["text"] == entry.text
        assert torch.equal(example["inputs"], read_audio(entry.path, 16000)), entry.id  # FLAC of 16-bit PCM: exact
        assert dataset.lengths[i] == entry.duration
    # plain WebDataset tars: <key>.flac and <key>.json, key after key
    with tarfile.open(shards / "train" / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:2] == [f"{entries[0].id}.flac", f"{entries[0].id}.json"] and len(names) == 12


def test_the_index_says_where_each_payload_lies_and_the_reader_takes_it_there(tones, shards, tmp_path):
    """``prepare shards`` records each payload's offset and size; the reader takes payloads
    there, checked, without walking the tar: a shard whose headers are damaged but whose
    payloads are intact reads the same. An index without the offsets (an older write) reads
    the same by walking the tar."""
    index = json.loads((shards / "train" / "index.json").read_text())
    with tarfile.open(shards / "train" / "shard-000000.tar") as tar:
        flacs = [m for m in tar.getmembers() if m.name.endswith(".flac")]
    rows = [u for u in index["utterances"] if u["shard"] == 0]
    assert [(u["offset"], u["bytes"]) for u in rows] == [(m.offset_data, m.size) for m in flacs]
    intact = ShardDataset(str(shards / "train"))
    with pytest.MonkeyPatch.context() as patch:
        without_tar_walks(patch)
        assert [intact[i]["id"] for i in range(len(intact))] == intact.ids
        loader = make_loader(intact, DynamicBatchSampler(intact.lengths, max_batch_length=20.0, num_buckets=4), 0, 0)
        assert sorted(uid for batch in loader for uid in batch["id"]) == sorted(intact.ids)

    headers = tmp_path / "headers"
    shutil.copytree(shards / "train", headers)
    data = bytearray((headers / "shard-000000.tar").read_bytes())
    for m in flacs:
        data[m.offset + 10] ^= 0x01  # a name byte: the header fails its checksum
    (headers / "shard-000000.tar").write_bytes(bytes(data))
    with pytest.raises(tarfile.ReadError, match="bad checksum"):
        list(tar_members(memoryview(bytes(data))))

    older = tmp_path / "older"
    shutil.copytree(shards / "train", older)
    for u in index["utterances"]:
        del u["offset"], u["bytes"]
    (older / "index.json").write_text(json.dumps(index))

    for folder in (headers, older):
        dataset = ShardDataset(str(folder))
        for i in dataset.members(0).tolist() + dataset.members(1).tolist():
            assert torch.equal(dataset[i]["inputs"], intact[i]["inputs"]), (folder.name, i)

    # writing again over the older write keeps its shards and adds where the payloads lie
    written = {p.name: p.stat().st_mtime_ns for p in older.glob("shard-*.tar")}
    run_cli("framework.prepare", ["shards", str(tones / "train.json"), str(older), "--shard-size", "6",
                                  "--data-root", str(tones)], cwd=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in older.glob("shard-*.tar")} == written
    assert json.loads((older / "index.json").read_text()) == json.loads((shards / "train" / "index.json").read_text())


def test_a_forked_reader_does_not_wait_for_its_parents_downloads(shards):
    """A download in flight when a DataLoader worker is forked would never end in the worker
    (the thread is not there): a reader in a new process starts its own."""
    from concurrent.futures import Future

    with recording_server(shards) as (url, _):
        dataset = ShardDataset(f"{url}/train")
        dataset._ahead = {0: Future()}  # the parent's thread, gone in the child: never done
        dataset._reader = -1  # as seen from another process
        first, got = int(dataset.members(0)[0]), []
        reader = threading.Thread(target=lambda: got.append(dataset[first]), daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert got, "the reader waited for a download that never ends"
        assert torch.equal(got[0]["inputs"], ShardDataset(str(shards / "train"))[first]["inputs"])
        # a spawned worker gets the dataset pickled: none of the reading state crosses
        dataset._ahead, dataset._cached = {0: Future()}, (0, {})
        copy = pickle.loads(pickle.dumps(dataset))
        assert copy._ahead == {} and copy._cached is None and copy._reader == os.getpid()


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_wav_shards_hold_the_same_samples_as_flac_shards(tones, shards, tmp_path):
    run_cli("framework.prepare", ["shards", str(tones / "train.json"), str(tmp_path / "wav"), "--shard-size", "6",
                                  "--data-root", str(tones), "--audio-format", "wav"], cwd=tmp_path)
    with tarfile.open(tmp_path / "wav" / "shard-000000.tar") as tar:
        assert sorted({m.name.rpartition(".")[2] for m in tar.getmembers()}) == ["json", "wav"]
    wav, flac = ShardDataset(str(tmp_path / "wav")), ShardDataset(str(shards / "train"))
    assert wav.ids == flac.ids
    for i in range(len(wav)):
        assert torch.equal(wav[i]["inputs"], flac[i]["inputs"]), wav.ids[i]


def test_a_stream_of_wav_shards_scales_the_samples_into_its_batches(tones, tmp_path, monkeypatch):
    """Raw audio from WAV shards stays integer PCM until its batch scales it into the padded
    rows; the batch holds the samples the example decodes to, then zeros. Each payload is
    taken where the index says it lies."""
    write_shards(tones / "train.json", tmp_path / "wav", shard_size=6, data_root=str(tones), workers=1,
                 audio_format="wav")
    dataset = ShardDataset(str(tmp_path / "wav"))
    without_tar_walks(monkeypatch)
    collated = []  # what the main process' reader (0 workers) hands to collate
    monkeypatch.setattr(stream, "collate", lambda examples: collated.extend(examples) or collate(examples))
    for workers in (0, 2):
        loader = make_loader(dataset, DynamicBatchSampler(dataset.lengths, max_batch_length=20.0, num_buckets=4),
                             workers, 0)
        seen = 0
        for batch in loader:
            assert batch.inputs.dtype == torch.float32
            for row, uid, n in zip(batch.inputs, batch.id, batch.inputs_lens.tolist()):
                expected = dataset[dataset.ids.index(uid)]["inputs"]
                assert n == len(expected) and torch.equal(row[:n], expected) and not row[n:].any(), uid
                seen += 1
        assert seen == len(dataset)
    assert len(collated) == len(dataset) and all(isinstance(ex["inputs"], PCM) for ex in collated)


def test_prepare_shards_of_features_round_trips(tones, tmp_path, monkeypatch):
    out = tmp_path / "fbank"
    run_cli("framework.prepare", ["shards", str(tones / "valid.json"), str(out), "--shard-size", "5", "--data-root",
                                  str(tones), "--features", "fbank", "--workers", "1"], cwd=tmp_path)
    dataset = ShardDataset(str(out))
    without_tar_walks(monkeypatch)
    assert dataset.kind == "features" and dataset.feature_config["_target_"] == "framework.features.fbank"
    extractor = instantiate(dataset.feature_config)
    entries = load_entries(tones / "valid.json", replacements={"data_root": str(tones)}, sample_rate=16000)
    for i, entry in enumerate(entries):
        wav = read_audio(entry.path, 16000)
        feats, _ = extractor(wav[None], torch.tensor([len(wav)]))
        assert torch.equal(dataset[i]["inputs"], feats[0]), entry.id
    # a run on them takes the recorded extractor
    run_cli("framework.train", [*TINY_MODEL, "dataset=shards", f"dataset.train.path={out}", f"dataset.valid.path={out}",
                                "features=none", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert "features: the extractor recorded in dataset.train" in (tmp_path / "run" / "train.log").read_text()


def test_killed_prepare_shards_keeps_the_finished_shards_and_a_rerun_writes_the_rest(tones, tmp_path):
    rows = json.loads((tones / "train.json").read_text())
    uids = list(rows)[:24]
    stuck = tmp_path / "stuck.wav"
    os.mkfifo(stuck)  # a read that never returns, like a hung network mount: the last shard stays unfinished
    manifest = {uid: {**rows[uid], "wav": rows[uid]["wav"].replace("{data_root}", str(tones))} for uid in uids}
    manifest[uids[-1]]["wav"] = str(stuck)
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    args = ["shards", str(tmp_path / "m.json"), str(out), "--shard-size", "6", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "framework.prepare", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    try:
        deadline = time.time() + 120
        while len(list((out / ".parts").glob("shard-*.json"))) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert len(list((out / ".parts").glob("shard-*.json"))) == 3, proc.poll()
        workers = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143 and one_line(stderr) == "terminated", stderr
        assert not survivors(workers), "worker processes outlived the command"
    finally:
        kill_with_children(proc)
    assert not (out / "index.json").exists() and not list(out.glob(".*.tmp"))
    kept = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard-*.tar")}
    assert sorted(kept) == [f"shard-00000{i}.tar" for i in range(3)]

    stuck.unlink()
    shutil.copy(manifest[uids[-2]]["wav"], stuck)  # the hung file is readable now
    proc = run_cli("framework.prepare", args, cwd=tmp_path)
    assert "in 4 shard(s) (3 kept from an earlier write)" in proc.stdout
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == {n: v[0] for n, v in kept.items()}  # not rewritten
    assert not (out / ".parts").exists()
    dataset = ShardDataset(str(out))
    assert dataset.ids == uids and all(not isinstance(dataset[i], Exception) for i in range(len(uids)))
    # a fresh write gives the same bytes: the shards do not depend on how the write went
    fresh = tmp_path / "fresh"
    run_cli("framework.prepare", [*args[:2], str(fresh), *args[3:]], cwd=tmp_path)
    for shard in out.glob("shard-*.tar"):
        assert shard.read_bytes() == (fresh / shard.name).read_bytes(), shard.name


def test_prepare_shards_workers_die_with_a_killed_command(tones, tmp_path):
    """SIGKILL leaves no cleanup to the command: its workers end with it, not after their
    task (a worker here is stuck on a read that never returns)."""
    rows = json.loads((tones / "train.json").read_text())
    uids = list(rows)[:12]
    stuck = tmp_path / "stuck.wav"
    os.mkfifo(stuck)
    manifest = {uid: {**rows[uid], "wav": rows[uid]["wav"].replace("{data_root}", str(tones))} for uid in uids}
    manifest[uids[-1]]["wav"] = str(stuck)
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "framework.prepare", "shards", str(tmp_path / "m.json"), str(out),
                             "--shard-size", "6", "--workers", "2"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    try:
        deadline = time.time() + 120
        while not list((out / ".parts").glob("shard-*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        workers = children_of(proc.pid)
        assert workers, proc.poll()
        proc.kill()
        proc.communicate(timeout=60)
        assert not survivors(workers), "worker processes outlived the killed command"
    finally:
        kill_with_children(proc)


def test_a_write_with_other_settings_leaves_the_folder_as_it_was_until_its_index_replaces_it(tones, tmp_path):
    """Rewriting FLAC shards as WAV that fails at its last shard: the folder still reads as the
    FLAC write, every example; run again, it reads as the WAV write, with the FLAC files gone."""
    rows = json.loads((tones / "train.json").read_text())
    uids = list(rows)[:24]
    manifest = {uid: {**rows[uid], "wav": rows[uid]["wav"].replace("{data_root}", str(tones))} for uid in uids}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    args = ["shards", str(tmp_path / "m.json"), str(out), "--shard-size", "6", "--workers", "1"]
    run_cli("framework.prepare", args, cwd=tmp_path)
    before = ShardDataset(str(out))
    samples = [before[i]["inputs"] for i in range(len(uids))]
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all" * 100)
    broken = {**manifest, uids[-1]: {**manifest[uids[-1]], "wav": str(tmp_path / "garbage.wav")}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    proc = run_cli("framework.prepare", ["shards", str(tmp_path / "broken.json"), *args[2:], "--audio-format", "wav"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "garbage.wav" in one_line(proc.stderr), proc.stderr
    assert len(list(out.glob("shard-*.*.tar"))) == 3  # the WAV shards before the failed one, under other names
    still = ShardDataset(str(out))
    assert still.payload == "flac" and all(torch.equal(still[i]["inputs"], samples[i]) for i in range(len(uids)))

    proc = run_cli("framework.prepare", [*args, "--audio-format", "wav"], cwd=tmp_path)
    assert "(3 kept from an earlier write)" in proc.stdout  # those of the failed run
    after = ShardDataset(str(out))
    assert after.payload == "wav" and all(torch.equal(after[i]["inputs"], samples[i]) for i in range(len(uids)))
    assert sorted(p.name for p in out.glob("shard-*.tar")) == sorted(s["name"] for s in after.shards)
    assert all(re.fullmatch(r"shard-00000\d\.[0-9a-f]{8}\.tar", s["name"]) for s in after.shards)
    run_cli("framework.prepare", args, cwd=tmp_path)  # and back to FLAC: the plain names are free again
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [f"shard-00000{i}.tar" for i in range(4)]


def test_prepare_shards_refuses_a_file_as_its_folder_and_an_output_with_nothing_readable(tones, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_cli("framework.prepare", ["shards", str(tones / "valid.json"), str(tmp_path / "afile"), "--shard-size",
                                         "8", "--data-root", str(tones)], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"error: {tmp_path}/afile is a file: give prepare shards a folder to write (new or "
                                     "of an earlier write)")
    proc = run_cli("framework.prepare", ["shards", str(tones / "valid.json"), str(tmp_path / "none"), "--shard-size",
                                         "8", "--data-root", str(tmp_path / "nowhere"), "--skip-bad"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).startswith(f"error: {tones}/valid.json: no entry could be read")
    assert not (tmp_path / "none" / "index.json").exists()


# ------------------------------------------------------------------------------ reading
def plan_loader(shards: Path, seed: int = 0, num_workers: int = 0, ranks: int = 1, rank: int = 0, **kw):
    dataset = ShardDataset(str(shards / "train"))
    sampler = DynamicBatchSampler(dataset.lengths, max_batch_length=20.0, num_buckets=4, seed=seed,
                                  num_replicas=ranks, rank=rank, **kw)
    return make_loader(dataset, sampler, num_workers, seed)


def test_epoch_order_is_deterministic_per_seed_and_every_utterance_comes_once(shards):
    everyone = sorted(ShardDataset(str(shards / "train")).ids)
    orders = {}
    for seed, epoch, workers in ((0, 0, 0), (0, 0, 2), (0, 1, 0), (1, 0, 0)):
        loader = plan_loader(shards, seed, workers)
        loader.batch_sampler.set_epoch(epoch)
        batches = ids_of(loader)
        assert sorted(sum(batches, [])) == everyone  # each once
        assert all(b.tolist() == [loader.dataset.ids.index(i) for i in ids] for b, ids in
                   zip(loader.batch_sampler.rank_batches(), batches))  # the plan is what is read
        again = plan_loader(shards, seed, workers)
        again.batch_sampler.set_epoch(epoch)
        assert ids_of(again) == batches  # the same seed and epoch: the same batches, in the same order
        orders[seed, epoch, workers] = batches
    assert orders[0, 0, 0] != orders[0, 1, 0] and orders[0, 0, 0] != orders[1, 0, 0]


def test_two_ranks_of_two_workers_see_every_utterance_once_in_as_many_batches(shards):
    everyone = sorted(ShardDataset(str(shards / "train")).ids)
    for epoch in range(3):
        seen, counts = [], []
        for rank in range(2):
            loader = plan_loader(shards, num_workers=2, ranks=2, rank=rank)
            loader.batch_sampler.set_epoch(epoch)
            batches = ids_of(loader)
            expected = [[loader.dataset.ids[i] for i in b.tolist()] for b in loader.batch_sampler.rank_batches()]
            assert batches == expected  # the DataLoader's turns over its workers are the plan's
            seen += sum(batches, [])
            counts.append(len(batches))
        assert sorted(seen) == everyone and counts[0] == counts[1] > 0, (epoch, counts)


def test_torchrun_two_ranks_of_two_workers_take_equal_steps(shards, tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun(["-m", "framework.train", *train_args(shards, run_dir, "trainer.device=cpu", "trainer.num_workers=2",
                                                   "trainer.max_epochs=2")], cwd=tmp_path)
    rank0, rank1 = (run_dir / "train.log").read_text(), (run_dir / "train-rank1.log").read_text()
    assert steps_per_epoch(rank0) == steps_per_epoch(rank1) and len(steps_per_epoch(rank0)) == 2
    assert all(h["valid_examples"] == SPLITS["valid"] for h in metrics_of(run_dir)["history"])  # each scored once


def test_a_resumed_epoch_continues_with_the_same_batches(shards):
    for workers in (0, 2):
        whole = ids_of(plan_loader(shards, num_workers=workers, ranks=2, rank=1))
        for start in (1, 3, len(whole) - 1):
            loader = plan_loader(shards, num_workers=workers, ranks=2, rank=1)
            state = loader.batch_sampler.state_dict(consumed=start)
            resumed = plan_loader(shards, num_workers=workers, ranks=2, rank=1)
            resumed.batch_sampler.load_state_dict(state)
            assert ids_of(resumed) == whole[start:], (workers, start)


@pytest.mark.slow  # 15-30 s each: `make test-slow` runs them
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_mid_epoch_then_resume_is_bitwise_equal(shards, tmp_path, sig):
    """SIGTERM (a checkpoint at the step) or SIGKILL (the newest every-step checkpoint) 3 steps
    into epoch 2, then ``resume=auto``: the stream continues where the checkpoint was."""
    args = ["trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1", "batching.max_batch_length=6",
            "trainer.num_threads=1", "augment=speech"]
    run_cli("framework.train", train_args(shards, tmp_path / "straight", *args), cwd=tmp_path)
    steps = metrics_of(tmp_path / "straight")["history"][0]["steps"]
    assert steps >= 8

    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "framework.train", *train_args(shards, run_dir, *args)], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    wait_for(run_dir / "checkpoints" / f"ckpt-{steps + 3:09d}.pt", proc)  # 3 steps into epoch 2
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), stderr
    state = newest_state(run_dir)
    assert state["progress"]["epoch"] == 1 and 0 < state["progress"]["batch_in_epoch"] < steps  # mid-epoch
    assert state["sampler"]["position"] == state["progress"]["batch_in_epoch"]

    run_cli("framework.train", train_args(shards, run_dir, *args, "trainer.resume=auto"), cwd=tmp_path)
    assert_trained_alike(tmp_path / "straight", run_dir, (*FIGURES, "valid_cer"))


@pytest.mark.slow  # ~1 min each: three torchrun trainings
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_torchrun_from_shards_stopped_mid_epoch_resumes_bitwise(shards, tmp_path, sig):
    """2 ranks x 2 readers; SIGTERM to torchrun (a checkpoint at the step), or SIGKILL to the
    whole job (the newest every-step checkpoint, a stale run lock)."""
    args = ["trainer.device=cpu", "trainer.num_workers=2", "trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1",
            "batching.max_batch_length=6"]

    def start(run_dir: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "framework.train", *train_args(shards, run_dir, *args, *extra)]
        out = open(tmp_path / f"{run_dir.name}{len(extra)}.out", "w")
        return subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=out, stderr=out,
                                preexec_fn=as_from_a_shell, start_new_session=True)

    assert start(tmp_path / "straight").wait(timeout=600) == 0, (tmp_path / "straight0.out").read_text()
    steps = metrics_of(tmp_path / "straight")["history"][0]["steps"]
    assert steps >= 4
    run_dir = tmp_path / "stopped"
    proc = start(run_dir)
    wait_for(run_dir / "checkpoints" / f"ckpt-{steps + 2:09d}.pt", proc)  # 2 steps into epoch 2
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun, both ranks and their readers at once
    else:
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    assert proc.wait(timeout=120) != 0
    state = newest_state(run_dir)
    assert state["progress"]["epoch"] == 1 and 0 < state["progress"]["batch_in_epoch"] < steps  # mid-epoch

    assert start(run_dir, "trainer.resume=auto").wait(timeout=600) == 0, (tmp_path / "stopped1.out").read_text()
    assert_trained_alike(tmp_path / "straight", run_dir)


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


def test_tar_spans_are_tarfiles_whatever_wrote_the_headers(shards, tmp_path):
    """The ustar headers read without tarfile give its members, and headers of other kinds
    (pax for long or non-ASCII names, GNU long names) are read by tarfile."""
    written = (shards / "train" / "shard-000000.tar").read_bytes()
    assert [(n, bytes(v)) for n, v in tar_members(memoryview(written))] == tarfile_members(written)
    files = [("a.wav", b"x" * 700), ("dir/b.json", b"{}"), ("\u00e9t\u00e9.json", b"[1]"), ("long" * 40 + ".wav", b"y" * 3),
             ("d" * 60 + "/" + "e" * 60 + ".wav", b"z" * 9), ("c.wav", b"")]  # the 5th: a ustar name with a prefix
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            for name, data in files:
                if fmt == tarfile.USTAR_FORMAT and name.startswith("long"):
                    continue  # ustar cannot name it (no "/" to split it at)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        data = buffer.getvalue()
        assert [(n, bytes(v)) for n, v in tar_members(memoryview(data))] == tarfile_members(data), fmt


@pytest.mark.parametrize("cut", [0.01, 0.02, 0.5])  # in the first header, in its data, further on
def test_a_cut_or_damaged_tar_is_a_read_error(shards, cut):
    written = (shards / "train" / "shard-000000.tar").read_bytes()
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_members(memoryview(written[: int(len(written) * cut) + 7])))
    with tarfile.open(fileobj=io.BytesIO(written)) as tar:
        second = tar.getmembers()[1].offset
    damaged = bytearray(written)
    damaged[second + 10] ^= 0x01  # a name byte in the second header
    first = tar_members(memoryview(bytes(damaged)))
    next(first)
    with pytest.raises(tarfile.ReadError, match="bad checksum in the header at byte"):
        next(first)


# ------------------------------------------------------------------------------ faults
@pytest.mark.parametrize("damage", ["truncated", pytest.param("corrupt", marks=pytest.mark.slow)])
def test_a_damaged_shard_is_one_line_naming_it(shards, tmp_path, damage):
    copy = tmp_path / "train"
    shutil.copytree(shards / "train", copy)
    shard = copy / "shard-000003.tar"
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # a flipped byte inside the third file's data (past its 512-byte tar header)
        with tarfile.open(shards / "train" / shard.name) as tar:
            member = tar.getmembers()[2]
        data[member.offset_data + member.size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = run_cli("framework.train", train_args(shards, tmp_path / "run", "trainer.max_epochs=1", train=str(copy)),
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith(f"error: {shard}: ") and "write the shards again" in line, line
    assert line.endswith("or pass dataset.train.skip_bad=true"), line  # an override that works when pasted
    assert ("truncated" in line) if damage == "truncated" else ("CRC-32" in line), line

    proc = run_cli("framework.train", train_args(shards, tmp_path / "skip", "trainer.max_epochs=1",
                                                 "dataset.train.skip_bad=true", train=str(copy)), cwd=tmp_path)
    assert "example(s) skipped as unreadable so far (skip_bad)" in proc.stderr and str(shard) in proc.stderr


def test_a_shard_from_another_write_is_named_as_such(shards, tmp_path):
    """A payload that fails its check is explained from its .json: here the shard holds
    other examples than the index lists there (another write's shard under this name). A
    damaged .json beside a sound payload is not read at all (the index holds the same)."""
    copy = tmp_path / "train"
    shutil.copytree(shards / "train", copy)
    shutil.copy(copy / "shard-000001.tar", copy / "shard-000000.tar")
    data = bytearray((copy / "shard-000002.tar").read_bytes())
    with tarfile.open(copy / "shard-000002.tar") as tar:
        member = tar.getmember(tar.getnames()[1])  # the first key's .json
    assert member.name.endswith(".json")
    data[member.offset_data : member.offset_data + member.size] = b"\xff" * member.size
    (copy / "shard-000002.tar").write_bytes(bytes(data))
    dataset, intact = ShardDataset(str(copy)), ShardDataset(str(shards / "train"))
    with pytest.raises(ShardError, match=r"shard-000000\.tar: example 0 is '.+' but .+index\.json lists '.+' there: "
                                         r"the shard and the index come from different writes"):
        dataset[int(dataset.members(0)[0])]
    first = int(dataset.members(2)[0])
    assert torch.equal(dataset[first]["inputs"], intact[first]["inputs"])


def test_a_folder_without_an_index_is_one_line(shards, tmp_path):
    proc = run_cli("framework.train", train_args(shards, tmp_path / "run", train=str(tmp_path)), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"error: {tmp_path}/index.json not found: {tmp_path} is not a shards folder; write "
                                     "one with `python -m framework.prepare shards MANIFEST OUT_DIR --shard-size N`")
    with pytest.raises(ShardError, match=f"^{shards}/train/index.json: give the shards folder, not its index: "
                                         f"{shards}/train$"):
        ShardDataset(str(shards / "train" / "index.json"))
    pytest.importorskip("fsspec")
    if importlib.util.find_spec("s3fs") is None:  # the backend of s3:// URLs, not installed with the framework
        with pytest.raises(ShardError, match=r"^s3://bucket/train/index.json: Install s3fs to access S3 \(the fsspec "
                                             r"backend of s3:// URLs\)$"):
            ShardDataset("s3://bucket/train")


# ------------------------------------------------------------------------------ HTTP
def http_server(root: Path):
    """A real HTTP server of ``root`` on 127.0.0.1 (the shards benchmark's, without its latency)."""
    from benchmarks.shards import slow_server

    return slow_server(root, 0.0)


def test_shards_over_http_train_as_the_local_folder_does(shards, tmp_path):
    args = ["trainer.max_epochs=1", "trainer.num_workers=2"]
    run_cli("framework.train", train_args(shards, tmp_path / "local", *args), cwd=tmp_path)
    with http_server(shards) as url:
        run_cli("framework.train", train_args(shards, tmp_path / "http", *args, train=f"{url}/train"), cwd=tmp_path)
        proc = run_cli("framework.train", train_args(shards, tmp_path / "gone", *args, train=f"{url}/nothing"),
                       cwd=tmp_path, check=False)
    assert proc.returncode == 2 and one_line(proc.stderr).startswith(f"error: {url}/nothing/index.json not found")
    assert_trained_alike(tmp_path / "local", tmp_path / "http", (*FIGURES, "valid_cer"))


@contextlib.contextmanager
def recording_server(root: Path, hold_s: float = 0.0, cut: str | None = None, stall: str | None = None):
    """A real HTTP server of ``root`` on 127.0.0.1 that records each GET as ``[path, start,
    end]`` (from its headers to the end of its body), waits ``hold_s`` between the two,
    stops sending the file named ``cut`` half-way and closes the connection (a server that
    goes away mid-shard), and never sends the file named ``stall`` (a stalled network)."""
    requests: list[list] = []
    closing = threading.Event()

    class Recording(http.server.SimpleHTTPRequestHandler):
        def copyfile(self, source, outputfile) -> None:
            entry = [self.path, time.monotonic(), None]
            requests.append(entry)
            time.sleep(hold_s)
            if stall is not None and self.path.endswith(stall):
                closing.wait()
                return
            data = source.read()
            if cut is not None and self.path.endswith(cut):
                data, self.close_connection = data[: len(data) // 2], True
            outputfile.write(data)
            entry[2] = time.monotonic()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Recording, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        closing.set()
        server.shutdown()
        server.server_close()


def test_each_shard_is_one_request_and_the_next_windows_download_while_one_is_read(shards):
    """One GET per shard per epoch, and the GETs of the next two windows' shards (2 x
    window_shards, 4 by default) made while the first is still arriving, never more: the
    network's wait overlaps the reading, and a window's shards have arrived when it starts."""
    local = ShardDataset(str(shards / "train"))
    sampler = lambda: DynamicBatchSampler(local.lengths, max_batch_length=20.0, num_buckets=4, seed=0)  # noqa: E731
    with recording_server(shards, hold_s=0.3) as (url, requests):
        remote = ShardDataset(f"{url}/train")
        for a, b in zip(make_loader(remote, sampler(), 0, 0), make_loader(local, sampler(), 0, 0), strict=True):
            assert list(a["id"]) == list(b["id"]) and torch.equal(a["inputs"], b["inputs"])
    paths = sorted(r[0] for r in requests)
    assert paths == sorted(["/train/index.json", *(f"/train/{s['name']}" for s in local.shards)]), paths
    # at each GET's start, the GETs still sending for more than 50 ms after it: the server
    # records a GET's end after its last write, which a loaded machine may delay by some ms
    # after the client has the bytes and has moved on
    in_flight = [sum(r[1] <= t and r[2] > t + 0.05 for r in requests) for t in (r[1] for r in requests)]
    assert max(in_flight) == 1 + stream.AHEAD_WINDOWS * remote.window_shards == 5, requests


def test_a_stream_stopped_early_lets_go_of_the_shards_fetched_ahead(shards):
    sampler = DynamicBatchSampler(ShardDataset(str(shards / "train")).lengths, max_batch_length=20.0, num_buckets=4,
                                  seed=0)
    with recording_server(shards) as (url, _):
        remote = ShardDataset(f"{url}/train")
        batches = iter(make_loader(remote, sampler, 0, 0))
        next(batches)
        assert remote._ahead  # the next shards, downloading
        del batches  # a time budget or a step limit ends the epoch here
        assert not remote._ahead


def test_a_server_that_is_down_when_the_run_starts_is_exit_75_not_a_damaged_folder(shards, tmp_path):
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = run_cli("framework.train", train_args(shards, tmp_path / "run", train=f"http://127.0.0.1:{port}/train"),
                   cwd=tmp_path, check=False)
    assert proc.returncode == 75, proc.stderr
    assert one_line(proc.stderr).startswith(f"error: http://127.0.0.1:{port}/train/index.json: the download failed "
                                            "(URLError: "), proc.stderr
    assert "check that the server answers and run again" in proc.stderr

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(403)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # a refusal is the user's to mend (credentials, the URL), not a reason to run again later
        with pytest.raises(ShardError, match="HTTP Error 403"):
            ShardDataset(f"http://127.0.0.1:{server.server_address[1]}/train")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_server_that_goes_away_mid_shard_is_one_line_naming_the_shard(shards, tmp_path, skip_bad):
    """The network's failure, not the shard's: said as such (exit status 75: run again later),
    and never skipped as damage."""
    with recording_server(shards, cut="shard-000003.tar") as (url, _):
        proc = run_cli("framework.train", train_args(shards, tmp_path / "run", "trainer.max_epochs=1",
                                                     f"dataset.train.skip_bad={str(skip_bad).lower()}",
                                                     train=f"{url}/train"), cwd=tmp_path, check=False)
    assert proc.returncode == 75, proc.stderr
    line = one_line(proc.stderr)
    assert re.fullmatch(rf"error: {url}/train/shard-000003.tar: the download failed \(ConnectionError: the server "
                        r"sent \d+ of the \d+ bytes it announced\); check that the server answers and run again \(a "
                        r"training run continues from its last checkpoint with trainer.resume=auto\)", line), line
    assert "skipped" not in proc.stderr


def stopped_at_once(proc: subprocess.Popen, stalled: Callable[[], None]) -> str:
    """SIGTERM to ``proc`` a second after ``stalled()`` returns (the loop then waits for a
    shard that does not come): it exits 143 within 8 s, without a traceback. Its stderr."""
    try:
        stalled()
        time.sleep(1.0)  # the shards before the stalled one read
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        kill_with_children(proc)
    assert proc.returncode == 143, stderr
    assert time.monotonic() - start < 8 and "Traceback" not in stderr, stderr
    return stderr


@pytest.mark.parametrize("workers, stall", [(0, "shard-000005.tar"), (2, ".tar")])
def test_sigterm_while_a_shard_download_stalls_stops_at_once_with_a_checkpoint(shards, tmp_path, workers, stall):
    """A scheduler's SIGTERM while the loop waits for a shard that does not come (one shard,
    in one process; every shard, with 2 workers each stuck on one): the wait ends, the
    position is checkpointed and the run exits 143 within seconds (not after the download's
    60 s timeout, as a damaged shard, nor after the workers' shutdown); the checkpoint resumes."""
    run_dir = tmp_path / "run"
    args = ["trainer.max_epochs=1", f"trainer.num_workers={workers}", "trainer.checkpoint.every_n_steps=1"]
    with recording_server(shards, stall=stall) as (url, requests):
        proc = subprocess.Popen([sys.executable, "-m", "framework.train", *train_args(shards, run_dir, *args,
                                                                                       train=f"{url}/train")],
                                cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=as_from_a_shell)
        def stalled() -> None:
            deadline = time.monotonic() + 120
            while sum(r[0].endswith(stall) for r in requests) < max(1, workers) and time.monotonic() < deadline:
                time.sleep(0.05)

        stderr = stopped_at_once(proc, stalled)
    assert "stopped by a signal" in stderr and "download failed" not in stderr
    run_cli("framework.train", train_args(shards, run_dir, *args, "trainer.resume=auto"), cwd=tmp_path)
    assert metrics_of(run_dir)["history"][-1]["epoch"] == 1


def test_validation_over_a_stalled_server_costs_no_training(shards, tmp_path):
    """Validation streamed from a URL: the epoch's training is checkpointed before it, a SIGTERM
    while validation waits for a shard that does not come stops at once, and the resumed run
    validates that epoch again without training it again."""
    run_dir = tmp_path / "run"
    with recording_server(shards, stall="valid/shard-000001.tar") as (url, _):
        proc = subprocess.Popen([sys.executable, "-m", "framework.train", *train_args(
            shards, run_dir, "trainer.max_epochs=1", f"dataset.valid.path={url}/valid",
            "dataset.valid.window_shards=1")], cwd=tmp_path, env=ENV,  # the check before training reads shard 0 only
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
        # the epoch trained and checkpointed: validation waits
        stderr = stopped_at_once(proc, lambda: wait_for(run_dir / "checkpoints" / "index.json", proc, timeout=120))
    assert "stopped by a signal in epoch 1's validation" in stderr
    trained = index_of(run_dir)[-1]["step"]
    assert trained > 0 and not index_of(run_dir)[-1]["metrics"]  # not scored: validation had not ended

    with recording_server(shards) as (url, requests):  # the server is back
        proc = run_cli("framework.train", train_args(shards, run_dir, "trainer.max_epochs=1", "trainer.resume=auto",
                                                     f"dataset.valid.path={url}/valid", "dataset.valid.window_shards=1"),
                       cwd=tmp_path)
    assert re.search(rf"resumed from \S+: epoch 1, batch \d+, step {trained}\n", proc.stderr), proc.stderr
    assert any(r[0] == "/valid/shard-000001.tar" for r in requests)
    history = metrics_of(run_dir)["history"]  # the epoch validated, and no step trained again
    assert len(history) == 1 and history[0]["step"] == trained and "valid_cer" in history[0]
    assert index_of(run_dir)[-1]["metrics"]["cer"] == history[0]["valid_cer"]


def test_shards_at_another_fsspec_url_read_as_the_local_folder(shards):
    """The path s3:// and gs:// take (fsspec, not plain HTTP), through fsspec's in-memory
    filesystem: the same batches of the same examples as from the local folder."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.put(str(shards / "train"), "/bench-shards/train", recursive=True)
    try:
        remote = ShardDataset("memory://bench-shards/train", storage_options={})
        local = ShardDataset(str(shards / "train"))
        assert remote.ids == local.ids and np.array_equal(remote.lengths, local.lengths)
        sampler = lambda: DynamicBatchSampler(local.lengths, max_batch_length=20.0, num_buckets=4, seed=0)  # noqa: E731
        for a, b in zip(make_loader(remote, sampler(), 0, 0), make_loader(local, sampler(), 0, 0), strict=True):
            assert list(a["id"]) == list(b["id"]) and torch.equal(a["inputs"], b["inputs"])
    finally:
        memory.rm("/bench-shards", recursive=True)


def test_every_recipe_option_works_on_shards_unchanged(shards, tmp_path):
    """Features in the workers and augmentation on streamed examples."""
    proc = run_cli("framework.train", train_args(shards, tmp_path / "run", "trainer.max_epochs=1", "augment=speech",
                                                 "features.where=worker", "trainer.num_workers=2"), cwd=tmp_path)
    assert "finished in" in proc.stderr + proc.stdout
    assert np.isfinite(metrics_of(tmp_path / "run")["history"][0]["train_loss"])


# ------------------------------------------------------------------------------ docs
@pytest.mark.slow  # ~40 s; each of its steps has a fast test above
def test_data_tutorial(tmp_path, data_dir):
    out = run_doc("data.md", tmp_path, data_dir)
    assert "ShardDataset: 800 examples" in out and "batches per epoch" in out
    assert "test_cer" not in metrics_of(tmp_path / "runs" / "shards")["metrics"]  # no test split given
    assert len(list((tmp_path / "shards" / "train").glob("shard-*.tar"))) == 16
