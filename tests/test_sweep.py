"""Hydra multirun: one run dir per job and the summary table and plot."""

from __future__ import annotations

import csv
import json
import re

from tests.conftest import TINY, run_cli


def test_grid_multirun_writes_four_runs_and_a_summary(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli("framework.train", ["-m", *TINY, f"dataset.root={data_dir}/tones-tiny", "trainer.max_epochs=1",
                                       "optimizer.lr=1e-3,3e-3", "batching.max_batch_length=10,20",
                                       f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    metrics = [json.loads((sweep / j / "metrics.json").read_text())["metrics"]["valid_cer"] for j in jobs]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert [float(r["valid_cer"]) for r in rows] == sorted(metrics)  # best first
    assert {(r["optimizer.lr"], r["batching.max_batch_length"]) for r in rows} == {
        ("0.001", "10"), ("0.001", "20"), ("0.003", "10"), ("0.003", "20")}
    assert "dataset.root" not in rows[0]  # only what was swept
    table = (sweep / "summary.md").read_text()
    assert len(re.findall(r"^\| \d \|", table, re.M)) == 4 and table.splitlines()[0] in proc.stdout
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_gives_numbers_four_significant_digits(tmp_path):
    from framework.sweep import write_summary

    for job, (lr, cer) in enumerate([("0.0031622776601683794", 0.123456), ("0.01", 0.2)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n- model=ds2_small\n")
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(
            {"metrics": {"valid_cer": cer}, "monitor": "valid_cer", "mode": "min"}))
    table = write_summary(tmp_path)
    assert "| 0 | 0.003162 | 0.1235 | done |" in table and "| 1 | 0.01 | 0.2 | done |" in table


def test_a_search_over_keys_the_config_lacks_is_refused_before_the_study_exists(tmp_path):
    proc = run_cli("framework.train", ["hparams_search=asr_optuna", "model=wrn_small", f"hydra.sweep.dir={tmp_path}/s"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: hydra.sweeper.params.model.hidden_size: the config has no model.hidden_size "
                                   "to search over; remove it from the search space or choose a config that has it")
    assert not (tmp_path / "s").exists()
