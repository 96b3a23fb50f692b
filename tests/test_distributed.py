"""DDP through a real torchrun (gloo on CPU): lockstep training, sharded evaluation."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_cli
from tests.helpers import steps_per_epoch, torchrun


@pytest.mark.slow  # test_faults runs torchrun in the fast suite
def test_torchrun_training_uneven_data_keeps_ranks_in_step_and_evaluation_matches(tmp_path, data_dir):
    root = f"dataset.root={data_dir}/tones-ddp"
    # 47 training utterances: the batches do not split evenly over 2 ranks
    common = [*TINY, root, "dataset.prepare.splits={train:47,valid:13,test:17}", "trainer.device=cpu",
              "trainer.grad_accumulation=2", "batching.max_batch_length=12"]
    run_dir = tmp_path / "ddp"
    torchrun(["-m", "framework.train", *common, f"hydra.run.dir={run_dir}"], cwd=tmp_path)

    rank0 = steps_per_epoch((run_dir / "train.log").read_text())
    rank1 = steps_per_epoch((run_dir / "train-rank1.log").read_text())
    assert rank0 == rank1 and len(rank0) == 2 and rank0[0] > 0
    assert not list(tmp_path.glob("runs")) and not (tmp_path / ".hydra").exists()  # one run dir only
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert index[-1]["epoch"] == 2 and index[-1]["step"] == sum(rank0)

    # the same checkpoint evaluated by one process and by two (sharded) gives the same metrics
    single = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    transcripts = run_dir / "test_transcripts.tsv"
    single_rows = transcripts.read_text()
    transcripts.unlink()
    sharded = torchrun(["-m", "framework.evaluate", str(run_dir)], cwd=tmp_path)
    sharded = json.loads(sharded.stdout.strip().splitlines()[-1])
    assert (run_dir / "evaluate-rank1.log").is_file()  # rank 1 took part
    # both ranks' utterances, in one file written by rank 0: the same as one process wrote
    assert transcripts.read_text() == single_rows and len(single_rows.splitlines()) == 1 + 17
    assert single.keys() == sharded.keys()
    for key in single:
        assert abs(single[key] - sharded[key]) < 1e-5, (key, single[key], sharded[key])
