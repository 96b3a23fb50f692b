"""A time budget instead of a number of epochs, schedules that follow it, and thread counts
chosen by measurement: through the real commands."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, run_cli
from tests.helpers import (
    ENV,
    kill_with_children,
    metrics_of,
    one_line,
    start_training,
    stuck_corpus_args,
    tiny_args,
    wait_for,
)

BUDGET = ["trainer.max_epochs=1000", "scheduler.over=time"]


def learning_rates(run_dir) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/lr")]


def stop_time(log: str) -> float:
    return float(re.findall(r"stopped on time: trainer.max_time=\S+ spent \(([\d.]+) s\)", log)[-1])


def test_max_time_stops_within_a_step_then_validates_checkpoints_and_tests(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_cli("framework.train", tiny_args(data_dir, run_dir, *BUDGET, "trainer.max_time=6s"), cwd=tmp_path)
    result = metrics_of(run_dir)
    last = result["history"][-1]
    assert last["stopped_on_time"] == 1 and "valid_cer" in last and "test_cer" in result["metrics"]
    step_s = sum(h["epoch_s"] for h in result["history"]) / sum(h["steps"] for h in result["history"])
    stopped = stop_time((run_dir / "train.log").read_text())
    # the step that crossed the budget was the last (the figure also holds that epoch's validation: a loose bound)
    assert 6.0 <= stopped <= 6.0 + max(3 * step_s + 0.5, 3.0)
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert index[-1]["step"] == last["step"] and "cer" in index[-1]["metrics"]  # a scored checkpoint at the stop
    rates = learning_rates(run_dir)
    peak = max(range(len(rates)), key=lambda i: rates[i][1])
    assert all(b[1] <= a[1] for a, b in zip(rates[peak:], rates[peak + 1:]))  # annealing after the warm-up
    assert rates[-1][1] < 0.01 * rates[peak][1]  # the schedule's end reached at the budget


@pytest.mark.parametrize("workers", [0, 2])
def test_the_budget_ends_a_wait_for_data_that_does_not_come(tmp_path, data_dir, workers):
    """A read that hangs (a FIFO nobody writes to, as on a hung mount) is left at the end of the
    budget, in the workers' queue or in the read itself: the run stops on time, then validates,
    checkpoints and tests; when no step was made, it says that nothing was trained (exit 2)."""
    run_dir = tmp_path / "run"
    args = [*stuck_corpus_args(data_dir, tmp_path, run_dir, every=workers == 0), *BUDGET, "trainer.max_time=8s",
            f"trainer.num_workers={workers}", f"dataset.test.path={data_dir}/tones-tiny/test.json"]
    proc = subprocess.Popen([sys.executable, "-m", "framework.train", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
        exited = datetime.datetime.now()
    finally:
        kill_with_children(proc)  # a worker stuck on the FIFO would outlive it
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    if workers == 0:  # every utterance hangs: the first batch never comes
        assert proc.returncode == 2, stderr
        assert re.fullmatch(r"error: trainer.max_time=8s ran out before the first optimizer step, after 8\.\d s: "
                            r"nothing was trained or evaluated; give a larger trainer.max_time \(trainer.resume=auto "
                            r"continues this run\)", one_line(stderr)), stderr
        assert not (run_dir / "metrics.json").exists()
        return
    assert proc.returncode == 0, stderr
    result = metrics_of(run_dir)
    assert result["history"][-1]["stopped_on_time"] == 1
    log = (run_dir / "train.log").read_text()
    assert 8.0 <= stop_time(log) <= 9.0
    assert "test_cer" in result["metrics"]
    assert exited.timestamp() - _at(log, "finished in") < 3  # the stuck worker does not hold the exit
    assert int(re.search(r"data wait (\d+)%", log)[1]) > 50  # the interrupted wait counted: the epoch was mostly that


def test_a_wait_after_a_stop_signal_or_beside_a_callers_timer():
    """In the Python API (no command around it): a signal that came between two waits ends the
    next one before it begins; a SIGALRM timer the caller armed is left as it was (the budget is
    then looked at between steps only); a stop in one fit leaves the next one's signals working."""
    from framework.trainer.stopping import StopSignals, WaitInterrupted, leaving

    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested
        with pytest.raises(WaitInterrupted):
            with signals.waiting():
                raise AssertionError("the wait began")
    leaving()  # what a stop does in Brain.stop_now: nothing, outside a command

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        with StopSignals() as signals:
            with signals.waiting(0.05):
                time.sleep(0.2)  # not interrupted: the caller's timer stays theirs
            assert not signals.timed_out and signal.getitimer(signal.ITIMER_REAL)[0] > 25
            # SIGTERM: in a full parallel run the test process holds SIGINT ignored at the C level for
            # stretches (tests/helpers.py, as_from_a_shell), and a SIGINT it sends itself can be lost
            with pytest.raises(WaitInterrupted):
                with signals.waiting():
                    os.kill(os.getpid(), signal.SIGTERM)  # handled by this fit's StopSignals, not the last one's
                    time.sleep(1)
            assert signals.received == signal.SIGTERM
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    with StopSignals() as signals:  # no timer of the caller's: the budget ends the wait
        with pytest.raises(WaitInterrupted):
            with signals.waiting(0.05):
                time.sleep(1)
        assert signals.timed_out and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def _at(log: str, text: str) -> float:
    """When the first line of ``log`` holding ``text`` was written, in seconds."""
    line = next(line for line in log.splitlines() if text in line)
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


