"""The whole-loop comparison with SpeechBrain: its refusal without SpeechBrain, the framework
side's figures, and (when SpeechBrain is installed beside) both sides end to end."""

from __future__ import annotations

import importlib.util
import os

import pytest

from benchmarks.vs_speechbrain import run_side, target_rows, time_to
from tests.conftest import ROOT, TINY, run_cli, run_result

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
HAS_SPEECHBRAIN = importlib.util.find_spec("speechbrain") is not None


@pytest.mark.skipif(HAS_SPEECHBRAIN, reason="SpeechBrain is importable here")
def test_without_speechbrain_it_says_what_to_install_in_one_line(tmp_path):
    proc = run_cli("benchmarks", ["vs-speechbrain"], cwd=tmp_path, check=False,
                   env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs SpeechBrain" in lines[0] and "pip install --target" in lines[0]
    assert not proc.stdout


@pytest.mark.slow  # two short training runs, ~5 s
def test_the_framework_side_reports_per_epoch_time_padding_steps_cer_and_memory(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    overrides = ["dataset=tones", f"dataset.root={data_dir}/tones-tiny", *TINY]
    r = run_side("framework", overrides, tmp_path / "run", threads=1)
    assert r["epochs"] == 2 and len(r["train_s"]) == 2
    assert 0 < r["train_s_per_epoch"] <= r["epoch_s"] < r["process_s"]
    assert 0 < r["cpu_s"] and 200 < r["peak_rss_mb"] < 20000
    assert 0 <= r["padding_fraction"] < 0.5 and r["steps"] >= 2
    history = run_result(tmp_path / "run")["history"]
    assert r["steps"] == sum(h["steps"] for h in history) and r["train_s"] == [h["epoch_s"] for h in history]
    assert 0 <= r["test_cer"] <= 1.5 and 0 <= r["valid_cer"] <= 1.5


@pytest.mark.slow  # two training runs on each side, ~1 min
@pytest.mark.skipif(not HAS_SPEECHBRAIN, reason="SpeechBrain is not installed beside the framework")
def test_both_sides_train_the_same_epochs_and_the_table_holds_their_ratio(tmp_path, data_dir):
    env = {**ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("benchmarks", ["vs-speechbrain", "--corpora", "tones", "--seeds", "0", "--threads", "1",
                                 "--targets", "100", "--out", str(tmp_path / "out"), *TINY], cwd=tmp_path, env=env).stdout
    row = next(line for line in out.splitlines() if line.startswith("| tones | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    fw, sb = (float(x) for x in cells[2].split(" / "))
    assert abs(float(cells[3]) - fw / sb) < 0.01 + 0.01 * fw / sb
    assert all(float(x) <= 1.5 for x in cells[12].split(" / "))  # test CER on both sides
    target = next(line for line in out.splitlines() if line.startswith("| tones | 100 |"))
    assert target.count("(1/1)") == 2  # any CER is <= 100: both sides reach it after their first epoch


def test_time_to_a_cer_counts_training_seconds_until_the_first_epoch_that_reaches_it():
    fast = {"train_s": [2.0, 2.0, 2.0], "valid_cers": [0.5, 0.15, 0.05]}
    slow = {"train_s": [5.0, 5.0, 5.0], "valid_cers": [0.3, 0.08, 0.2]}  # reaches 0.1 at epoch 2, then worsens
    assert time_to(fast, 0.2) == 4.0 and time_to(slow, 0.1) == 10.0 and time_to(fast, 0.01) is None
    rows = target_rows("tones", [(fast, slow), (slow, fast)], [0.1, 0.01])
    assert rows[0] == "| tones | 0.1 | 8.0 ± 2.8 (2/2) | 8.0 ± 2.8 (2/2) | 1.00 |"
    assert rows[1] == "| tones | 0.01 | - (0/2) | - (0/2) | - |"
