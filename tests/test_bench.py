"""The DeepMark corpus and the benchmark commands."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.common import Child, ChildFailed
from benchmarks.ds2 import (
    Batches,
    BatchMaker,
    DeepMarkBrain,
    PlainLoop,
    ds2_config,
    equal_length_batches,
    heaviest,
    sample_per_class,
)
from framework.data.deepmark import COUNTS, LABEL_LENGTHS, DeepMarkDataset
from tests.conftest import ROOT, TINY, run_cli


def test_the_benchmarks_stay_out_of_the_installed_package():
    tomllib = pytest.importorskip("tomllib")
    setuptools = pytest.importorskip("setuptools")
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(str(ROOT), include=find["include"])
    assert {"framework", "framework.data", "recipes"} <= set(packages)
    assert not [p for p in packages if p.split(".")[0] == "benchmarks"] and (ROOT / "benchmarks" / "ds2.py").is_file()


def test_a_child_reports_what_it_took_its_failure_with_its_log_and_is_killed_past_its_time(tmp_path):
    usage = Child([sys.executable, "-c", "sum(range(10**7))"], tmp_path / "ok.txt").wait()
    assert 0 < usage.cpu_s <= usage.wall_s * 1.5 and usage.peak_rss_mb > 1
    failing = Child([sys.executable, "-c", "import sys; print('the last words'); sys.exit(3)"], tmp_path / "bad.txt")
    with pytest.raises(ChildFailed, match="(?s)exit 3.*the last words"):
        failing.wait()
    hanging = Child([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "slow.txt")
    with pytest.raises(subprocess.TimeoutExpired):
        hanging.wait(timeout=1)
    assert hanging.proc.returncode is not None  # ended, not left running


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


def table_rows(out: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with ``header_start``, as dicts."""
    lines = out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    names = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def close(a: float, b: float, rel: float = 0.02, abs_: float = 0.11) -> bool:
    return abs(a - b) <= max(rel * abs(b), abs_)


# One intra-op thread: on a busy 2-core machine, two threads contending with other processes run ~10x slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}




# time strided 6x: fast, and still long enough for CTC on every length class
TINY_DS2 = ["dataset.scale=0.0003", "model.hidden_size=16", "model.num_layers=1", "model.fc_size=16",
            "model.conv_channels=[4,4]", "model.conv_strides=[[2,2],[1,3]]", "model.rnn_type=gru"]


@pytest.mark.slow  # a benchmark run end to end, ~15 s
def test_bench_ds2_fields_are_consistent_and_the_overhead_is_paired(tmp_path):
    out = run_cli("benchmarks", ["ds2", *TINY_DS2, "--sweep-batch", "2,4", "--max-batches", "8", "--repeats", "2"],
                  cwd=tmp_path, env=ONE_THREAD).stdout
    utterances = int(re.search(r"DeepMark scale [\d.]+: (\d+) utterances", out).group(1))
    assert "On in both loops: clipping at 5.0, OneCycle schedule stepped per step, TensorBoard every 10 steps; optimizer AdamW, lr 1e-05." in out
    rows = table_rows(out, "| batch | minibatches | fwd ms")
    assert [r["batch"] for r in rows] == ["2", "4"]
    for r in rows:
        minibatches, timed = re.fullmatch(r"(\d+) \((\d+) timed\)", r["minibatches"]).groups()
        assert 8 <= int(timed) <= 15 < int(minibatches)  # at least one per length class
        fwd, bwd, both, step = (float(r[k]) for k in ("fwd ms", "bwd ms", "fwd+bwd ms", "step ms"))
        assert close(both, fwd + bwd, abs_=0.15) and both <= step
        assert close(float(r["epoch s"]), step * int(minibatches) / 1e3)
        assert close(float(r["samples/s"]) * float(r["epoch s"]), utterances, rel=0.03)
        assert float(r["padding %"]) == 0.0  # equal-length minibatches
    assert re.search(r"fastest: batch size [24] \(", out)
    overhead = table_rows(out, "| batch | passes |")
    assert [r["passes"] for r in overhead] == ["2", "2"]
    for r in overhead:
        lo, med, hi = (float(x) for x in r["framework - plain, ms/step: min / median / max"].split(" / "))
        assert lo <= med <= hi
        assert close(float(r["framework ms/step"]) - float(r["plain ms/step"]), med, rel=1.0, abs_=hi - lo + 0.02)