STALLED_BRAIN = """
import os

from framework.brain import Stage
from recipes.asr_ctc.brain import ASRBrain


class StalledBrain(ASRBrain):
    '''The machine stalls past the budget (the run's clock moved on) where STALL says: before
    epoch 2's first step (epoch2), after step 3 (step3), or before a resumed run's first step (resumed).'''

    def on_stage_start(self, stage, epoch):
        super().on_stage_start(stage, epoch)
        stall = os.environ["STALL"]
        if stage == Stage.TRAIN and (stall == "epoch2" and epoch == 1 or stall == "resumed"):
            self.progress.elapsed_s += self.stop.max_time_s

    def on_train_step_end(self, step, loss, grad_norm):
        super().on_train_step_end(step, loss, grad_norm)
        if os.environ["STALL"] == "step3" and step == 3:
            self.progress.elapsed_s += self.stop.max_time_s
"""


def stalled_run(tmp_path, data_dir, run_dir, stall: str, *overrides: str):
    (tmp_path / "stalled.py").write_text(STALLED_BRAIN)
    return run_cli("framework.train", tiny_args(data_dir, run_dir, *BUDGET, "brain._target_=stalled.StalledBrain",
                                                *overrides),
                   cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "STALL": stall})


@pytest.mark.parametrize("checkpoints", [[], ["trainer.checkpoint.every_epoch=false",
                                              "trainer.checkpoint.every_n_steps=1000"]])
def test_a_budget_spent_before_an_epochs_first_step_ends_the_run_where_the_last_epoch_did(tmp_path, data_dir,
                                                                                          checkpoints):
    """The budget runs out after the check before epoch 2 and before its first step (a busy
    machine): the run stops on time after epoch 1, validated and checkpointed (also when
    checkpoints are written every n steps only), exit 0."""
    run_dir = tmp_path / "run"
    stalled_run(tmp_path, data_dir, run_dir, "epoch2", "trainer.max_time=10m", *checkpoints)
    result = metrics_of(run_dir)
    assert len(result["history"]) == 1 and result["history"][0]["stopped_on_time"] == 1
    assert "test_cer" in result["metrics"]
    assert re.search(r"stopped on time: .* at epoch 2, step %d" % result["history"][0]["step"],
                     (run_dir / "train.log").read_text())
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert index[-1]["step"] == result["history"][0]["step"] and "cer" in index[-1]["metrics"]


