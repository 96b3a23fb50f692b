"""``python -m benchmarks gpu`` at toy scale on the CPU: the report, its sections, and a
section that runs out of time."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_gpu_check(tmp_path, *args):
    out = tmp_path / "report"
    proc = run_cli("benchmarks", ["gpu", "--toy", "--out", str(out), *args], cwd=tmp_path, env=ONE_THREAD)
    report = json.loads((out / "report.json").read_text())
    return proc, report, (out / "report.md").read_text(), out


def rows(report, section, table):
    t = report["sections"][section]["result"]["tables"][table]
    return [dict(zip(t["header"], r)) for r in t["rows"]]


@pytest.mark.slow  # the GPU report on CPU, ~8 s
def test_the_report_holds_each_sections_rows(tmp_path):
    proc, report, md, out = run_gpu_check(tmp_path, "--sections", "env,oom")
    assert sorted(p.name for p in out.iterdir()) == ["gpu.log", "report.json", "report.md"]  # 2 folders deep at most
    assert list(report["sections"]) == ["env", "oom"]
    assert all(s["status"] == "ok" for s in report["sections"].values())
    env = {r["what"]: r["value"] for r in rows(report, "env", "env")}
    assert env["torch"].startswith("2.") and env["gloo all-reduce (1 rank)"] == "ok"
    (oom,) = rows(report, "oom", "oom")
    assert oom["steps taken"] == "2" and oom["batches skipped"] == "1" and oom["went on"] == "yes"
    assert "## oom: ok" in md and "| provoked | steps taken |" in md
    assert "report:" in proc.stdout


@pytest.mark.slow  # the GPU report on CPU, ~6 s
def test_a_section_out_of_time_is_reported_and_the_rest_kept(tmp_path):
    _, report, md, _ = run_gpu_check(tmp_path, "--sections", "env,ds2", "--budget-s", "16")
    assert report["sections"]["env"]["status"] == "ok"
    ds2 = report["sections"]["ds2"]
    # the section stops itself when its time runs short, or is stopped at its limit, or never starts
    notes = " ".join((ds2["result"] or {}).get("notes", []))
    assert ds2["status"].startswith(("timed out", "skipped")) or "time ran out" in notes, ds2
    assert f"## ds2: {ds2['status']}" in md


@pytest.mark.slow  # every section at toy scale, ~3 min on 2 busy cores
def test_every_section_runs_at_toy_scale_and_its_figures_hold_together(tmp_path):
    _, report, md, _ = run_gpu_check(tmp_path)
    assert {k: v["status"] for k, v in report["sections"].items()} == {
        k: "ok" for k in ("env", "ds2", "memory", "tune_batch", "oom", "precision", "loader", "compile")}
    sweep = rows(report, "ds2", "sweep")
    assert {r["precision"] for r in sweep} >= {"fp32", "bf16"}
    for r in sweep:
        assert float(r["fwd ms"]) + float(r["bwd ms"]) <= float(r["step ms"]) * 1.01
    memory = {r["configuration"]: float(r["peak memory GB"]) for r in rows(report, "memory", "memory")}
    assert memory["gradient accumulation 2 x 2"] < memory["baseline"] and memory["bf16"] < memory["baseline"]
    (finder,) = rows(report, "tune_batch", "finder")
    assert float(finder["peak GB"]) * 2**30 <= 0.9 * 40e6 and int(finder["examples of the longest"]) >= 1
    precision = rows(report, "precision", "precision")
    assert [r["precision"] for r in precision] == ["fp32", "bf16"]
    assert len(rows(report, "loader", "loader")) == 4
    assert [r["compile"] for r in rows(report, "compile", "compile")] == ["off", "eager"]
    assert "CUDA only, not run on the CPU" in md
