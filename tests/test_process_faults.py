"""Commands lose no work and leave nothing behind: a failed job in a sweep, stop signals in
the middle of a checkpoint write, processes killed outright, read-only run directories.

Everything goes through the real commands: real subprocesses, real signals, real file
permissions (as root, the commands run without the capability that overrides them).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.trainer.checkpoint import Checkpointer
from tests.conftest import ROOT, TINY, run_cli
from tests.helpers import as_from_a_shell

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
# a model whose checkpoints (47 MB with the optimizer state) take a while to write
BIG = ["model.hidden_size=512", "model.fc_size=4096", "logger.tensorboard=false"]
MB = 1 << 20


def tiny_args(data_dir: Path, *overrides: str) -> list[str]:
    return [*TINY, f"dataset.root={data_dir}/tones-tiny", *overrides]


def start(module: str, args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before {what}:\n{proc.communicate()[1]}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.0005)


def being_written(directory: Path, pattern: str, at_least: int = MB):
    """True once a temporary file matching ``pattern`` holds ``at_least`` bytes: torch.save is
    in the middle of writing the tensors."""

    def check() -> bool:
        for tmp in directory.glob(pattern):
            try:
                if tmp.stat().st_size >= at_least:
                    return True
            except FileNotFoundError:
                pass
        return False

    return check


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "RuntimeError" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip()][-1]


def temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob(".*.tmp"))


# --------------------------------------------------------------------------- 1. sweeps
def test_a_failed_job_is_marked_in_the_summary_and_named_in_the_last_line(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli("framework.train", ["-m", *tiny_args(data_dir, "trainer.max_epochs=1"),
                                       "trainer.checkpoint.monitor=bogus,cer,loss", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path, check=False)
    error = "trainer.checkpoint.monitor=bogus: validation reports no such metric; it reports loss, cer, wer"
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr) == (f"error: 1 of 3 jobs failed: job 0 (trainer.checkpoint.monitor=bogus): {error} "
                                      f"(summary: {sweep / 'summary.md'})")
    with open(sweep / "summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert (rows["0"]["status"], rows["0"]["error"], rows["0"]["valid_cer"]) == ("failed", error, "")
    for job, monitor in (("1", "cer"), ("2", "loss")):  # the others finished and are summarised
        assert rows[job]["status"] == "done" and rows[job]["trainer.checkpoint.monitor"] == monitor
        assert float(rows[job]["valid_cer"]) == json.loads((sweep / job / "metrics.json").read_text())["metrics"][
            "valid_cer"]
    table = (sweep / "summary.md").read_text()
    assert table.startswith(f"Sweep {sweep}: 2 of 3 jobs finished, 1 failed")
    assert "| 0 | bogus |" in table and f"| failed | {error} |" in table
    assert table.splitlines()[0] in proc.stdout
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((sweep / "0" / "failure.json").read_text()) == {"error": error, "exit_status": 2}


def test_a_sweep_stopped_by_sigterm_writes_the_summary_of_its_jobs(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = start("framework.train", ["-m", *tiny_args(data_dir, "trainer.checkpoint.every_n_steps=2"),
                                     "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    wait_until((sweep / "0" / "checkpoints" / "ckpt-000000002.pt").exists, proc, "job 0's second step")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "stopped by a signal" in last_line(err)
    table = (sweep / "summary.md").read_text()
    assert table.startswith(f"Sweep {sweep}: 0 of 1 jobs finished") and "| unfinished |" in table
    assert table.splitlines()[0] in out
    assert not temporaries(sweep)


# ------------------------------------------------------------- 2. signals mid-write
@pytest.fixture(scope="module")
def big_run(tmp_path_factory, data_dir) -> Path:
    """Two checkpoints of a model large enough that writing one takes a while."""
    run_dir = tmp_path_factory.mktemp("big") / "run"
    run_cli("framework.train", tiny_args(data_dir, *BIG, "trainer.max_epochs=1", "trainer.limit_batches=2",
                                         "trainer.checkpoint.every_n_steps=1", f"hydra.run.dir={run_dir}"),
            cwd=run_dir.parent)
    assert len(Checkpointer(run_dir / "checkpoints").index()) == 2
    return run_dir


def signal_mid_write(proc: subprocess.Popen, directory: Path, pattern: str, signum: int) -> bool:
    """Sends ``signum`` while a file matching ``pattern`` is being written. The process is
    held (SIGSTOP) once the file holds a megabyte, so the write cannot end between the look
    and the signal; the signal is sent only if the file is still there, then the process goes
    on and meets it inside the write. False when the write had already ended (a fast disk
    under a loaded machine): the caller tries again."""
    wait_until(being_written(directory, pattern), proc, f"{pattern} being written")
    proc.send_signal(signal.SIGSTOP)
    try:
        if not being_written(directory, pattern)():
            return False
        proc.send_signal(signum)
        return True
    finally:
        proc.send_signal(signal.SIGCONT)


ATTEMPTS = 3  # of a signal inside a write; each one that misses the write says so


@pytest.mark.parametrize("signum, status, line", [(signal.SIGTERM, 143, "terminated"),
                                                   (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_to_average_mid_write_leaves_no_temporary_file(big_run, tmp_path, signum, status, line):
    checkpoints = big_run / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    for _ in range(ATTEMPTS):
        proc = start("framework.average", [str(big_run), "--last", "2"], cwd=tmp_path)
        if signal_mid_write(proc, checkpoints, ".averaged.pt.tmp", signum):
            break
        proc.communicate(timeout=120)
        (checkpoints / "averaged.pt").unlink()  # written before the signal: again
    else:
        pytest.fail(f"averaging ended before the signal in {ATTEMPTS} attempts")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert last_line(err) == line and out == ""
    assert sorted(p.name for p in checkpoints.iterdir()) == before  # no averaged.pt, no temporary file


def test_a_second_ctrl_c_during_a_checkpoint_write_exits_130_and_keeps_the_earlier_checkpoints(data_dir, tmp_path):
    for attempt in range(ATTEMPTS):
        run_dir = tmp_path / f"run{attempt}"
        proc = start("framework.train", tiny_args(data_dir, *BIG, "trainer.checkpoint.every_n_steps=1",
                                                  "trainer.checkpoint.keep_last=5", f"hydra.run.dir={run_dir}"),
                     cwd=tmp_path)
        checkpoints = run_dir / "checkpoints"
        wait_until((checkpoints / "ckpt-000000002.pt").exists, proc, "the second checkpoint")
        wait_until(lambda d=checkpoints: any(d.glob(".ckpt-*.pt.tmp")), proc, "a later checkpoint being written")
        proc.send_signal(signal.SIGINT)  # the first: stop after this step
        if signal_mid_write(proc, checkpoints, ".ckpt-*.pt.tmp", signal.SIGINT):  # the second, inside torch.save
            break
        proc.communicate(timeout=120)
    else:
        pytest.fail(f"every checkpoint write ended before the second Ctrl-C in {ATTEMPTS} attempts")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received" in err and last_line(err) == "interrupted" and "KeyboardInterrupt" not in err
    assert not temporaries(run_dir)
    kept = Checkpointer(checkpoints)
    entries = kept.index()
    assert len(entries) >= 2 and all((checkpoints / e["file"]).is_file() for e in entries)
    path, state = kept.load_latest()  # the newest complete one verifies and loads
    assert state["progress"]["step"] == entries[-1]["step"] >= 2


def kill_mid_write(module: str, args: list[str], directory: Path, pattern: str, cwd: Path) -> Path:
    """SIGKILL (nothing can clean up) while a file matching ``pattern`` is being written; returns it."""
    proc = start(module, args, cwd)
    wait_until(being_written(directory, pattern), proc, f"{pattern} being written")
    proc.kill()
    proc.communicate()
    left = list(directory.glob(pattern))
    assert len(left) == 1, left
    return left[0]


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(big_run, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(big_run, run_dir)
    checkpoints = run_dir / "checkpoints"
    resume = tiny_args(data_dir, *BIG, "trainer.max_epochs=2", "trainer.limit_batches=2", "trainer.resume=auto",
                       f"hydra.run.dir={run_dir}")
    averaged_tmp = kill_mid_write("framework.average", [str(run_dir), "--last", "2"], checkpoints, ".averaged.pt.tmp",
                                  tmp_path)
    ckpt_tmp = kill_mid_write("framework.train", [*resume, "trainer.checkpoint.every_n_steps=1"], checkpoints,
                              ".ckpt-*.pt.tmp", tmp_path)
    assert ckpt_tmp.name == ".ckpt-000000003.pt.tmp" and averaged_tmp.exists()

    # training again, with checkpoints only at the end of the epoch: it never writes that name
    proc = run_cli("framework.train", [*resume, "trainer.checkpoint.every_n_steps=0"], cwd=tmp_path)
    assert f"removed {ckpt_tmp}, left by a write that was killed" in proc.stderr
    assert not ckpt_tmp.exists() and averaged_tmp.exists()  # an average's file is left to the next average
    assert "ckpt-000000004.pt" in {e["file"] for e in Checkpointer(checkpoints).index()}

    proc = run_cli("framework.average", [str(run_dir), "--last", "2"], cwd=tmp_path)
    assert f"removed {averaged_tmp}, left by a write that was killed" in proc.stderr
    assert not temporaries(run_dir) and (checkpoints / "averaged.pt").is_file()


# ----------------------------------------------------------- 3. read-only run directories
def unprivileged() -> list[str]:
    """The prefix that runs a command bound by file permissions: root ignores them unless it
    drops the capabilities that override them."""
    if os.geteuid() != 0:
        return []
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]


def run_unprivileged(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*unprivileged(), sys.executable, "-m", module, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def read_only_run(one_epoch_run, tmp_path):
    """A copy of a finished run with every permission to write taken away."""
    run_dir = tmp_path / "archived"
    shutil.copytree(one_epoch_run, run_dir)
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    probe = subprocess.run([*unprivileged(), "touch", str(run_dir / "probe")], capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr  # the permissions really apply
    yield run_dir
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}


def test_evaluate_and_transcribe_a_read_only_run_without_writing_into_it(read_only_run, data_dir, tmp_path):
    before = snapshot(read_only_run)
    proc = run_unprivileged("framework.evaluate", [str(read_only_run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 0 <= json.loads(proc.stdout)["test_cer"] <= 1.5
    assert f"cannot write {read_only_run / 'evaluate.log'} (Permission denied): logging to stderr only" in proc.stderr
    assert f"{read_only_run} is not writable: TensorBoard events are not written" in proc.stderr
    assert f"{read_only_run} is not writable: test_transcripts.tsv is not written" in proc.stderr
    assert f"weights from {read_only_run / 'checkpoints'}" in proc.stderr  # the log is on stderr

    wav = data_dir / "tones-tiny" / "test" / "test-00000.wav"
    proc = run_unprivileged("framework.transcribe", [str(read_only_run), str(wav)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{wav}\t")
    assert f"cannot write {read_only_run / 'transcribe.log'} (Permission denied)" in proc.stderr
    assert snapshot(read_only_run) == before


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_training_into_a_directory_it_cannot_write_is_refused_in_one_line(read_only_run, data_dir, tmp_path):
    before = snapshot(read_only_run)
    cases = [
        ([f"hydra.run.dir={read_only_run}", "trainer.resume=auto"], tmp_path,
         f"error: cannot write the run directory {read_only_run}: it is not writable; choose another hydra.run.dir "
         "(or make it writable)"),
        (["-m", "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={read_only_run}/sweep"], tmp_path,
         f"error: cannot write the sweep directory {read_only_run}/sweep: {read_only_run} is not writable; choose "
         "another hydra.sweep.dir (or make it writable)"),
        ([], read_only_run,  # the default run directory, runs/<date>_<time> in the current one
         f"error: cannot write the run directory {read_only_run}/runs/"),
    ]
    for overrides, cwd, message in cases:
        proc = run_unprivileged("framework.train", [*tiny_args(data_dir), *overrides], cwd=cwd)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(read_only_run) == before
