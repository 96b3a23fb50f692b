"""The commands of docs/batching.md run as written."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_doc


@pytest.mark.slow  # like the other guides (test_docs): its pieces have fast tests (test_prepare_stats, test_batching)
def test_batching_guide(tmp_path, data_dir):
    out = run_doc("batching.md", tmp_path, data_dir)
    mixed, plain = re.findall(r"DynamicBatchSampler: \d+ batches per epoch, padding ([\d.]+)%", out)
    assert float(mixed) > float(plain)  # mix_buckets=2 took effect: bands of two buckets pad more
    assert re.search(r"batching=dynamic epoch 1: \d+ batches, padding", out)
