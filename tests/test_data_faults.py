"""Data reading and the prepare commands under faults, through the real commands: NeMo
segments, classification manifests end to end, virtual HDF5 files without their shards,
stop signals during prepare, audio whose length is not the declared one, and hints that
name overrides the command line accepts."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from framework.data.audio import AudioError
from framework.data.hdf5 import HDF5Dataset
from framework.data.manifest import ManifestDataset, ManifestError, load_entries
from tests.conftest import ROOT, TINY, run_cli, run_result
from tests.helpers import alive, as_from_a_shell, children_of, kill_with_children, one_line, survivors

SR = 16000
TINY_MODEL = [o for o in TINY if not o.startswith("dataset.")]


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(round(seconds * SR)))).astype(np.float32)


@pytest.fixture()
def spoken(tmp_path) -> Path:
    """Six WAV clips with transcripts in a table: a corpus folder for the prepare commands."""
    root = tmp_path / "clips"
    root.mkdir()
    rows = [["file", "text"]]
    for i in range(6):
        soundfile.write(root / f"c{i}.wav", noise(0.4 + 0.1 * i, seed=i), SR)
        rows.append([f"c{i}.wav", ["one", "two", "three"][i % 3]])
    with open(tmp_path / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def prepare_manifest(root: Path, out: Path, table: Path) -> None:
    run_cli("framework.prepare", ["manifest", str(root), str(out), "--layout", "generic", "--table", str(table)],
            cwd=out.parent)


# ------------------------------------------------------------------- 1. NeMo segments
def test_a_nemo_offset_reads_exactly_that_segment(tmp_path):
    audio = noise(30.0)
    soundfile.write(tmp_path / "long.wav", audio, SR, subtype="FLOAT")
    rows = [{"audio_filepath": "long.wav", "offset": 10, "duration": 2, "text": "a"},
            {"audio_filepath": "long.wav", "offset": 0.5, "duration": 1.25, "text": "b"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = ManifestDataset(tmp_path / "m.jsonl")
    assert ds.lengths.tolist() == [2.0, 1.25]
    assert torch.equal(ds[0]["inputs"], torch.from_numpy(audio[10 * SR : 12 * SR]))
    assert torch.equal(ds[1]["inputs"], torch.from_numpy(audio[SR // 2 : SR // 2 + 20000]))
    assert "offset" not in ds[0]


@pytest.mark.parametrize("key", ["start", "end", "start_time", "end_time", "begin"])
def test_a_timing_key_the_loader_does_not_understand_is_named(tmp_path, key):
    soundfile.write(tmp_path / "a.wav", noise(2.0), SR)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u1", "audio_filepath": "a.wav", key: 0.5, "duration": 1.0, "text": "a"}) + "\n")
    message = (f"{manifest}: entry 'u1': timing key {key!r} is not understood; give a segment as NeMo does, 'offset' "
               "(seconds into the file) with 'duration' (seconds), or remove the key")
    if key != "start":
        with pytest.raises(ManifestError, match=re.escape(message)):
            load_entries(manifest)
        return
    proc = run_cli("framework.validate", ["dataset=manifest", f"dataset.train.path={manifest}",
                                          f"dataset.valid.path={manifest}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and one_line(proc.stderr) == f"error: {message}"


# ------------------------------------------- 2. classification from a manifest, end to end
@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_clip_classification_from_prepared_manifests_trains_and_evaluates(tmp_path):
    """The README's commands on three classes of clips (a low tone, a high tone, noise):
    chance accuracy is 1/3."""
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    manifests = {}
    for split, count in (("train", 16), ("dev", 6)):
        root = tmp_path / "clips" / split
        root.mkdir(parents=True)
        rows = ["file,label"]
        for label, freq in (("low", 300.0), ("high", 2500.0), ("noise", None)):
            for i in range(count):
                x = 0.3 * (np.sin(2 * np.pi * freq * (1 + 0.05 * rng.standard_normal()) * t) if freq
                           else rng.standard_normal(SR)) + 0.01 * rng.standard_normal(SR)
                soundfile.write(root / f"{label}{i:02d}.wav", x.astype(np.float32), SR)
                rows.append(f"{label}{i:02d}.wav,{label}")
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
        manifests[split] = tmp_path / f"{split}.csv"
        run_cli("framework.prepare", ["manifest", str(root), str(manifests[split]), "--layout", "generic",
                                      "--table", str(root / "labels.csv"), "--absolute"], cwd=tmp_path)
    with open(manifests["train"], newline="") as f:
        assert next(csv.reader(f)) == ["ID", "wav", "duration", "label"]

    run_dir = tmp_path / "run"
    run_cli("framework.train", ["recipe=sound_event", "dataset=manifest", f"dataset.train.path={manifests['train']}",
                                f"dataset.valid.path={manifests['dev']}", f"dataset.test.path={manifests['dev']}",
                                "trainer.checkpoint.monitor=accuracy", "trainer.max_epochs=5", "batch_size=8",
                                "model.widen_factor=1", "features.extractor.n_mels=32", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path)
    assert json.loads((run_dir / "classes.json").read_text()) == ["high", "low", "noise"]
    proc = run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path)
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["test_accuracy"] == pytest.approx(run_result(run_dir)["metrics"]["test_accuracy"])
    assert metrics["test_accuracy"] > 0.5, metrics


# ------------------------------------------------------ 3. virtual HDF5 and its shards
def read_all(path: Path) -> dict[str, torch.Tensor]:
    ds = HDF5Dataset(path)
    return {ds.ids[i]: ds[i]["inputs"] for i in range(len(ds))}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture()
def virtual_h5(spoken, tmp_path) -> tuple[Path, Path]:
    """(manifest, out.h5) packed by `prepare hdf5 --combine virtual`, its shards beside it."""
    manifest = tmp_path / "m.json"
    prepare_manifest(spoken, manifest, tmp_path / "table.csv")
    out = tmp_path / "v.h5"
    run_cli("framework.prepare", ["hdf5", str(manifest), str(out), "--data-root", str(spoken), "--combine", "virtual"],
            cwd=tmp_path)
    return manifest, out


def test_a_virtual_hdf5_file_without_its_shards_is_refused(virtual_h5, tmp_path):
    _, out = virtual_h5
    (tmp_path / "elsewhere").mkdir()
    copy = Path(shutil.copy(out, tmp_path / "elsewhere" / "v.h5"))  # the file without its shards folder
    proc = run_cli("framework.train", [*TINY_MODEL, "dataset=hdf5", f"dataset.train.path={copy}",
                                       f"dataset.valid.path={copy}", "trainer.max_epochs=1",
                                       f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert re.fullmatch(rf"error: {copy}: its data are a virtual dataset over v\.h5\.shards/build-\w+/shard-000\.h5, "
                        rf"which is missing \({copy.parent}/v\.h5\.shards/build-\w+/shard-000\.h5\); .*--combine copy.*",
                        line), line
    assert len(HDF5Dataset(out)) == 6  # the original, beside its shards, opens


def test_a_failed_rerun_of_prepare_hdf5_leaves_the_earlier_output_usable(virtual_h5, spoken, tmp_path):
    manifest, out = virtual_h5
    before, files = read_all(out), files_under(tmp_path)
    (spoken / "c3.wav").write_bytes(b"not audio any more")
    proc = run_cli("framework.prepare", ["hdf5", str(manifest), str(out), "--data-root", str(spoken),
                                         "--combine", "virtual"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and f"{spoken}/c3.wav: cannot read audio" in one_line(proc.stderr)
    assert files_under(tmp_path) == files  # nothing left behind, nothing removed
    after = read_all(out)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert after["c1"].abs().sum() > 0


# ---------------------------------------------------------- 4. stop signals during prepare
def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"{what}: the command ended first ({proc.returncode}): {proc.communicate()}"
        assert time.time() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def stop_and_check(proc: subprocess.Popen, signum: int, workers: set[int]) -> str:
    """Sends ``signum``; the command exits 128 + signum and leaves none of its processes."""
    try:
        proc.send_signal(signum)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a hang: every thread's stack (PYTHONFAULTHANDLER) says where
            proc.send_signal(signal.SIGABRT)
            time.sleep(2)
            for pid in workers:  # they hold the output pipes open
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"no exit within 60 s of {signal.Signals(signum).name}:\n{proc.communicate(timeout=30)[1]}")
        assert proc.returncode == 128 + signum, stderr
        assert not survivors(workers), "child processes outlived the command"
        return stderr
    finally:
        for p in workers:  # never leave a worker blocked on the FIFO behind, whatever failed
            if alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)


@contextlib.contextmanager
def started(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """``python -m framework.prepare ARGS`` in the background; neither it nor a process it
    started outlives the test, whatever fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "framework.prepare", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    try:
        yield proc
    finally:
        kill_with_children(proc)


