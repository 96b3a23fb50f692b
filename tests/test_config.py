"""Config composition, overrides and errors for a wrong choice or a missing value."""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from tests.conftest import ROOT, TINY, run_cli, run_result

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


def test_small_model_inherits_the_spec_and_changes_only_what_it_says():
    spec, small = compose_train(["model=ds2"]).model, compose_train(["model=ds2_small"]).model
    assert spec.keys() == small.keys()
    changed = {k for k in spec if spec[k] != small[k]}
    assert changed == {"conv_channels", "conv_kernels", "conv_padding", "rnn_type", "hidden_size", "num_layers",
                       "shared_projection", "fc_size"}  # exactly the keys conf/model/ds2_small.yaml sets
    assert small.conv_strides == spec.conv_strides == [[2, 2], [1, 2]] and small.merge == spec.merge


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli("framework.train", ["--cfg", "job", "trainer.max_epochs=5"], cwd=tmp_path)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.trainer.max_epochs == 5
    assert not (tmp_path / "runs").exists()  # printing the config starts no run


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    proc = run_cli("framework.train", ["model=ds3"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: model=ds3: no such option in conf/model/ (or the --config-dir); available: "
                                   "conformer_m, conformer_small, conformer_transducer, ds2, ds2_small, ds2_transducer, "
                                   "wav2vec2_ctc, wideresnet, wrn_small")


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
    ("trainer.device=gpu", "trainer.device='gpu': expected one of auto, cpu, cuda"),
    ("trainer.precision=fp8", "trainer.precision='fp8': expected one of fp32, bf16, fp16"),
    ("trainer.checkpoint.mode=maximum", "trainer.checkpoint.mode='maximum': expected one of min, max"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1: must be >= 1"),
    ("trainer.resume=/missing.pt", "trainer.resume=/missing.pt: no such checkpoint file"),
    ("optimizer.lr=0", "optimizer.lr=0: must be > 0"),
])
def test_typos_wrong_types_and_bad_values_fail_in_one_line_before_training(override, message):
    """The command line's check (``framework.train`` reports its error as ``error: <it>``, status 2:
    the next test runs the command)."""
    from framework.config import ConfigError, check_command_line

    with pytest.raises(ConfigError) as info:
        check_command_line([override])
    assert str(info.value).startswith(message) and len(str(info.value).splitlines()) == 1


