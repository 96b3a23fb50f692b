"""The DeepMark corpus and the benchmark commands."""

from __future__ import annotations

import re

import numpy as np
import torch

from framework.bench.ds2 import BatchMaker, equal_length_batches
from framework.data.deepmark import COUNTS, LABEL_LENGTHS, DeepMarkDataset
from tests.conftest import run_cli


def test_deepmark_class_counts_label_lengths_and_determinism():
    full = DeepMarkDataset(scale=1.0, block_frames=4096)
    assert full.class_counts() == [c * 1280 for c in COUNTS] and len(full) == 128_000
    assert abs(full.lengths.sum() / 3600 - 211.2) < 0.1
    small = DeepMarkDataset(scale=0.01, seed=3)
    for i in (0, len(small) // 2, len(small) - 1):
        ex = small[i]
        c = int(small.classes[i])
        assert ex["inputs"].shape == (100 * (c + 1), 161)
        assert len(ex["tokens"]) == LABEL_LENGTHS[c] == len(ex["text"])
        assert int(ex["tokens"].min()) >= 1 and int(ex["tokens"].max()) <= 28  # never the blank
    again = DeepMarkDataset(scale=0.01, seed=3)
    assert torch.equal(small[7]["inputs"], again[7]["inputs"]) and small[7]["text"] == again[7]["text"]
    assert not torch.equal(small[7]["inputs"], DeepMarkDataset(scale=0.01, seed=4)[7]["inputs"])
    values = small.block[:100000]
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01


def test_equal_length_batches_and_device_batches_match_the_examples():
    data = DeepMarkDataset(scale=0.01)
    batches = equal_length_batches(data, 32)
    for b in batches:
        assert len(set(data.lengths[b])) == 1 and len(b) <= 32
    assert sorted(i for b in batches for i in b) == list(range(len(data)))
    per_class = [int(np.ceil(c * 12.8 / 32)) for c in COUNTS]
    assert len(batches) == sum(per_class)
    batch = BatchMaker(data, torch.device("cpu"))(batches[3])
    for row, i in enumerate(batches[3]):
        assert torch.equal(batch.inputs[row], data[i]["inputs"])
        assert torch.equal(batch.tokens[row], data[i]["tokens"])


def test_bench_ds2_prints_every_field_and_compares_with_the_plain_loop(tmp_path):
    proc = run_cli("framework.bench", ["ds2", "dataset.scale=0.0003", "model.hidden_size=16", "model.num_layers=1",
                                       "model.fc_size=16", "--sweep-batch", "2,4", "--repeats", "1"], cwd=tmp_path)
    out = proc.stdout
    for field in ("fwd ms", "bwd ms", "fwd+bwd ms", "minibatches", "samples/s", "audio s/s", "epoch s", "padding %",
                  "peak mem GB", "framework overhead per step"):
        assert field in out, field
    rows = [line for line in out.splitlines() if re.match(r"\| [24] \|", line)]
    assert len(rows) == 2
    assert all(re.search(r"[+-][\d.]+ ms \([+-][\d.]+%\) \|$", r) for r in rows)
    assert re.search(r"fastest: batch size [24] \(", out)


def test_bench_ds2_with_dynamic_batching_reports_padding(tmp_path):
    proc = run_cli("framework.bench", ["ds2", "dataset.scale=0.0003", "model.hidden_size=16", "model.num_layers=1",
                                       "model.fc_size=16", "--batching", "config", "batching=dynamic",
                                       "batching.max_batch_length=40", "--no-compare", "--repeats", "1"], cwd=tmp_path)
    assert "batching DynamicBatchSampler" in proc.stdout


def test_bench_batching_prints_the_side_by_side_table(tmp_path):
    out = run_cli("framework.bench", ["batching", "--no-million"], cwd=tmp_path).stdout
    assert "### DeepMark: 128,000 utterances" in out and "### LibriSpeech-like: 28,539 utterances" in out
    row = next(line for line in out.splitlines() if line.startswith("| framework DynamicBatchSampler"))
    padding = float(row.split("|")[2])
    assert padding < 2.67  # lhotse's figure on this distribution
