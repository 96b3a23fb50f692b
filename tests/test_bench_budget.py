"""``python -m benchmarks budget``: the epochs a user would choose for the budget, and the
table of every arm and decoder from the runs' own records."""

from __future__ import annotations

import json

from benchmarks.budget import hand_epochs, report


def fake_run(run_dir, epoch_ends: list[float], wer: float, cer: float, decodes: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    history = [{"epoch": i + 1, "elapsed_s": t} for i, t in enumerate(epoch_ends)]
    (run_dir / "metrics.json").write_text(json.dumps({"metrics": {"test_wer": wer, "test_cer": cer},
                                                      "history": history}))
    (run_dir / "bench-cpu.json").write_text(json.dumps({"cpu_s": 1.0, "wall_s": 1.0}))
    for name, metrics in (decodes or {}).items():  # what framework.evaluate printed, cached
        (run_dir / f"decode-{name.replace(' ', '_')}.json").write_text(json.dumps(metrics))


def test_hand_chosen_epochs_fit_the_budget_at_the_measured_epoch_time(tmp_path):
    # epochs of 60 s, the last one cut by the budget: 600 s fit 10 whole epochs of 60 s...
    fake_run(tmp_path / "char" / "seed0", [60.0 * k for k in range(1, 10)] + [590.0], 0.3, 0.08)
    assert hand_epochs(tmp_path, "char", 600.0, [0]) == 10
    # ...and a slower seed (epochs of 70 s) brings the mean to 65 s: 9 epochs
    fake_run(tmp_path / "char" / "seed1", [70.0 * k for k in range(1, 9)] + [600.0], 0.3, 0.08)
    assert hand_epochs(tmp_path, "char", 600.0, [0, 1]) == 9


def test_the_table_has_each_arms_greedy_and_other_decoders_over_seeds(tmp_path):
    lexicon = {"beam + lexicon + word 3-gram": {"test_wer": 0.1, "test_cer": 0.03}}
    fake_run(tmp_path / "char" / "seed0", [300.0, 600.0], 0.30, 0.08,
             {"beam + word 3-gram": {"test_wer": 0.2, "test_cer": 0.06}, **lexicon})
    fake_run(tmp_path / "char" / "seed1", [300.0, 602.0], 0.28, 0.07,
             {"beam + word 3-gram": {"test_wer": 0.1, "test_cer": 0.04}, **lexicon})
    fake_run(tmp_path / "char_epochs" / "seed0", [200.0, 400.0, 610.0], 0.35, 0.09)  # seed 1 not run: left out
    lines = report(tmp_path, ["char", "bpe128", "char_epochs"], [0, 1]).splitlines()
    assert lines[2] == "| char | greedy | 2 | 0.290 ± 0.014 | 0.075 ± 0.007 | 2.0 ± 0.0 | 601 ± 1 |"
    assert lines[3] == "| char | beam + word 3-gram | 2 | 0.150 ± 0.071 | 0.050 ± 0.014 | 2.0 ± 0.0 | 601 ± 1 |"
    assert lines[4] == "| char | beam + lexicon + word 3-gram | 2 | 0.100 ± 0.000 | 0.030 ± 0.000 | 2.0 ± 0.0 | 601 ± 1 |"
    assert lines[5] == "| char_epochs | greedy | 1 | 0.350 ± 0.000 | 0.090 ± 0.000 | 3.0 ± 0.0 | 610 ± 0 |"
    assert len(lines) == 6  # no bpe128 runs: no row
