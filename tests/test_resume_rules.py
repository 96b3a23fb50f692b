"""What a resumed run may change, results that cover every example, and settings that would
lose the trained model: through the real commands (docs/launch.md has the table)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from framework.data.loader import make_sampler
from framework.data.manifest import ManifestDataset
from framework.trainer.schedule import OneCycle
from tests.conftest import TINY, run_cli
from tests.helpers import ENV, as_from_a_shell, metrics_of, one_line, tiny_args, wait_for

BASE = ["trainer.max_epochs=1", "trainer.limit_batches=4"]


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """One short finished run; each test resumes its own copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_cli("framework.train", tiny_args(data_dir, run_dir, *BASE), cwd=run_dir.parent)
    return run_dir


def resume_copy(finished_run, tmp_path, data_dir, *overrides, check=True):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    proc = run_cli("framework.train", tiny_args(data_dir, run_dir, *BASE, "trainer.resume=auto", *overrides),
                   cwd=tmp_path, check=check)
    return proc, run_dir


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=1e-05", "optimizer.lr=1e-05 (was 0.003)"),
    ("scheduler.pct_start=0.3", "scheduler.pct_start=0.3 (was 0.15)"),
    ("seed=1", "seed=1 (was 0)"),
    ("features.extractor.n_mels=20", "features.extractor.n_mels=20 (was 40)"),
    ("features.normalize=none", "features.normalize='none' (was 'utterance')"),
    ("trainer.ema_decay=0.99", "trainer.ema_decay=0.99 (was None)"),
])
def test_a_setting_resume_cannot_honour_is_refused(override, key):
    """The settings a checkpoint records, against a resuming run's (the next test resumes a run)."""
    from framework.config import check_command_line
    from framework.errors import UserError
    from framework.trainer.resume import RunSettings

    saved = RunSettings(check_command_line(TINY)).state_dict()
    with pytest.raises(UserError) as info:
        RunSettings(check_command_line([*TINY, override])).load_state_dict(saved)
    assert str(info.value).startswith("trainer.resume: the run was trained with other settings: ")
    assert key in str(info.value) and "trainer.init_from" in str(info.value)


def test_a_refused_resume_is_one_line_and_config_yaml_keeps_the_truth(finished_run, tmp_path, data_dir):
    before = (finished_run / "config.yaml").read_text()
    proc, run_dir = resume_copy(finished_run, tmp_path, data_dir, "optimizer.lr=1e-05", check=False)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == ("error: trainer.resume: the run was trained with other settings: "
                                     "optimizer.lr=1e-05 (was 0.003); scheduler.max_lr=1e-05 (was 0.003). A resumed "
                                     "run continues the same optimisation; resume with the run's settings, or start "
                                     "a new run from its weights with trainer.init_from=<its run dir or checkpoint>")
    assert (run_dir / "config.yaml").read_text() == before  # never claims what was not used


@pytest.mark.parametrize("override, recorded", [
    ("trainer.max_epochs=2", "max_epochs: 2"),
    ("trainer.grad_accumulation=2", "grad_accumulation: 2"),
    ("trainer.precision=bf16", "precision: bf16"),
    pytest.param("trainer.max_grad_norm=1.0", "max_grad_norm: 1.0", marks=pytest.mark.slow),
    pytest.param("batching.max_batch_length=12", "max_batch_length: 12", marks=pytest.mark.slow),
    pytest.param("augment=specaugment", "SpecAugment", marks=pytest.mark.slow),
])
def test_a_setting_resume_honours_is_used_and_recorded(finished_run, tmp_path, data_dir, override, recorded):
    proc, run_dir = resume_copy(finished_run, tmp_path, data_dir, "trainer.max_epochs=2", override)
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert recorded in (run_dir / "config.yaml").read_text()
    assert [h["epoch"] for h in metrics_of(run_dir)["history"]] == [1, 2]  # the second epoch trained


def test_a_run_extended_after_its_schedule_ended_never_climbs_back(finished_run, tmp_path, data_dir):
    """One epoch, then resumed to three: the re-planned schedule keeps the final learning rate
    (read back from TensorBoard's train/lr)."""
    _, run_dir = resume_copy(finished_run, tmp_path, data_dir, "trainer.max_epochs=3")
    lr = dict(scalars(run_dir, "train/lr"))
    first_end = 4  # one epoch of trainer.limit_batches=4 steps
    peak = max(lr.values())
    after = [lr[s] for s in sorted(lr) if s > first_end]
    assert len(after) == 8 and max(after) <= lr[first_end] * (1 + 1e-6) < peak


def test_the_schedule_continues_where_it_was_when_the_run_grows_mid_plan():
    """Resumed at step 5 of 10 with 20 steps in all: the learning rate continues from the
    step reached, decreases to the plan's end on the last step, never jumps."""
    def fresh(total):
        opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=3e-3)
        return opt, OneCycle(opt, max_lr=3e-3, total_steps=total, pct_start=0.15)

    opt, sched = fresh(10)
    straight = []
    for _ in range(10):
        straight.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    opt, sched = fresh(10)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2, sched2 = fresh(20)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    resumed = []
    for _ in range(15):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed[0] == straight[5]  # continues exactly where it was
    assert all(b <= a for a, b in zip(resumed, resumed[1:]))  # annealing only
    assert resumed[-1] == pytest.approx(straight[-1], rel=1e-6)  # the plan's end on the new last step
    with pytest.raises(Exception, match="takes only 3 steps"):
        _, short = fresh(3)
        short.load_state_dict(sched.state_dict())


