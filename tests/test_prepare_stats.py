"""`python -m framework.prepare stats`: summary, batching figures and histogram."""

from __future__ import annotations

import json
import re

from tests.conftest import run_cli


def test_stats_prints_summary_and_batching_and_writes_a_png(tmp_path):
    lengths = [1.0 + (i % 17) * 0.5 for i in range(300)]
    manifest = {f"u{i}": {"wav": f"{{data_root}}/u{i}.wav", "duration": d} for i, d in enumerate(lengths)}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    png = tmp_path / "hist.png"
    proc = run_cli("framework.prepare", ["stats", str(path), "--png", str(png), "--batching", "dynamic",
                                         "max_batch_length=40", "num_buckets=5"], cwd=tmp_path)
    out = proc.stdout
    assert f"300 utterances, {sum(lengths) / 3600:.2f} h" in out
    m = re.search(r"batching=dynamic epoch 0: (\d+) batches, padding ([\d.]+)%, 300 of 300 examples kept", out)
    assert m and int(m.group(1)) > 0 and 0 <= float(m.group(2)) < 20
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fixed = run_cli("framework.prepare", ["stats", str(path), "--batching", "fixed", "batch_size=30"], cwd=tmp_path)
    assert "batching=fixed epoch 0: 10 batches" in fixed.stdout


def test_prepare_writes_into_folders_it_has_to_make(tmp_path):
    """Outputs named in folders that do not exist yet: made, not a FileNotFoundError."""
    texts = ["the cat sat on the mat", "a dog ran in the park", "the dog sat"] * 20
    manifest = {f"u{i}": {"wav": f"{{data_root}}/u{i}.wav", "duration": 1.0 + i % 5, "words": t}
                for i, t in enumerate(texts)}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    run_cli("framework.prepare", ["stats", str(path), "--png", "plots/new/hist.png"], cwd=tmp_path)
    run_cli("framework.prepare", ["lm", str(path), "lm/new/3gram.arpa", "--order", "3"], cwd=tmp_path)
    run_cli("framework.prepare", ["tokenizer", str(path), "pieces/new/bpe.model", "--type", "bpe", "--vocab-size", "20"],
            cwd=tmp_path)
    assert (tmp_path / "plots/new/hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "lm/new/3gram.arpa").read_text().startswith("\\data\\\nngram 1=")
    assert (tmp_path / "pieces/new/bpe.model").stat().st_size > 100
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
