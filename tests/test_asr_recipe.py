"""The ASR recipe: learning, features in workers, evaluation and transcription commands."""

from __future__ import annotations

import json

import pytest
import torch

from framework.text import edit_distance
from tests.conftest import run_cli, run_result


def test_recipe_learns_far_below_the_trivial_baseline(tmp_path, data_dir):
    """A short CPU run on 200 utterances: test CER far below the 1.0 of an empty transcript."""
    run_dir = tmp_path / "run"
    run_cli("framework.train", [f"dataset.root={data_dir}/tones-200", "dataset.prepare.splits={train:200,valid:30,test:30}",
                                "trainer.max_epochs=8", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    cer = run_result(run_dir)["metrics"]["test_cer"]
    assert cer < 0.35, cer


def test_features_in_workers_with_global_normalisation_and_specaugment(train_cli):
    overrides = ["features=mel", "features.extractor.n_mels=20", "features.where=worker", "features.normalize=global",
                 "trainer.num_workers=2"]
    _, run_dir = train_cli(*overrides, "trainer.max_epochs=2")
    stats = torch.load(run_dir / "feature_stats.pt", weights_only=True)
    assert stats["mean"].shape == (20,) and stats["frames"] > 0
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]

    # the loader of such a run hands over features ([B, T, 20]), computed in its worker processes
    from framework.brain import Stage
    from framework.experiment import build_datasets
    from framework.run_dir import load_run_config, open_brain

    cfg = load_run_config(run_dir)
    brain = open_brain(cfg, "inspect")
    brain.setup(None)
    loader = brain.make_dataloader(build_datasets(cfg)["train"], Stage.TRAIN)
    batch = next(iter(loader))
    assert loader.num_workers == 2 and batch.inputs.dim() == 3 and batch.inputs.shape[-1] == 20
    assert loader.dataset.fn.func.__self__ is not brain.features  # a CPU copy of the pipeline, in the workers


@pytest.mark.parametrize("where", [pytest.param("device", marks=pytest.mark.slow), "worker"])  # one fast case
def test_training_with_speech_augmentation(train_cli, where):
    """Speed perturbation, quiet padding, noise and SpecAugment on training batches only; the
    training sampler budgets with lengths bounded by both, evaluation sees the audio as is."""
    _, run_dir = train_cli("augment=speech", f"features.where={where}", "trainer.num_workers=2",
                           "augment.speed.factors=[0.8,1.0]",
                           "augment.quiet={_target_:framework.augment.QuietPadding,sample_rate:${sample_rate},lead_s:0.2,tail_s:0.1}")
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"] and all(h["valid_cer"] < 1.2 for h in history)

    from framework.brain import Stage
    from framework.experiment import build_datasets
    from framework.run_dir import load_run_config, open_brain

    cfg = load_run_config(run_dir)
    brain = open_brain(cfg, "inspect")
    brain.setup(None)
    datasets = build_datasets(cfg)
    train = brain.make_dataloader(datasets["train"], Stage.TRAIN).batch_sampler
    valid = brain.make_dataloader(datasets["valid"], Stage.VALID).batch_sampler
    assert train.lengths == pytest.approx(datasets["train"].lengths / 0.8 + 0.3)
    assert valid.lengths == pytest.approx(datasets["valid"].lengths)


def test_intermediate_ctc_trains_with_its_weight_and_leaves_evaluation_alone(train_cli, tmp_path):
    _, run_dir = train_cli("model.num_layers=2", "model.intermediate_layer=1", "intermediate_ctc_weight=0.4")
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"] and "test_cer" in run_result(run_dir)["metrics"]
    metrics = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert f"test_cer={metrics['test_cer']:.4g}" in (run_dir / "train.log").read_text()

    # a training batch's loss: 0.6 x CTC of the output + 0.4 x CTC of the first layer's head
    from framework.brain import Stage
    from framework.experiment import build_datasets
    from framework.run_dir import load_run_config, open_brain

    brain = open_brain(load_run_config(run_dir), "inspect")
    brain.setup(None)
    brain.load_weights("best")
    batch = next(iter(brain.make_dataloader(build_datasets(brain.cfg)["train"], Stage.TRAIN)))
    brain.model.train()
    with torch.no_grad():
        log_probs, lengths, lower = brain.compute_forward(batch, Stage.TRAIN)
        loss = brain.compute_objectives((log_probs, lengths, lower), batch, Stage.TRAIN)
    targets, target_lens = brain.tokenizer.encode_batch(batch.text)
    final, first = (torch.nn.functional.ctc_loss(p.transpose(0, 1), targets, lengths, target_lens, zero_infinity=True)
                    .item() for p in (log_probs, lower[0]))
    assert abs(final - first) > 0.01 and loss.item() == pytest.approx(0.6 * final + 0.4 * first, rel=1e-5)

    proc, _ = train_cli("model.num_layers=2", "model.intermediate_layer=1", "intermediate_ctc_weight=0",
                        run_dir=tmp_path / "bad", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: intermediate_ctc_weight=0.0: must be in (0, 1)")


@pytest.mark.slow  # the README test runs both commands
def test_evaluate_and_transcribe_commands(one_epoch_run, tmp_path, data_dir):
    run_dir = one_epoch_run
    metrics = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert set(metrics) == {"test_loss", "test_cer", "test_wer", "test_examples"}
    log = (run_dir / "train.log").read_text()
    assert f"test_cer={metrics['test_cer']:.4g}" in log  # same checkpoint, same numbers as after training
    # every test utterance, once, with its reference and the errors the CER counted
    header, *rows = [line.split("\t") for line in (run_dir / "test_transcripts.tsv").read_text().splitlines()]
    assert header == ["id", "char_errors", "chars", "reference", "hypothesis"]
    manifest = json.loads((data_dir / "tones-tiny" / "test.json").read_text())
    assert [r[0] for r in rows] == sorted(manifest) and len(rows) == 16
    assert all(r[3] == manifest[r[0]]["words"].lower() and int(r[2]) == len(r[3]) for r in rows)
    assert all(int(r[1]) == edit_distance(r[3], r[4]) for r in rows)
    errors, chars = sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows)
    assert errors > 0 and abs(errors / chars - metrics["test_cer"]) < 1e-9  # one epoch: some errors left
    wavs = sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:2]
    out = run_cli("framework.transcribe", [str(run_dir), *map(str, wavs)], cwd=tmp_path).stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == [str(w) for w in wavs]

    bad = run_cli("framework.evaluate", [str(tmp_path / "nowhere")], cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_beam_search_with_a_language_model_in_evaluate_and_transcribe(one_epoch_run, tmp_path, data_dir):
    pytest.importorskip("flashlight.lib.text", reason="beam search needs flashlight-text (pip install '.[lm]')")
    run_dir = one_epoch_run
    corpus = data_dir / "tones-tiny"
    assert (run_dir / "lexicon.txt").read_text().split() == sorted(
        {w for e in json.loads((corpus / "train.json").read_text()).values() for w in e["words"].lower().split()})
    run_cli("framework.prepare", ["lm", str(corpus / "train.json"), str(tmp_path / "lm.arpa"), "--order", "2"],
            cwd=tmp_path)
    # a word bonus, so that the 1-epoch model spells words at all (with the LM alone the best is empty)
    beam = ["decoder=beam", f"decoder.lm={tmp_path / 'lm.arpa'}", "decoder.lexicon=train", "decoder.beam_size=8",
            "decoder.word_score=2"]
    proc = run_cli("framework.evaluate", [str(run_dir), *beam], cwd=tmp_path)
    assert set(json.loads(proc.stdout)) == {"test_loss", "test_cer", "test_wer", "test_examples"}
    wavs = [str(w) for w in sorted((corpus / "test").glob("*.wav"))[:5]]

    def transcripts(*overrides):
        out = run_cli("framework.transcribe", [str(run_dir), *wavs, *overrides], cwd=tmp_path).stdout
        lines = [line.split("\t") for line in out.rstrip("\n").split("\n")]
        assert [path for path, _ in lines] == wavs
        return [text.split() for _, text in lines]

    lexicon = set((run_dir / "lexicon.txt").read_text().split())
    spelt = transcripts(*beam)
    assert any(spelt) and all(set(words) <= lexicon for words in spelt)  # a lexicon spells only training words
    # after one epoch greedy decoding spells non-words, so the beam decoder was what kept to the lexicon
    assert any(not set(words) <= lexicon for words in transcripts())
    bad = run_cli("framework.evaluate", [str(run_dir), "decoder=bean"], cwd=tmp_path, check=False)
    assert bad.returncode == 2 and ("decoder=bean: no such option in conf/decoder/; available: beam, greedy, "
                                    "transducer_beam, transducer_greedy") in bad.stderr


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_evaluation_and_transcription_never_fit_on_their_own_data(train_cli, tmp_path, data_dir):
    _, run_dir = train_cli("trainer.max_epochs=1", "features.normalize=global")
    wav = str(data_dir / "tones-tiny" / "test" / "test-00000.wav")
    for name in ("tokenizer.json", "feature_stats.pt"):
        (run_dir / name).rename(run_dir / f"{name}.aside")
        for module, args in (("framework.evaluate", [str(run_dir)]), ("framework.transcribe", [str(run_dir), wav])):
            proc = run_cli(module, args, cwd=tmp_path, check=False)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {run_dir / name} not found")
            assert not (run_dir / name).exists()  # not fitted on the test data
        (run_dir / f"{name}.aside").rename(run_dir / name)


def test_adamw8bit_without_bitsandbytes_says_what_to_do(train_cli):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    proc, _ = train_cli("optimizer=adamw8bit", check=False)
    assert proc.returncode != 0 and "optimizer=adamw8bit needs bitsandbytes" in proc.stderr
