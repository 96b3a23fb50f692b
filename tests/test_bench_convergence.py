"""``python -m benchmarks convergence``: real training runs, cached, summarised."""

from __future__ import annotations

import json

import pytest

from benchmarks.convergence import epochs_to, fastest, load_run, summarise
from tests.conftest import TINY, run_cli


@pytest.mark.slow  # two tiny training runs and an interleaved epoch timing: ~20 s on 2 idle cores
def test_convergence_runs_each_variant_once_and_reports_time_to_target(tmp_path, data_dir):
    out = tmp_path / "study"
    args = ["convergence", "--corpora", "tones", "--variants", "fitted,fixed", "--seeds", "0", "--out", str(out),
            "--jobs", "2", *TINY, f"dataset.root={data_dir}/tones-tiny", "trainer.device=cpu"]
    first = run_cli("benchmarks", args, cwd=tmp_path).stdout
    assert "0 of 2 runs cached; 2 to run, 2 at a time" in first
    rows = {line.split("|")[1].strip(): line.split("|") for line in first.splitlines() if line.startswith("| f")}
    assert set(rows) == {"fitted", "fixed"}
    assert float(rows["fixed"][2]) > float(rows["fitted"][2])  # random batches pad more
    assert (out / "convergence-tones.png").stat().st_size > 1000
    assert (out / "convergence.md").read_text() in first
    costs = json.loads((out / "tones" / "epoch-cpu.json").read_text())
    assert set(costs) == {"fitted", "fixed"} and all(c > 0 for c in costs.values())
    assert float(rows["fitted"][4]) == round(costs["fitted"], 2)

    # the fixed batches follow the budget through the mean batch size of the fitted buckets
    fitted_steps, fixed_steps = float(rows["fitted"][3]), float(rows["fixed"][3])
    assert abs(fixed_steps - fitted_steps) <= 0.3 * fitted_steps
    overrides = (out / "tones" / "fixed" / "seed0" / ".hydra" / "overrides.yaml").read_text()
    assert "batching=fixed" in overrides and "max_batch_length" not in overrides

    again = run_cli("benchmarks", args, cwd=tmp_path).stdout
    assert "2 of 2 runs cached; 0 to run" in again

    # each run's history comes from its metrics.json, in core-seconds
    run = out / "tones" / "fitted" / "seed0"
    loaded = load_run(run)
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in loaded["history"]] == [h["epoch"] for h in history] == [1, 2]
    assert 0 < loaded["share"] <= 1.05
    assert loaded["history"][1]["epoch_s"] == pytest.approx(history[1]["epoch_s"] * loaded["share"])


def _history(cers, epoch_s=2.0):
    return [{"epoch": e + 1, "valid_cer": c, "train_s": epoch_s * (e + 1), "epoch_s": epoch_s, "steps": 10,
             "padding_fraction": 0.05} for e, c in enumerate(cers)]


def test_time_to_target_counts_epochs_at_the_median_epoch_time_and_fastest_needs_every_seed():
    assert epochs_to(_history([0.9, 0.5, 0.3, 0.4]), 0.5) == 2
    assert epochs_to(_history([0.9, 0.6]), 0.5) is None
    quick_but_once = summarise([{"metrics": {"test_cer": 0.1}, "history": _history([0.9, 0.2]), "share": 1},
                                {"metrics": {"test_cer": 0.2}, "history": _history([0.9, 0.8], 4.0), "share": 1}],
                               (0.3,))
    steady = summarise([{"metrics": {"test_cer": 0.1}, "history": _history([0.9, 0.5, 0.25]), "share": 1}] * 2, (0.3,))
    assert quick_but_once["epoch_s"] == 3.0 and quick_but_once[0.3] == ([6.0], [2])
    assert steady[0.3] == ([6.0, 6.0], [3, 3])
    assert fastest({"quick": quick_but_once, "steady": steady}, 0.3) == "steady"
