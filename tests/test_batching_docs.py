"""The commands of docs/batching.md run as written."""

from __future__ import annotations

import re

from tests.test_docs import run_doc


def test_batching_guide(tmp_path, data_dir):
    out = run_doc("batching.md", tmp_path, data_dir)
    assert re.search(r"DynamicBatchSampler: \d+ batches per epoch, padding [\d.]+%", out)
    assert re.search(r"batching=dynamic epoch 1: \d+ batches, padding", out)