def test_a_bad_value_on_the_command_line_is_one_line_and_status_2_before_anything_starts(tmp_path):
    proc = run_cli("framework.train", ["trainer.max_epoch=3", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_typo_inside_a_yaml_file_is_named(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_epoch: 3\n")
    proc = run_cli("framework.train", ["--config-dir", str(tmp_path), "experiment=mine"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?" in proc.stderr


def test_a_typo_in_a_sweep_fails_before_the_first_job(tmp_path):
    proc = run_cli("framework.train", ["-m", "optimizer.lr=1e-3,1e-4", "trainer.max_epoch=1",
                                       f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "did you mean trainer.max_epochs?" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_validate_in_code_catches_keys_added_after_composition():
    from framework.config import ConfigError, validate

    cfg = OmegaConf.create(OmegaConf.to_container(compose_train([])))  # untyped, as a program might build it
    validate(cfg)
    cfg.trainer.warmup = 5
    cfg.trainer.max_epochs = "many"
    cfg.batching.num_bukets = 3
    cfg.model.rnn_type = 7
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).splitlines() == [
        "trainer.max_epochs='many': expected an integer",
        "trainer.warmup: unknown key; valid keys: activation_checkpointing, checkpoint, compile, device, "
        "early_stopping, ema_decay, eval_precision, freeze, fsdp_units, grad_accumulation, init, init_from, "
        "limit_batches, max_epochs, max_grad_norm, max_time, nonfinite_patience, num_threads, num_workers, precision, "
        "profile, resume, skip_oom, strategy, tf32, unfreeze_at",
        "batching.num_bukets: unknown key; did you mean batching.num_buckets?",
        "model.rnn_type=7: expected one of rnn, gru, lstm",
    ]


# ------------------------------------------------ every _target_ node, against its signature
def test_every_target_node_is_checked_against_its_signature():
    from framework.config import ConfigError, validate

    cfg = compose_train(["dataset=manifest", "dataset.train.path=t.json", "dataset.valid.path=v.json"])
    with open_dict(cfg):
        cfg.optimizer.betas = "high"  # torch.optim.AdamW: a tuple of floats
        cfg.features.extractor.n_melz = 40  # a nested node (framework.features.mel)
        del cfg.dataset.valid.path  # a required argument
        cfg.batching.batch_ordering = "sideways"  # Literal["random", "ascending", "descending"]
        cfg.scheduler.pct_start = "soon"
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    lines = str(info.value).splitlines()
    assert "features.extractor.n_melz: unknown key; did you mean features.extractor.n_mels?" in lines
    assert "dataset.valid.path: missing; ManifestDataset requires it (set dataset.valid.path=...)" in lines
    assert "batching.batch_ordering='sideways': expected one of random, ascending, descending" in lines
    assert "scheduler.pct_start='soon': expected a number" in lines
    assert any(line.startswith("optimizer.betas='high'") for line in lines)


@pytest.fixture()
def user_configs(tmp_path):
    """A config folder of a user's own: a recipe, an experiment and a batching option, each with a typo."""
    (tmp_path / "recipe").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "batching").mkdir()
    (tmp_path / "recipe" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - asr_ctc\n  - _self_\nbatching:\n  max_batch_lenght: 30\n")
    (tmp_path / "experiment" / "exp.yaml").write_text("# @package _global_\nmodel:\n  hiden_size: 64\n")
    (tmp_path / "batching" / "wide.yaml").write_text(
        "defaults:\n  - dynamic\n  - _self_\nnum_bukets: 3\n")
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["trainer.max_epoch=3"], "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"),
    (["recipe=mine"], "batching.max_batch_lenght: unknown key; did you mean batching.max_batch_length? "
                      "(set in recipe/mine.yaml)"),
    (["experiment=exp"], "model.hiden_size: unknown key; did you mean model.hidden_size? (set in experiment/exp.yaml)"),
    (["batching=wide"], "batching.num_bukets: unknown key; did you mean batching.num_buckets? (set in batching/wide.yaml)"),
    (["+seeed=3"], "seeed: unknown top-level key; did you mean seed?"),
])
def test_a_typo_anywhere_is_named_with_the_file_that_set_it(user_configs, monkeypatch, args, message):
    from framework.config import ConfigError, check_command_line

    monkeypatch.chdir(user_configs)  # files are named relative to the working directory
    with pytest.raises(ConfigError) as info:
        check_command_line(args, str(user_configs))
    assert str(info.value).startswith(message)


def test_validate_fails_with_exit_2_naming_the_file_of_a_typo(user_configs):
    proc = run_cli("framework.validate", ["--config-dir", str(user_configs), "batching=wide"], cwd=user_configs,
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: batching.num_bukets: unknown key; did you mean batching.num_buckets? "
                                   "(set in batching/wide.yaml)")


def test_top_level_keys_a_recipe_declares_are_accepted(user_configs):
    (user_configs / "recipe" / "ok.yaml").write_text("# @package _global_\ndefaults:\n  - asr_ctc\n  - _self_\n"
                                                      "my_threshold: 0.5\n")
    from framework.config import check_command_line

    check_command_line(["recipe=ok"], str(user_configs))
    check_command_line(["recipe=ok", "my_threshold=0.7"], str(user_configs))


@pytest.mark.parametrize("source", ["asr_ctc", "image_classification", "sound_event"])
def test_validate_succeeds_on_every_new_recipe_template(tmp_path, source):
    run_cli("framework.new_recipe", ["mine", "--from", source], cwd=tmp_path)
    from framework.config import check_command_line

    sys.modules.pop("brain", None)  # another template's brain.py, imported by an earlier case in this process
    check_command_line(["recipe=mine"], str(tmp_path / "mine"))  # the config check, in this process
    if source == "asr_ctc":  # and the whole command once (builds data, model, optimizer)
        out = run_cli("framework.validate", ["--config-dir", "mine", "recipe=mine"], cwd=tmp_path).stdout
        assert out.startswith("config OK") and "recipe          brain.ASRBrain" in out


def test_a_new_recipe_trains_from_its_own_folder(tmp_path, data_dir):
    run_cli("framework.new_recipe", ["mine", "--from", "asr_ctc"], cwd=tmp_path)
    run_dir = tmp_path / "run"
    run_cli("framework.train", ["--config-dir", "mine", "recipe=mine", *TINY, f"dataset.root={data_dir}/tones-tiny",
                                "trainer.max_epochs=1", "trainer.limit_batches=2", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path)
    assert OmegaConf.load(run_dir / "config.yaml").brain._target_ == "brain.ASRBrain"  # the folder's own Brain
    assert "test_cer" in run_result(run_dir)["metrics"]


def test_debug_mode_wins_over_a_recipes_own_settings(tmp_path):
    from framework.config import compose_command_line

    run_cli("framework.new_recipe", ["mine", "--from", "image_classification"], cwd=tmp_path)
    with open(tmp_path / "mine" / "recipe" / "mine.yaml", "a") as f:
        f.write("trainer:\n  max_epochs: 7\n")
    assert compose_command_line(["recipe=mine"], str(tmp_path / "mine")).trainer.max_epochs == 7
    debug = compose_command_line(["recipe=mine", "debug=default"], str(tmp_path / "mine"))
    assert debug.trainer.max_epochs == 2 and debug.trainer.limit_batches == 2
    for recipe in ("image_classification", "sound_event"):
        assert compose_command_line([f"recipe={recipe}", "debug=default"]).trainer.max_epochs == 2


DATASETS = {"tones": [], "speech": [], "sentences": [], "deepmark": [], "digits": [], "recording": [],
            "manifest": ["dataset.train.path=t.json", "dataset.valid.path=v.json"],
            "hdf5": ["dataset.train.path=t.h5", "dataset.valid.path=v.h5"],
            "shards": ["dataset.train.path=shards/train", "dataset.valid.path=https://host/shards/valid"]}


@pytest.mark.parametrize("recipe", ["asr_ctc", "asr_transducer", "image_classification", "sound_event"])
@pytest.mark.parametrize("batching", ["fixed", "sorted", "dynamic"])
def test_every_recipe_composes_with_every_batching_and_dataset(recipe, batching):
    from framework.config import check_command_line

    for dataset, paths in DATASETS.items():
        check_command_line([f"recipe={recipe}", f"batching={batching}", f"dataset={dataset}", *paths])


@pytest.mark.parametrize("recipe,extra", [
    ("asr_ctc", ["model=conformer_small", "batching.quadratic=30"]),
    ("asr_ctc", ["model=conformer_m", "trainer.activation_checkpointing=[blocks]"]),
    ("asr_ctc", ["decoder=beam", "decoder.lexicon=train"]),
    ("asr_ctc", ["tokenizer=bpe", "tokenizer.vocab_size=64"]),
    ("asr_transducer", ["batching.quadratic=30", "trainer.activation_checkpointing=[encoder.blocks]"]),
    ("asr_transducer", ["model=ds2_transducer", "decoder=transducer_beam", "tokenizer=unigram"]),
    ("sound_event", []),
])
@pytest.mark.parametrize("augment", ["none", "specaugment", "speech"])
def test_augmentations_decoders_and_conformers_compose_with_the_recipes_they_apply_to(recipe, extra, augment):
    from framework.config import ConfigError, check_command_line

    check_command_line([f"recipe={recipe}", f"augment={augment}", *extra])
    with pytest.raises(ConfigError, match="augment.specaugmnt"):  # and the check is live there
        check_command_line([f"recipe={recipe}", f"augment={augment}", *extra, "augment.specaugmnt=1"])


# Which options of the groups that only speech recognition uses apply to which recipe.
ASR_OPTIONS = {
    "asr_ctc": {"model": ["ds2", "ds2_small", "conformer_small", "conformer_m"], "decoder": ["greedy", "beam"]},
    "asr_transducer": {"model": ["conformer_transducer", "ds2_transducer"],
                       "decoder": ["transducer_greedy", "transducer_beam"]},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("recipe", sorted(ASR_OPTIONS))
def test_every_tokenizer_decoder_and_model_composes_with_the_asr_recipes_it_applies_to(recipe):
    from framework.config import ConfigError, check_command_line

    assert sorted(d for r in ASR_OPTIONS.values() for d in r["decoder"]) == options("decoder")  # none left untried
    assert {m for r in ASR_OPTIONS.values() for m in r["model"]} == set(options("model")) - {"wideresnet", "wrn_small",
                                                                                             "wav2vec2_ctc"}
    for tokenizer in options("tokenizer"):
        for decoder in ASR_OPTIONS[recipe]["decoder"]:
            cfg = check_command_line([f"recipe={recipe}", f"tokenizer={tokenizer}", f"decoder={decoder}"])
            assert cfg.tokenizer._target_.startswith("framework.text.units.")
    for model in ASR_OPTIONS[recipe]["model"]:
        check_command_line([f"recipe={recipe}", f"model={model}"])
    with pytest.raises(ConfigError, match="tokenizer.vocab_sise: unknown key; did you mean tokenizer.vocab_size?"):
        check_command_line([f"recipe={recipe}", "tokenizer=bpe", "+tokenizer.vocab_sise=3"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_passes_the_config_check(name):
    from framework.config import check_command_line

    check_command_line([f"experiment={name}"])


def test_a_value_a_constructor_refuses_is_one_line_naming_the_key(tmp_path):
    proc = run_cli("framework.validate", ["model.dropout=1.5"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: dropout=1.5 must be in [0, 1): the probability of zeroing an activation"


def test_settings_for_an_option_that_builds_nothing_are_refused_naming_their_file():
    from framework.config import ConfigError, check_command_line

    # the experiment tunes the OneCycle warm-up; scheduler=constant has nothing to take it
    with pytest.raises(ConfigError) as err:
        check_command_line(["experiment=asr_speech_best", "scheduler=constant"])
    assert str(err.value) == ("scheduler.pct_start: the chosen scheduler option builds nothing, so nothing takes "
                              "pct_start; add ~scheduler.pct_start or choose another scheduler option "
                              "(set in conf/experiment/asr_speech_best.yaml)")
    check_command_line(["experiment=asr_speech_best", "scheduler=constant", "~scheduler.pct_start"])
    check_command_line(["scheduler=constant"])
    with pytest.raises(ConfigError) as err:  # a key of its own on the command line
        check_command_line(["scheduler=constant", "scheduler.over=time", "trainer.max_time=1m"])
    assert str(err.value) == ("scheduler.over: unknown key; the chosen scheduler option takes no keys: leave over out "
                              "or choose another scheduler option")


def test_an_unknown_top_level_key_is_matched_with_the_keys_there_or_where_its_name_lives():
    from framework.config import ConfigError, check_command_line

    with pytest.raises(ConfigError) as err:
        check_command_line(["sed=1"])
    assert str(err.value) == "sed: unknown key; did you mean seed?"
    with pytest.raises(ConfigError) as err:
        check_command_line(["dataset=shards", "skip_bad=true"])
    assert str(err.value) == ("skip_bad: unknown key; did you mean dataset.train.skip_bad or dataset.valid.skip_bad or "
                              "dataset.test.skip_bad?")
    with pytest.raises(ConfigError) as err:  # another override wrong too
        check_command_line(["optimizer.lrr=1", "model.dropuot=0.1"])
    assert str(err.value) == "optimizer.lrr: unknown key; did you mean optimizer.lr?"
    with pytest.raises(ConfigError) as err:
        check_command_line(["zzz=1"])
    assert str(err.value).startswith("zzz: unknown key; valid keys: augment, batching, brain, dataset,")