# SIGINT takes the same path as SIGTERM (test_faults stops training with each)
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stop_signal_during_prepare_hdf5_ends_its_workers_and_keeps_the_earlier_output(virtual_h5, spoken,
                                                                                        tmp_path, signum):
    manifest, out = virtual_h5
    stuck = spoken / "stuck.wav"
    os.mkfifo(stuck)  # a read that never returns, like a hung network mount: packing is under way until stopped
    rows = json.loads(manifest.read_text())
    rows["stuck"] = {"wav": str(stuck), "duration": 1.0, "words": "one"}
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps(rows))
    before, files, old_bytes = read_all(out), files_under(tmp_path), out.read_bytes()
    with started(["hdf5", str(longer), str(out), "--data-root", str(spoken), "--combine", "virtual", "--workers", "2"],
                 tmp_path) as proc:
        wait_until(lambda: any(tmp_path.rglob(".shard-*.h5.tmp-*")), proc, "writing a shard")
        workers = children_of(proc.pid)
        assert len(workers) >= 2  # the pool's workers (and multiprocessing's resource tracker)
        stderr = stop_and_check(proc, signum, workers)
    assert files_under(tmp_path) == files and out.read_bytes() == old_bytes
    after = read_all(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert one_line(stderr) == ("terminated" if signum == signal.SIGTERM else "interrupted")


def test_sigterm_during_prepare_manifest_keeps_the_earlier_output(spoken, tmp_path):
    out = tmp_path / "m.json"
    prepare_manifest(spoken, out, tmp_path / "table.csv")
    old = out.read_text()
    stuck = spoken / "stuck.wav"
    os.mkfifo(stuck)
    files = files_under(tmp_path)
    writer = []

    def reading() -> bool:  # a writer may open a FIFO only once a reader has; holding it open, the read waits
        try:
            writer.append(os.open(stuck, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    try:
        with started(["manifest", str(spoken), str(out), "--workers", "2", "--layout", "generic"], tmp_path) as proc:
            wait_until(reading, proc, "reading the FIFO's header")
            stderr = stop_and_check(proc, signal.SIGTERM, children_of(proc.pid))
    finally:
        for fd in writer:
            os.close(fd)
    assert files_under(tmp_path) == files and out.read_text() == old
    assert one_line(stderr) == "terminated"


# ----------------------------------------------------- 5. audio not as long as declared
@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_audio_far_longer_than_declared_is_named_or_skipped(spoken, tmp_path):
    valid, manifest = tmp_path / "valid.json", tmp_path / "train.json"
    prepare_manifest(spoken, valid, tmp_path / "table.csv")
    rows = json.loads(valid.read_text())
    soundfile.write(tmp_path / "long.wav", noise(120.0), SR)
    rows["long-utt"] = {"wav": str(tmp_path / "long.wav"), "duration": 0.75, "words": "two"}
    manifest.write_text(json.dumps(rows))
    args = [*TINY_MODEL, "dataset=manifest", f"dataset.train.path={manifest}", f"dataset.valid.path={valid}",
            f"dataset.data_root={spoken}", "trainer.max_epochs=1"]
    proc = run_cli("framework.train", [*args, f"hydra.run.dir={tmp_path / 'strict'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line == (f"error: {manifest}: entry 'long-utt': {tmp_path}/long.wav: the audio is 120.00 s long but the "
                    "manifest declares 0.75 s; fix the manifest (e.g. regenerate it with `python -m framework.prepare "
                    "manifest`), or pass dataset.train.skip_bad=true")
    skip = line.rsplit("or pass ", 1)[1]  # the override the message suggests
    run_dir = tmp_path / "skip"
    run_cli("framework.train", [*args, skip, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert "1 example(s) skipped as unreadable so far (skip_bad); first: long-utt" in (run_dir / "train.log").read_text()


def test_the_length_tolerance_and_a_segment_past_the_end_of_its_file(tmp_path):
    soundfile.write(tmp_path / "a.wav", noise(3.0), SR)
    rows = {"near": {"wav": "a.wav", "duration": 2.95},  # 0.05 s off: within max(0.1 s, 5%)
            "far": {"wav": "a.wav", "duration": 2.8},  # 0.2 s off
            "cut": {"wav": "a.wav", "offset": 2.5, "duration": 2.0},  # the file ends 0.5 s into the segment
            "past": {"wav": "a.wav", "offset": 4.0, "duration": 1.0}}
    (tmp_path / "m.json").write_text(json.dumps(rows))
    ds = ManifestDataset(tmp_path / "m.json")
    assert len(ds[0]["inputs"]) == 3 * SR
    with pytest.raises(AudioError, match=r"entry 'far': .*a\.wav: the audio is 3\.00 s long but the manifest "
                                         r"declares 2\.80 s"):
        ds[1]
    with pytest.raises(AudioError, match=r"entry 'cut': .*a\.wav: the segment from offset 2\.5 s is 0\.50 s long but "
                                         r"the manifest declares 2\.00 s"):
        ds[2]
    with pytest.raises(AudioError, match=r"entry 'past': .*a\.wav: a segment from 4 s, past the end of the file "
                                         r"\(3 s\); fix its offset in the manifest"):
        ds[3]


# ----------------------------------------------------------- 6. hints the command line takes
def suggested(line: str, placeholder: str, value: Path) -> list[str]:
    """The override or flag a one-line error suggests ("set it with KEY=VALUE"), filled in."""
    match = re.search(r"set it with (.+)$", line)
    assert match, line
    return match.group(1).replace(placeholder, str(value)).split()


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_a_missing_placeholder_value_suggests_an_override_the_command_line_accepts(spoken, tmp_path):
    manifest = tmp_path / "m.json"
    proc = run_cli("framework.prepare", ["manifest", str(spoken), str(manifest), "--layout", "generic",
                                         "--table", str(tmp_path / "table.csv")], cwd=tmp_path)
    printed = re.search(r"train with (\S+)$", proc.stdout.strip()).group(1)
    assert printed == f"dataset.data_root={spoken}"
    validate = ["dataset=manifest", f"dataset.train.path={manifest}", f"dataset.valid.path={manifest}"]
    proc = run_cli("framework.validate", validate, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    override = suggested(one_line(proc.stderr), "DIR", spoken)
    assert override == [printed]
    run_cli("framework.validate", [*validate, *override], cwd=tmp_path)

    other = tmp_path / "other.json"
    other.write_text(manifest.read_text().replace("{data_root}", "{corpus}"))
    validate = ["dataset=manifest", f"dataset.train.path={other}", f"dataset.valid.path={other}"]
    proc = run_cli("framework.validate", validate, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    run_cli("framework.validate", [*validate, *suggested(one_line(proc.stderr), "VALUE", spoken)], cwd=tmp_path)

    args = ["hdf5", str(manifest), str(tmp_path / "o.h5")]
    proc = run_cli("framework.prepare", args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    run_cli("framework.prepare", [*args, *suggested(one_line(proc.stderr), "DIR", spoken)], cwd=tmp_path)
    assert len(HDF5Dataset(tmp_path / "o.h5")) == 6
