"""Config composition, overrides and errors for a wrong choice or a missing value."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_cli

CONF = str(ROOT / "conf")


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


def test_default_composition_selects_every_group():
    cfg = compose_train([])
    for group in ("dataset", "features", "batching", "model", "optimizer", "scheduler", "trainer", "logger"):
        assert group in cfg, group
    assert cfg.brain._target_ == "recipes.asr_ctc.brain.ASRBrain"
    assert cfg.model._target_ == "framework.models.DeepSpeech2"
    assert cfg.trainer.checkpoint.monitor == "cer"  # set by the recipe


def test_nested_overrides_and_group_choice():
    cfg = compose_train(["trainer.max_epochs=3", "optimizer.lr=1e-3", "model=ds2", "batching=fixed", "batching.batch_size=7"])
    assert cfg.trainer.max_epochs == 3
    assert cfg.optimizer.lr == 1e-3
    assert cfg.scheduler.max_lr == 1e-3  # interpolated from the optimizer
    assert cfg.model.hidden_size == 1760 and cfg.model.num_layers == 7
    assert cfg.batching._target_.endswith("FixedBatchSampler") and cfg.batching.batch_size == 7


def test_small_model_inherits_the_spec_and_changes_only_size():
    cfg = compose_train(["model=ds2_small"])
    assert cfg.model.conv_strides == [[2, 2], [1, 2]]
    assert cfg.model.hidden_size == 128


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli("framework.train", ["--cfg", "job", "trainer.max_epochs=5"], cwd=tmp_path)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.trainer.max_epochs == 5
    assert not (tmp_path / "runs").exists()  # printing the config starts no run


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    proc = run_cli("framework.train", ["model=ds3"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/ds3'" in proc.stderr
    assert "ds2_small" in proc.stderr and "ds2" in proc.stderr


def test_missing_required_value_names_the_key(tmp_path):
    proc = run_cli("framework.train", ["dataset=manifest", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "dataset.train.path" in proc.stderr


import pytest  # noqa: E402


@pytest.mark.parametrize("override,message", [
    ("trainer.max_epoch=3", "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"),
    ("+trainer.max_epoch=3", "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"),
    ("++trainer.checkpoint.keep_lst=3", "trainer.checkpoint.keep_lst: unknown key; did you mean trainer.checkpoint.keep_last?"),
    ("batching.max_batch_lenght=9", "batching.max_batch_lenght: unknown key; did you mean batching.max_batch_length?"),
    ("+features.normalise=global", "features.normalise: unknown key; did you mean features.normalize?"),
    ("dataset.train.min_durration=1", "dataset.train.min_durration: unknown key; did you mean dataset.train.min_duration?"),
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc': expected an integer"),
    ("trainer.max_grad_norm=big", "trainer.max_grad_norm='big': expected a number or null"),
    ("logger.tensorboard=maybe", "logger.tensorboard='maybe': expected true or false"),
])
def test_typos_and_wrong_types_fail_before_training_with_a_suggestion(tmp_path, override, message):
    proc = run_cli("framework.train", [override, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_typo_inside_a_yaml_file_is_named(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_epoch: 3\n")
    proc = run_cli("framework.train", ["--config-dir", str(tmp_path), "+experiment=mine"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?" in proc.stderr


def test_a_typo_in_a_sweep_fails_before_the_first_job(tmp_path):
    proc = run_cli("framework.train", ["-m", "optimizer.lr=1e-3,1e-4", "trainer.max_epoch=1",
                                       f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "did you mean trainer.max_epochs?" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_validate_in_code_catches_keys_added_after_composition():
    from framework.config.check import ConfigError, validate

    cfg = OmegaConf.create(OmegaConf.to_container(compose_train([])))  # untyped, as a program might build it
    validate(cfg)
    cfg.trainer.warmup = 5
    cfg.trainer.max_epochs = "many"
    with pytest.raises(ConfigError, match="(?s)trainer.max_epochs='many': expected an integer.*trainer.warmup: unknown key"):
        validate(cfg)
