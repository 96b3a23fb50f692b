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