def test_a_time_budget_changed_on_resume_maps_the_rest_of_the_schedule_onto_the_time_left():
    """A schedule over 100 s: resumed at 40 s with a 200 s budget, the learning rate continues
    where it was and ends with the new budget; resumed after its end with more time, it keeps
    the final learning rate (never climbs back into a second warm-up)."""
    def fresh(budget_s, now):
        opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=3e-3)
        sched = OneCycle(opt, max_lr=3e-3, total_steps=1000, pct_start=0.15, over="time")
        sched.clock = lambda: now[0]
        sched.plan_budget(budget_s)
        return opt, sched

    def at(opt, sched, now, t):
        now[0] = t
        opt.step()
        sched.step()
        return opt.param_groups[0]["lr"]

    now = [0.0]
    opt, sched = fresh(100.0, now)
    straight = {t: at(opt, sched, now, t) for t in (10.0, 40.0, 62.5, 100.0)}
    opt, sched = fresh(100.0, now)
    at(opt, sched, now, 40.0)
    later = [0.0]
    opt2, sched2 = fresh(200.0, later)
    sched2.load_state_dict(sched.state_dict())
    assert at(opt2, sched2, later, 40.0) == straight[40.0]  # continues exactly where it was
    # at 100 s, 60 of the 160 s left are spent: 40% + 60% x 60 / 160 = 62.5% of the plan
    assert at(opt2, sched2, later, 100.0) == pytest.approx(straight[62.5], rel=1e-6)
    assert at(opt2, sched2, later, 200.0) == pytest.approx(straight[100.0], rel=1e-6)  # the end with the new budget

    opt, sched = fresh(100.0, now)
    for t in (40.0, 100.0):
        at(opt, sched, now, t)
    opt2, sched2 = fresh(140.0, later)
    sched2.load_state_dict(sched.state_dict())
    assert [at(opt2, sched2, later, t) for t in (110.0, 140.0)] == [straight[100.0]] * 2


def test_a_mid_epoch_resume_with_batches_planned_differently_is_refused(tmp_path, data_dir):
    """Other batching settings that happen to give the same number of batches (another order):
    refused in one line, not trained with some examples twice and others never."""
    args = ["trainer.max_epochs=1", "trainer.checkpoint.every_n_steps=3", "trainer.checkpoint.every_epoch=false",
            "batching.max_batch_length=8"]
    run_dir = tmp_path / "run"
    run_cli("framework.train", tiny_args(data_dir, run_dir, *args), cwd=tmp_path)  # ends mid-epoch's last checkpoint
    train = ManifestDataset(data_dir / "tones-tiny" / "train.json", data_root=str(data_dir / "tones-tiny"))
    from omegaconf import OmegaConf

    batching = OmegaConf.load(run_dir / "config.yaml").batching
    other = OmegaConf.merge(batching, {"batch_ordering": "ascending"})
    planned, replanned = make_sampler(batching, train.lengths, 0), make_sampler(other, train.lengths, 0)
    assert len(planned) == len(replanned) and planned.plan_fingerprint() != replanned.plan_fingerprint()
    proc = run_cli("framework.train", tiny_args(data_dir, run_dir, *args, "trainer.resume=auto",
                                                "batching.batch_ordering=ascending"), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "would plan differently" in one_line(proc.stderr)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.checkpoint.keep_last=0", "trainer.checkpoint.keep_best=0"], "keeps no checkpoint"),
    (["trainer.checkpoint.every_epoch=false", "trainer.checkpoint.every_n_steps=0"], "writes no checkpoint"),
])
def test_settings_that_would_keep_no_checkpoint_are_refused_before_training(tmp_path, data_dir, overrides, message):
    run_dir = tmp_path / "run"
    proc = run_cli("framework.train", tiny_args(data_dir, run_dir, *overrides), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in one_line(proc.stderr)
    assert not run_dir.exists()


def test_a_run_that_drops_every_example_fails_instead_of_scoring_untrained_weights(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    proc = run_cli("framework.train", tiny_args(data_dir, run_dir, "batching.max_batch_length=0.3",
                                                "trainer.max_epochs=1"), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "every example: 48 of 48 example(s) cost more than max_batch_length=0.3" in line
    assert "raise batching.max_batch_length" in line
    assert not (run_dir / "metrics.json").exists()


def test_evaluation_scores_every_example_and_says_how_many(tmp_path, data_dir):
    """A budget some examples exceed: training leaves them out (named by id), validation and
    test score all of them, in batches of one."""
    run_dir = tmp_path / "run"
    proc = run_cli("framework.train", tiny_args(data_dir, run_dir, "batching.max_batch_length=2.0",
                                                "trainer.max_epochs=1"), cwd=tmp_path)
    lengths = ManifestDataset(data_dir / "tones-tiny" / "train.json", data_root=str(data_dir / "tones-tiny")).lengths
    too_long = int(np.sum(lengths > 2.0))
    assert too_long > 0
    assert f"{too_long} of 48 example(s) cost more than max_batch_length=2.0 on their own (first: train-" in proc.stderr
    metrics = metrics_of(run_dir)["metrics"]
    assert metrics["valid_examples"] == 16 and metrics["test_examples"] == 16
    out = run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout
    assert '"test_examples": 16' in out


def test_a_signal_in_a_sweep_names_how_to_resume_that_job(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    args = tiny_args(data_dir, tmp_path / "unused", "trainer.max_epochs=30", "trainer.checkpoint.every_n_steps=1",
                     f"hydra.sweep.dir={sweep}")
    proc = subprocess.Popen([sys.executable, "-m", "framework.train", "-m", *args, "optimizer.lr=1e-3"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_shell)
    wait_for(sweep / "0" / "checkpoints" / "ckpt-000000002.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert f"rerun this job alone with trainer.resume=auto hydra.run.dir={sweep / '0'}" in stderr
