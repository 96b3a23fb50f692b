"""Fine-tuning: a run initialised from another run's weights, frozen modules, per-module
learning rates; through the real commands where they are about a run."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from framework.errors import UserError
from framework.models.deepspeech2 import DeepSpeech2
from framework.trainer.checkpoint import Checkpointer, save_verified
from framework.trainer.init import initialise, source_checkpoint
from framework.trainer.optim import param_groups
from tests.conftest import run_cli
from tests.helpers import assert_trained_alike, metrics_of, newest_state, one_line, start_training, tiny_args, wait_for

TINY_DS2 = dict(num_bins=40, hidden_size=32, num_layers=2, fc_size=32, conv_channels=[4, 4])


def ds2(num_classes: int = 11, seed: int = 0) -> DeepSpeech2:
    torch.manual_seed(seed)
    return DeepSpeech2(num_classes=num_classes, **TINY_DS2)


@pytest.fixture()
def source(tmp_path):
    """A checkpoint of a trained-looking model (weights unlike any fresh initialisation's)."""
    model = ds2(seed=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    path = tmp_path / "source.pt"
    save_verified({"format_version": 2, "model": model.state_dict()}, path)
    return path, model.state_dict()


def test_included_names_are_the_source_weights_and_the_rest_a_fresh_initialisation(source):
    path, weights = source
    fresh, target = ds2(), ds2()
    report = initialise(target, path, include=["convs.*", "rnns.*"], exclude=["rnns.1.*"], rename={},
                        ignore_mismatched=False)
    state, initial = target.state_dict(), fresh.state_dict()
    for name in state:
        taken = (name.startswith("convs.") or name.startswith("rnns.")) and not name.startswith("rnns.1.")
        assert torch.equal(state[name], weights[name] if taken else initial[name]), name
    assert set(report.loaded) == {n for n in state if (n.startswith(("convs.", "rnns.")) and
                                                        not n.startswith("rnns.1."))}
    assert "output.weight" in report.initialised and "rnns.1.rnn.weight_ih_l0" in report.excluded


def test_a_new_output_layer_is_refused_or_left_at_initialisation(source):
    path, weights = source
    with pytest.raises(UserError, match=r"output.weight \(11, \d+\) -> \(29, \d+\).*ignore_mismatched=true"):
        initialise(ds2(num_classes=29), path, [], [], {}, ignore_mismatched=False)
    fresh, target = ds2(num_classes=29), ds2(num_classes=29)
    report = initialise(target, path, [], [], {}, ignore_mismatched=True)
    assert torch.equal(target.state_dict()["output.weight"], fresh.state_dict()["output.weight"])
    assert torch.equal(target.state_dict()["fc.weight"], weights["fc.weight"])
    assert {m.split()[0] for m in report.mismatched} == {"output.weight", "output.bias"}


def test_a_rename_map_lands_where_it_says(tmp_path, source):
    _, weights = source
    prefixed = tmp_path / "prefixed.pt"  # a checkpoint whose names carry another prefix
    save_verified({"model": {f"encoder.{k}": v for k, v in weights.items()}}, prefixed)
    target = ds2()
    report = initialise(target, prefixed, [], [], {"encoder.": ""}, ignore_mismatched=False)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in weights.items())
    assert report.renamed["encoder.fc.weight"] == "fc.weight"


@pytest.mark.parametrize("kwargs, message", [
    (dict(include=["encoder.*"]), r"trainer.init.include: 'encoder.\*' matches no parameter"),
    (dict(exclude=["classifier*"]), r"trainer.init.exclude: 'classifier\*' matches no parameter"),
    (dict(rename={"model.": ""}), "trainer.init.rename: no parameter of .* starts with 'model.'"),
])
def test_a_pattern_that_matches_nothing_is_one_line(source, kwargs, message):
    args = dict(include=[], exclude=[], rename={}, ignore_mismatched=False) | kwargs
    with pytest.raises(UserError, match=message):
        initialise(ds2(), source[0], **args)


def test_parameter_groups_scale_the_learning_rate_by_pattern_and_layer():
    model = ds2()
    named = list(model.named_parameters())
    groups = param_groups(named, [{"match": "rnns.*", "lr_scale": 0.5, "layer_decay": 0.1},
                                  {"match": "convs.*", "lr_scale": 0.2}], lr=1.0)
    scales = {g["name"]: g["lr"] for g in groups}
    assert scales == {"rnns.0": pytest.approx(0.05), "rnns.1": 0.5, "convs.*": 0.2, "other": 1.0}
    assert sum(len(g["params"]) for g in groups) == len(named)  # each parameter in exactly one group
    with pytest.raises(UserError, match="optimizer.groups: 'decoder.*' matches no trainable parameter"):
        param_groups(named, [{"match": "decoder.*"}], lr=1.0)


# --------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("pretrained") / "run"
    run_cli("framework.train", tiny_args(data_dir, run_dir, "trainer.max_epochs=1"), cwd=run_dir.parent)
    return run_dir


def test_a_fine_tuning_run_starts_fresh_from_the_weights_and_reports_them(pretrained, tmp_path, data_dir):
    run_dir = tmp_path / "tuned"
    run_cli("framework.train", tiny_args(data_dir, run_dir, f"trainer.init_from={pretrained}", "trainer.max_epochs=2",
                                         "trainer.init.take_files=[tokenizer.json]"), cwd=tmp_path)
    history = metrics_of(run_dir)["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # its own epochs, not a continuation
    assert history[0]["step"] == metrics_of(pretrained)["history"][0]["step"]  # a fresh schedule and step count
    report = json.loads((run_dir / "init_report.json").read_text())
    assert report["source"].startswith(str(pretrained / "checkpoints")) and report["files_taken"] == ["tokenizer.json"]
    assert len(report["loaded"]) == len(newest_state(pretrained)["model"]) and not report["initialised"]
    assert "weights from" in (run_dir / "train.log").read_text()


def test_frozen_modules_do_not_move_and_have_no_optimizer_state_until_unfrozen(pretrained, tmp_path, data_dir):
    source = newest_state(pretrained)["model"]
    run_dir = tmp_path / "frozen"
    run_cli("framework.train", tiny_args(data_dir, run_dir, f"trainer.init_from={pretrained}", "trainer.max_epochs=1",
                                         "trainer.freeze=[convs]", "trainer.checkpoint.every_n_steps=1",
                                         "trainer.checkpoint.keep_last=100", "trainer.unfreeze_at=3"), cwd=tmp_path)
    states = {int(p.stem.split("-")[1]): torch.load(p, weights_only=True)
              for p in (run_dir / "checkpoints").glob("ckpt-*.pt")}
    frozen = [k for k in source if k.startswith("convs.")]
    assert frozen and any(k.endswith("running_mean") for k in frozen)  # batch-norm statistics too
    for step in (1, 2):
        assert all(torch.equal(states[step]["model"][k], source[k]) for k in frozen), step
        assert len(states[step]["optimizer"]["param_groups"]) == 1
        trainable = sum(1 for k in source if not k.startswith("convs.") and "running" not in k and "num_batches" not in k)
        assert len(states[step]["optimizer"]["state"]) == trainable  # no optimizer state for frozen ones
    later = max(states)
    assert later >= 4 and not all(torch.equal(states[later]["model"][k], source[k]) for k in frozen)
    assert states[later]["optimizer"]["param_groups"][1]["name"] == "unfrozen"


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_a_fine_tuning_run_resumes_bitwise_after_sigterm(pretrained, tmp_path, data_dir):
    args = [f"trainer.init_from={pretrained}", "trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1",
            "trainer.freeze=[convs]", "trainer.unfreeze_at=4",
            "optimizer.groups=[{match: 'rnns.*', lr_scale: 0.5}]"]
    straight = tmp_path / "straight"
    run_cli("framework.train", tiny_args(data_dir, straight, *args), cwd=tmp_path)
    run_dir = tmp_path / "stopped"
    proc = start_training(data_dir, run_dir, *args, cwd=tmp_path)
    wait_for(run_dir / "checkpoints" / "ckpt-000000002.pt", proc)  # before the unfreezing step
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    run_cli("framework.train", tiny_args(data_dir, run_dir, *args, "trainer.resume=auto"), cwd=tmp_path)
    b = assert_trained_alike(straight, run_dir, figures=())
    lrs = [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert len(lrs) == 3 and lrs[0] == pytest.approx(0.5 * lrs[1])  # rnns at half the others' rate


def test_init_from_a_run_that_does_not_exist_is_one_line(tmp_path, data_dir):
    proc = run_cli("framework.train", tiny_args(data_dir, tmp_path / "r", "trainer.init_from=/nowhere"), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == "error: trainer.init_from=/nowhere: no such checkpoint file or run directory"


def test_a_run_directory_gives_its_best_checkpoint_by_the_metric_it_kept_the_best_by(tmp_path):
    # the lower loss and the lower CER are different checkpoints: the run kept its best by CER
    (tmp_path / "config.yaml").write_text("trainer:\n  checkpoint:\n    monitor: cer\n    mode: min\n")
    files = Checkpointer(tmp_path / "checkpoints", keep_last=0, keep_best=2, monitor="cer")
    for step, loss, cer in ((10, 0.5, 0.01), (20, 0.4, 0.02)):
        files.save({"format_version": 2, "model": {}}, step, {"loss": loss, "cer": cer})
    assert source_checkpoint(tmp_path).name == "ckpt-000000010.pt"
    (tmp_path / "config.yaml").write_text("trainer:\n  checkpoint:\n    monitor: loss\n")
    assert source_checkpoint(tmp_path).name == "ckpt-000000020.pt"