def test_a_resumed_run_whose_budget_is_spent_before_its_first_step_ends_where_it_was(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    stalled_run(tmp_path, data_dir, run_dir, "step3", "trainer.max_time=10m")  # stopped on time mid-epoch 1
    stalled_run(tmp_path, data_dir, run_dir, "resumed", "trainer.max_time=30m", "trainer.resume=auto")
    log = (run_dir / "train.log").read_text()
    assert len(re.findall(r"stopped on time: .* at epoch 1, step 3\b", log)) == 2, log
    assert "test_cer" in metrics_of(run_dir)["metrics"]


def test_a_stopped_time_budgeted_run_resumes_for_the_same_total_budget(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    args = [*BUDGET, "trainer.max_time=10s", "trainer.checkpoint.every_n_steps=5"]
    proc = start_training(data_dir, run_dir, *args, cwd=tmp_path)
    wait_for(run_dir / "checkpoints" / "ckpt-000000010.pt", proc)  # early in the budget, also on a busy machine
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    first = learning_rates(run_dir)
    run_cli("framework.train", tiny_args(data_dir, run_dir, *args, "trainer.resume=auto"), cwd=tmp_path)
    log = (run_dir / "train.log").read_text()
    stopped = stop_time(log)
    assert 10.0 <= stopped < 13.0  # the total over both processes, not 10 s more
    spent, left = map(float, re.findall(r"trainer.max_time=10s: ([\d.]+) s spent before this process, ([\d.]+) s "
                                        r"left", log)[0])
    assert 0 < spent < 10.0 and spent + left == pytest.approx(10.0, abs=0.11)
    rates = learning_rates(run_dir)
    resumed = [r for s, r in rates if s > first[-1][0]]
    # continues near where it was (the clock also counts the new process's first step), not from the warm-up's start
    assert resumed and abs(resumed[0] - first[-1][1]) < abs(resumed[0] - rates[0][1])
    assert rates[-1][1] < 0.01 * max(r for _, r in rates)


def test_auto_threads_measures_each_candidate_and_keeps_the_fastest(tmp_path, data_dir):
    # which count wins depends on the machine and its load (BENCHMARKS.md measures that); what is
    # tested here is that every candidate is timed on real steps, logged, and the fastest kept
    run_dir = tmp_path / "run"
    args = [a for a in tiny_args(data_dir, run_dir, "trainer.max_epochs=1") if a != "trainer.num_threads=1"]
    run_cli("framework.train", [*args, "model.hidden_size=256", "model.fc_size=256", "trainer.num_threads=auto"],
            cwd=tmp_path, env={"OMP_NUM_THREADS": ""})
    log = (run_dir / "train.log").read_text()
    measured = re.search(r"threads: ((?:\d+ -> [\d.e-]+ s/step(?:, )?)+); using (\d+)", log)
    assert measured, log
    times = {int(n): float(t) for n, t in re.findall(r"(\d+) -> ([\d.e-]+) s/step", measured.group(1))}
    assert 1 in times and int(measured.group(2)) == min(times, key=times.get)


@pytest.mark.slow  # the outcome depends on what else runs: meaningful alone (make test-slow runs serially)
def test_auto_threads_picks_one_thread_beside_a_busy_process(tmp_path, data_dir):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run_dir = tmp_path / "run"
        args = [a for a in tiny_args(data_dir, run_dir, "trainer.max_epochs=1") if a != "trainer.num_threads=1"]
        run_cli("framework.train", [*args, "model.hidden_size=256", "model.fc_size=256", "trainer.num_threads=auto"],
                cwd=tmp_path, env={"OMP_NUM_THREADS": ""})
    finally:
        busy.kill()
        busy.wait()
    measured = re.search(r"threads: ((?:\d+ -> [\d.e-]+ s/step(?:, )?)+); using (\d+)", (run_dir / "train.log").read_text())
    assert measured and measured.group(2) == "1", measured and measured.group(0)


AGREED_CLOCK = """
import torch.distributed as dist

from framework.trainer.distributed import init_distributed
from framework.trainer.stopping import StopAgreement

env = init_distributed("cpu")
stop = StopAgreement(env, "1h", elapsed=lambda: 10.0 * (env.rank + 1))  # the ranks' clocks differ
weights = stop.plan_step([3])
# One file per rank: two processes printing to one pipe can interleave their lines.
open(f"rank{env.rank}.txt", "w").write(f"clock {stop.step_clock}, weights {weights}")
dist.destroy_process_group()
"""


def test_under_torchrun_every_rank_reads_one_clock_for_its_time_keyed_schedule(tmp_path):
    """Each rank's own clock would give each replica another learning rate, and DDP's replicas
    would part: the step's all-reduce agrees on the ranks' mean."""
    (tmp_path / "agreed_clock.py").write_text(AGREED_CLOCK)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "agreed_clock.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "clock 15.0, weights [1.0]"