def test_per_class_sample_extrapolates_the_epoch_by_audio_seconds():
    data = DeepMarkDataset(scale=0.01)
    batches = equal_length_batches(data, 32)
    picked, weights = sample_per_class(batches, data.lengths, 20)
    assert {int(data.lengths[b].max()) for b in picked} == set(range(1, 16))  # every length class
    audio = sum(w * data.lengths[b].sum() for b, w in zip(picked, weights))
    assert abs(audio - data.lengths.sum()) < 1e-6 * data.lengths.sum()
    assert sample_per_class(batches, data.lengths, None) == (batches, [1.0] * len(batches))
    costs = [len(b) * data.lengths[b].max() for b in batches]
    assert [len(b) * data.lengths[b].max() for b in heaviest(batches, data.lengths)] == sorted(costs)[-2:][::-1]


def test_the_plain_loop_and_the_brain_take_bitwise_identical_steps(tmp_path, one_thread):
    cfg = ds2_config([*TINY_DS2, "trainer.device=cpu", "logger.log_every_n_steps=2", "trainer.num_threads=1"])
    data = DeepMarkDataset(scale=0.0003)
    batches = Batches(BatchMaker(data, torch.device("cpu")), equal_length_batches(data, 4)[:6])
    assert cfg.trainer.max_grad_norm and cfg.scheduler  # the recipe's defaults are on
    brains = {}
    for name in ("plain", "framework", "untrained"):  # each built from the config: the same initial weights
        brains[name] = DeepMarkBrain(cfg, str(tmp_path / name))
        brains[name].setup(None)
        brains[name].plan_schedule(6)
    plain = PlainLoop(cfg, brains["plain"].model, brains["plain"].optimizer, brains["plain"].optimization.scheduler,
                      brains["plain"].precision, str(tmp_path / "plain-loop"))
    plain.run(batches, torch.device("cpu"))
    plain.close()
    brains["framework"].train_pass(batches)
    for brain in brains.values():
        brain.logger.close()
    assert brains["framework"].step == plain.step == 6 and brains["plain"].step == 0  # the plain loop steps alone
    assert brains["plain"].optimization.scheduler.last_epoch == brains["framework"].optimization.scheduler.last_epoch == 6
    a, b = (brains[name].module.state_dict() for name in ("plain", "framework"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = brains["untrained"].module.state_dict()
    assert not torch.equal(a["output.weight"], initial["output.weight"])  # the steps did move the weights


@pytest.mark.slow  # a benchmark run end to end, ~5 s
def test_bench_ds2_with_dynamic_batching_reports_padding(tmp_path):
    out = run_cli("benchmarks", ["ds2", *TINY_DS2, "--batching", "config", "batching=dynamic",
                                      "batching.max_batch_length=40", "--no-compare", "--repeats", "1"],
                  cwd=tmp_path, env=ONE_THREAD).stdout
    assert "batching DynamicBatchSampler" in out
    (row,) = table_rows(out, "| batch | minibatches | fwd ms")
    assert row["batch"].startswith("dynamic, ") and row["padding %"] == "0.00"  # edges fitted on the 15 classes


def test_bench_batching_prints_the_side_by_side_table(tmp_path):
    out = run_cli("benchmarks", ["batching", "--no-million"], cwd=tmp_path).stdout
    assert "### DeepMark: 128,000 utterances" in out and "### LibriSpeech-like: 28,539 utterances" in out
    row = next(line for line in out.splitlines() if line.startswith("| framework DynamicBatchSampler"))
    padding = float(row.split("|")[2])
    assert padding < 2.67  # lhotse's figure on this distribution


@pytest.mark.slow  # a benchmark run end to end, ~8 s
def test_bench_loader_states_each_effect_and_they_multiply(tmp_path):
    out = run_cli("benchmarks", ["loader", "--utterances", "48", "--workers", "0,2", "--min-seconds", "0.1",
                                      "--root", str(tmp_path / "corpus")], cwd=tmp_path, env=ONE_THREAD).stdout
    rows = table_rows(out, "| source | workers |")
    assert len(rows) == 8 and {r["workers"] for r in rows} == {"0", "2"}
    for r in rows:
        assert close(float(r["utterances/s"]) * float(r["epoch s"]), 48, rel=0.02, abs_=0.5)
    effects = {r["effect"].split(":")[0]: r for r in table_rows(out, "| effect |")}
    for w in ("0 workers", "2 workers"):
        ratio = {k: float(v[w].rstrip("x")) for k, v in effects.items()}
        assert close(ratio["both"], ratio["precomputed features"] * ratio["file format, features"], rel=0.1)
    assert re.search(r"per-item read .*: [\d.]+ ms", out)


def test_bench_freeze_memory_frozen_modules_keep_no_optimizer_state_and_lower_the_peak(data_dir, one_thread):
    from benchmarks.freeze_memory import measure

    base = [*TINY, f"dataset.root={data_dir}/tones-tiny"]
    whole, frozen = (measure(base, freeze, batch=2, steps=1) for freeze in ("", "convs,rnns"))
    assert whole["trainable"] == 1.0 and 0 < frozen["trainable"] < 0.5
    assert frozen["optimizer_mb"] == pytest.approx(whole["optimizer_mb"] * frozen["trainable"], rel=0.05)
    assert frozen["peak_mb"] < whole["peak_mb"]


def test_the_inference_benchmark_gives_each_word_to_the_utterance_whose_stretch_holds_it():
    """A short utterance before a long one: the long one's first word, nearer the short one's
    middle than its own, is still its own."""
    from benchmarks.inference import score

    truth = {"utterances": [
        {"id": "a", "start": 0.0, "end": 1.0, "words": "hen", "spans": [["hen", 0.1, 0.5]]},
        {"id": "b", "start": 1.4, "end": 9.4, "words": "their ship sailed",
         "spans": [["their", 1.5, 1.8], ["ship", 5.0, 5.5], ["sailed", 8.5, 9.0]]}]}
    words = [{"word": w, "start": a, "end": b} for w, a, b in
             [("hen", 0.1, 0.5), ("their", 1.5, 1.8), ("ship", 5.0, 5.5), ("sailed", 8.5, 9.0)]]
    scores = score({"words": words}, truth, {"a": "hen", "b": "their ship sailed"})
    assert scores["cer"] == 0 and scores["cer_alone"] == 0 and scores["word_time_error_ms"] == 0


@pytest.mark.slow  # two transcriptions of the speech corpus's 40 test files
def test_the_inference_benchmark_times_each_engine_on_the_test_utterances(one_epoch_run, tmp_path):
    import json
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    run_cli("framework.export", [str(run_dir), "--format", "torchscript"], cwd=tmp_path)
    proc = run_cli("benchmarks.inference", [str(run_dir), "--utterances", "--engines", "eager,torchscript", "--threads",
                                            "1", "--json", str(tmp_path / "rows.json")], cwd=ROOT)
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["engine"] for r in rows] == ["eager", "torchscript"]
    assert [line.split(" | ")[0] for line in proc.stdout.splitlines()] == ["| engine", "|---|---|---|---|---|---|---|",
                                                                         "| eager", "| torchscript"]
    assert rows[0]["cer"] == rows[1]["cer"] > 0 and all(r["seconds"] > 0 and r["peak_rss_mb"] > 50 for r in rows)


def test_bench_recurrences_times_both_paths_over_real_batches_and_finds_one_function(tmp_path, data_dir):
    out = run_cli("benchmarks", ["recurrences", *TINY, f"dataset.root={data_dir}/tones-tiny", "model.num_layers=2",
                                 "--rnn-types", "gru,lstm", "--max-batches", "3"], cwd=tmp_path).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| gru") or line.startswith("| lstm")]
    assert [r[0] for r in rows] == ["| gru, 2 x 32", "| lstm, 2 x 32"], out
    for _, batches, padding, packed, padded, ratio, diff in rows:
        assert batches == "3" and 0 < float(padding.rstrip("%")) < 50  # dynamic batches of unequal lengths
        assert float(packed) > 0 and float(padded) > 0 and abs(float(ratio) - float(padded) / float(packed)) < 0.03
        assert float(diff.rstrip(" |")) < 1e-4  # the two paths compute one function
