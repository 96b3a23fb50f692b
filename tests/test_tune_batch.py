"""The batch-budget finder: its search, its CPU memory estimate against a fake limit, its errors."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from framework import CONF_DIR
from framework.data.collate import collate
from framework.experiment import build_datasets
from framework.run_dir import open_brain
from framework.tune_batch import TooLarge, WorstCaseBatches, find_largest, make_probe, parse_bytes
from tests.conftest import TINY, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("limit", [1_000, 5_321, 123_456])
def test_the_search_finds_the_largest_size_under_the_limit(limit):
    def probe(n):
        if n > 3_000:
            raise TooLarge  # a real out-of-memory beyond some size
        return 100 + 37 * n

    n, peak, probes = find_largest(probe, limit, tolerance=0.0)
    best = min((limit - 100) // 37, 3_000)
    assert n == best and peak == 100 + 37 * best
    assert len(probes) < 30  # doubling then bisection, not a linear walk
    n_tol, _, _ = find_largest(probe, limit, tolerance=0.05)
    assert 0.95 * best <= n_tol <= best


def test_nothing_fits_gives_zero():
    assert find_largest(lambda n: 10 * n, 5)[0] == 0


def test_sizes_parse():
    assert parse_bytes("20GB") == 20_000_000_000 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1.5e9") == 1.5e9
    with pytest.raises(ValueError, match="give a size"):
        parse_bytes("lots")


def tiny_overrides(data_dir):
    return [*TINY, f"dataset.root={data_dir}/tones-tiny"]


@pytest.mark.slow  # a dozen trial steps, ~7 s
def test_the_finder_finds_a_fake_limits_budget_within_ten_percent(tmp_path, data_dir):
    # The CPU estimate of a worst-case step for 1 and 2 examples gives the cost of one more
    # example; a limit set for 20 examples must come back as 20 (within 10%).
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[*tiny_overrides(data_dir), "logger.tensorboard=false"])
    torch.manual_seed(0)
    train = build_datasets(cfg)["train"]
    brain = open_brain(cfg, "probe", tmp_path / "probe")
    brain.setup(train)
    batches = WorstCaseBatches(train, collate)
    probe = make_probe(brain, batches, steps=2, fake_limit=None)
    one, two = probe(1), probe(2)
    assert two > one > 0
    target = 20
    limit = int((one + (target - 1) * (two - one)) / 0.9)

    out = tmp_path / "budget.json"
    # trainer.limit_batches (as debug=default sets it) must not end the probes after the first
    proc = run_cli("framework.tune_batch", [*tiny_overrides(data_dir), "trainer.limit_batches=1",
                                            f"--memory-limit={limit}", "--out", str(out)], cwd=tmp_path, env=ONE_THREAD)
    scan = json.loads(out.read_text())
    assert abs(scan["examples"] - target) <= 0.1 * target
    assert scan["peak_bytes"] <= 0.9 * limit and scan["limit_bytes"] == limit
    assert scan["max_batch_length"] == pytest.approx(scan["examples"] * scan["longest_s"])
    assert f"batching.max_batch_length={scan['max_batch_length']:.4g}" in proc.stdout
    fitted = [p for p in scan["probes"] if "peak_bytes" in p and p["peak_bytes"] <= 0.9 * limit]
    assert max(p["examples"] for p in fitted) == scan["examples"]
    assert any(p["examples"] <= 1.1 * scan["examples"] + 1 for p in scan["probes"] if p not in fitted)
    peaks = sorted((p["examples"], p["peak_bytes"]) for p in scan["probes"] if "peak_bytes" in p)
    assert all(a[1] < b[1] for a, b in zip(peaks, peaks[1:]))  # more examples, more memory


def test_on_a_cpu_without_a_limit_it_says_so(tmp_path, data_dir):
    proc = run_cli("framework.tune_batch", tiny_overrides(data_dir), cwd=tmp_path, env=ONE_THREAD, check=False)
    assert proc.returncode == 2 and "give --memory-limit" in proc.stderr.strip().splitlines()[-1]


def test_a_config_typo_is_named_in_one_line_before_any_probe(tmp_path, data_dir):
    proc = run_cli("framework.tune_batch", [*tiny_overrides(data_dir), "--memory-limit", "1GB", "trainer.max_epoch=3"],
                   cwd=tmp_path, env=ONE_THREAD, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "trainer.max_epoch" in last and "max_epochs" in last, last  # did-you-mean from the config check
    assert not (tmp_path / "batch_budget.json").exists()
