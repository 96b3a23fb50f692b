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
