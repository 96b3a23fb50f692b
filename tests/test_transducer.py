"""The transducer (RNN-T): its loss over subword pieces, greedy and beam decoding, the
asr_transducer recipe with the trainer's options, exact resume after SIGTERM, DDP."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchaudio.functional import rnnt_loss

from framework.models import ConformerCTC
from framework.models.transducer import Transducer
from framework.text.subword import SentencePieceTokenizer
from framework.text.transducer_decoders import TransducerBeamDecoder, TransducerGreedyDecoder
from recipes.asr_transducer.brain import padded_targets
from tests.conftest import ROOT, TINY, run_cli, run_result
from tests.helpers import ENV, assert_trained_alike, newest_state, wait_for

SPEECH = ROOT / "recipes" / "asr_ctc" / "speech"
# The tiny config of tests/conftest.py with a transducer of the same scale.
TINY_TRANSDUCER = [*(t for t in TINY if not t.startswith("model.")), "recipe=asr_transducer",
                   "model.encoder.d_model=32", "model.encoder.num_layers=2", "model.encoder.num_heads=2",
                   "model.encoder.subsampling_channels=8", "model.joint_dim=32", "model.embedding_dim=16",
                   "model.hidden_size=32"]


def tiny_transducer(num_bins: int, num_classes: int, ctc_head: bool = False) -> Transducer:
    encoder = functools.partial(ConformerCTC, d_model=64, num_layers=2, num_heads=4, subsampling_channels=16,
                                dropout=0.0)
    return Transducer(encoder, num_bins=num_bins, num_classes=num_classes, joint_dim=64, embedding_dim=32,
                      hidden_size=64, dropout=0.0, ctc_head=ctc_head)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pieces() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train([e["words"] for e in json.loads((SPEECH / "train.json").read_text()).values()],
                                        "bpe", 64)


def test_loss_handles_pieces_blanks_empty_transcripts_and_padding(pieces):
    torch.manual_seed(0)
    model = tiny_transducer(20, len(pieces)).eval()
    texts = ["about these number", "", "go go"]
    targets, target_lens = pieces.encode_batch(texts)
    assert target_lens[1] == 0 and target_lens.max() > 3
    lengths = torch.tensor([60, 45, 52])
    features = torch.randn(3, 60, 20)
    with torch.no_grad():
        joint, _, out_lens, ctc = model(features, lengths, padded_targets(targets, target_lens), target_lens)
        assert joint.shape == (3, int(out_lens.max()), int(target_lens.max()) + 1, len(pieces)) and ctc is None
        loss = rnnt_loss(joint, padded_targets(targets, target_lens).int(), out_lens.int(), target_lens.int(),
                         blank=0, reduction="none")
        assert torch.isfinite(loss).all()
        # an empty transcript: the blank at every frame, the prediction network at its start
        blank = joint[1, : out_lens[1], 0].log_softmax(-1)[:, 0]
        assert loss[1].item() == pytest.approx(-blank.sum().item(), rel=1e-5)
        # padding (frames, labels) changes nothing: each utterance alone gives its loss in the batch
        for i, ids in enumerate(targets.split(target_lens.tolist())):
            alone, _, alone_lens, _ = model(features[i:i + 1, : lengths[i]], lengths[i:i + 1], ids[None],
                                            target_lens[i:i + 1])
            single = rnnt_loss(alone, ids[None].int(), alone_lens.int(), target_lens[i:i + 1].int(), blank=0)
            assert single.item() == pytest.approx(loss[i].item(), rel=1e-4)
        # a batch of empty transcripts only
        empty = torch.zeros(2, 0, dtype=torch.long)
        joint, _, out_lens, _ = model(features[:2], lengths[:2], empty, torch.zeros(2, dtype=torch.long))
        assert joint.shape[2] == 1 and torch.isfinite(rnnt_loss(joint, empty.int(), out_lens.int(),
                                                                torch.zeros(2, dtype=torch.int32), blank=0))


def test_greedy_and_beam_search_emit_nothing_where_the_blank_wins(pieces):
    model = tiny_transducer(20, len(pieces)).eval()
    with torch.no_grad():
        model.joiner.output.bias[0] = 100.0  # the blank wins every frame
        encodings, lengths = model.transcribe(torch.randn(2, 40, 20), torch.tensor([40, 30]))
        assert TransducerGreedyDecoder(pieces).decode(model, encodings, lengths) == ["", ""]
        assert TransducerBeamDecoder(pieces, beam_size=3).decode(model, encodings, lengths) == ["", ""]


def test_greedy_and_beam_decoding_of_an_overfitted_model_give_back_its_transcripts(pieces):
    """Four utterances of the shipped speech corpus, trained on (with the recipe's loss:
    0.7 x transducer + 0.3 x CTC of the encoder's head) until the model knows them."""
    from framework.data.audio import read_audio
    from framework.data.collate import pad_sequences
    from framework.features import FeaturePipeline, fbank

    torch.manual_seed(0)
    entries = list(json.loads((SPEECH / "train.json").read_text()).values())[:4]
    texts = [e["words"] for e in entries]
    wavs, lengths = pad_sequences([read_audio(e["wav"].replace("{data_root}", str(SPEECH)), 16000) for e in entries])
    features, feat_lens = FeaturePipeline(fbank(n_mels=40)).extract(wavs, lengths)
    model = tiny_transducer(features.shape[-1], len(pieces), ctc_head=True)
    targets, target_lens = pieces.encode_batch(texts)
    padded = padded_targets(targets, target_lens)
    optimizer = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(400):
        joint, _, out_lens, ctc_logits = model(features, feat_lens, padded, target_lens)
        ctc = F.ctc_loss(ctc_logits.log_softmax(-1).transpose(0, 1), targets, out_lens, target_lens, reduction="sum")
        loss = 0.7 * rnnt_loss(joint, padded.int(), out_lens.int(), target_lens.int(), blank=0) + 0.3 * ctc / 4
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss < 0.1:
            break
    assert loss < 0.1
    model.eval()
    with torch.no_grad():
        encodings, out_lens = model.transcribe(features, feat_lens)
        assert TransducerGreedyDecoder(pieces).decode(model, encodings, out_lens) == texts
        assert TransducerBeamDecoder(pieces, beam_size=4).decode(model, encodings, out_lens) == texts


# ------------------------------------------------------------------------- the recipe
@pytest.fixture()
def transducer_cli(tmp_path, data_dir):
    """Runs ``python -m framework.train`` with the tiny transducer config; returns (proc, run_dir)."""

    def run(*overrides: str, run_dir=None, check: bool = True):
        run_dir = run_dir or tmp_path / "run"
        args = [*TINY_TRANSDUCER, f"dataset.root={data_dir}/tones-tiny", f"hydra.run.dir={run_dir}", *overrides]
        return run_cli("framework.train", args, cwd=tmp_path, check=check), run_dir

    return run


def last_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_trains_in_pieces_with_bf16_accumulation_and_checkpointed_blocks_then_decodes_with_beam_search(
        transducer_cli, tmp_path, data_dir):
    _, run_dir = transducer_cli("tokenizer=bpe", "tokenizer.vocab_size=40", "trainer.precision=bf16",
                                "trainer.grad_accumulation=2", "trainer.activation_checkpointing=[encoder.blocks]")
    log = (run_dir / "train.log").read_text()
    assert "activation checkpointing: encoder.blocks.0, encoder.blocks.1" in log
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"] and (run_dir / "tokenizer.model").is_file()
    # evaluation and transcription with the beam search
    beam = json.loads(run_cli("framework.evaluate", [str(run_dir), "decoder=transducer_beam", "decoder.beam_size=4"],
                              cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert set(beam) == {"test_loss", "test_cer", "test_wer", "test_examples"}
    assert beam["test_loss"] == pytest.approx(run_result(run_dir)["metrics"]["test_loss"])  # the same checkpoint
    wavs = [str(w) for w in sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:2]]
    out = run_cli("framework.transcribe", [str(run_dir), *wavs, "decoder=transducer_beam"], cwd=tmp_path).stdout
    assert [line.split("\t")[0] for line in out.rstrip("\n").split("\n")] == wavs
    run_cli("framework.export", [str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "ts")], cwd=tmp_path)
    meta = json.loads((tmp_path / "ts" / "artifact.json").read_text())  # in pieces: its sentencepiece model beside it
    assert meta["subword_model"] == "tokenizer.model" and meta["parity"]["differing_transcripts"] == 0
    proc = run_cli("framework.transcribe", [str(run_dir), wavs[0], "--format", "json"], cwd=tmp_path, check=False)
    assert last_line(proc) == ("error: --format json: word times come from a CTC alignment; "
                               "recipes.asr_transducer.brain.TransducerBrain gives transcripts only (--format text)")


def test_decoders_and_models_of_the_other_recipe_are_refused_at_start(transducer_cli, train_cli, tmp_path):
    proc, run_dir = transducer_cli("decoder=beam", check=False)
    assert last_line(proc) == ("error: decoder framework.text.decoders.BeamSearchDecoder decodes ctc outputs; this "
                               "recipe's model needs a transducer decoder: decoder=transducer_greedy or "
                               "decoder=transducer_beam")
    assert not (run_dir / "checkpoints").exists()
    proc, _ = train_cli("decoder=transducer_greedy", run_dir=tmp_path / "ctc", check=False)
    assert last_line(proc) == ("error: decoder framework.text.transducer_decoders.TransducerGreedyDecoder decodes "
                               "transducer outputs; this recipe's model needs a ctc decoder: decoder=greedy or "
                               "decoder=beam")
    proc, _ = transducer_cli("ctc_weight=0", run_dir=tmp_path / "weight", check=False)
    assert last_line(proc).startswith("error: ctc_weight=0.0: must be in (0, 1) with model.ctc_head=true")


# ------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def decoding_transducer(tmp_path_factory, data_dir) -> Path:
    """The tiny transducer after 40 epochs (~15 s): it emits labels (test CER ~0.85), so the
    exported decoding loop has labels, blanks and the per-frame cap to get right."""
    run_dir = tmp_path_factory.mktemp("transducer") / "run"
    run_cli("framework.train", [*TINY_TRANSDUCER, f"dataset.root={data_dir}/tones-tiny", "trainer.max_epochs=40",
                                f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert run_result(run_dir)["metrics"]["test_cer"] < 0.95
    return run_dir


def test_an_exported_transducer_decodes_without_the_framework_as_the_recipe_does(decoding_transducer, tmp_path,
                                                                                 data_dir):
    """Three graphs (encoder, one prediction network step, joiner) and inference.py's greedy
    loop: parity with the recipe's encoder, prediction network, joiner and greedy decoder on
    the test set; the standalone artifact transcribes as the run directory does."""
    from tests.test_export import isolated_env

    run_dir, out = decoding_transducer, tmp_path / "ts"
    proc = run_cli("framework.export", [str(run_dir), "--format", "torchscript", "--out", str(out)], cwd=tmp_path)
    assert "(model.ts, predictor.ts, joiner.ts," in proc.stdout
    meta = json.loads((out / "artifact.json").read_text())
    parity = meta["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["exported_cer"] == parity["pytorch_cer"] < 0.95, parity
    assert parity["pytorch_cer"] == pytest.approx(run_result(run_dir)["metrics"]["test_cer"])
    assert meta["task"] == "transducer" and meta["transducer"]["state"] == [1, 32]
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "inference.py", "joiner.ts", "model.ts",
                                                     "predictor.ts", "tokenizer.json"]
    wavs = [str(w) for w in sorted((data_dir / "tones-tiny" / "test").glob("*.wav"))[:6]]
    isolated = subprocess.run([sys.executable, "-I", str(out / "inference.py"), *wavs], cwd=tmp_path,
                              env=isolated_env(), capture_output=True, text=True, timeout=300)
    assert isolated.returncode == 0 and "framework" not in isolated.stderr, isolated.stderr
    from_run = run_cli("framework.transcribe", [str(run_dir), *wavs], cwd=tmp_path).stdout
    from_artifact = run_cli("framework.transcribe", [str(out), *wavs], cwd=tmp_path).stdout
    assert isolated.stdout == from_run == from_artifact
    assert any(line.split("\t")[1] for line in from_run.splitlines())  # something was emitted
    proc = run_cli("framework.transcribe", [str(out), wavs[0], "--format", "srt"], cwd=tmp_path, check=False)
    assert last_line(proc) == (f"error: --format srt: word times come from a CTC alignment; {out}, an exported "
                               "transducer, gives transcripts only (--format text)")
    # mistakes: one line each, status 2
    proc = run_cli("framework.transcribe", [str(out), wavs[0], "--chunk", "0"], cwd=tmp_path, check=False)
    assert last_line(proc) == ("error: --chunk 0.0 --overlap 3.0: the chunk must be positive and the overlap shorter "
                               "than it")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "joiner.ts").unlink()
    proc = run_cli("framework.transcribe", [str(broken), wavs[0]], cwd=tmp_path, check=False)
    missing = f"error: {broken / 'joiner.ts'} is missing: the exported model folder is incomplete; export it again"
    assert last_line(proc) == missing

    def standalone(folder, *args):
        return subprocess.run([sys.executable, "-I", str(folder / "inference.py"), *args], cwd=tmp_path,
                              env=isolated_env(), capture_output=True, text=True, timeout=300)

    assert last_line(standalone(broken, wavs[0])) == missing
    assert last_line(standalone(out, wavs[0], "--batch-size", "0")).endswith("--batch-size and --threads must be at "
                                                                             "least 1")
    proc = standalone(out, str(tmp_path / "nowhere.wav"), wavs[0])
    assert proc.returncode == 2 and proc.stdout.startswith(wavs[0] + "\t")
    assert proc.stderr.splitlines() == [f"error: {tmp_path / 'nowhere.wav'}: no such file",
                                        "error: 1 of 2 files failed (named above)"]


def test_the_decoding_loop_emits_up_to_the_cap_a_frame_and_keeps_each_rows_state(decoding_transducer, tmp_path):
    """``Artifact.search`` against the recipe's batched greedy decoder, also where labels win
    more often (the joiner's blank score lowered): rows emit several labels a frame, up to
    the cap (every frame, when the blank never wins), and the rows of one batch stop emitting
    at different frames and labels. The parity check counts transcripts that differ."""
    from framework.data.collate import collate
    from framework.experiment import build_datasets
    from framework.export import parity
    from framework.export.__main__ import example_inputs, write_artifact
    from framework.export.inference import Artifact
    from framework.run_dir import load_run_config, open_brain

    cfg = load_run_config(str(decoding_transducer), [])
    brain = open_brain(cfg, log_name="probe")
    brain.setup(None)
    weights = brain.load_weights("best")
    brain.model.eval()
    test_set = build_datasets(cfg, True)["test"]
    batch = collate([test_set[i] for i in range(8)])
    emitted, cap = [], brain.decoder.max_symbols
    for shift in (0.0, 2.0, 4.0, 100.0):
        with torch.no_grad():
            brain.module.joiner.output.bias[0] -= shift
            folder = tmp_path / f"shift-{shift}"
            folder.mkdir()
            write_artifact(brain, str(decoding_transducer), "torchscript", None, weights, example_inputs(test_set),
                           folder)
            artifact = Artifact(folder)
            encodings, frames = artifact.run(batch.inputs.numpy(), batch.inputs_lens.numpy())
            hyps = artifact.search(encodings, frames)
            expected = TransducerGreedyDecoder(brain.tokenizer).search(brain.module, torch.from_numpy(encodings),
                                                                       torch.from_numpy(frames))
            brain.module.joiner.output.bias[0] += shift
        assert hyps == expected, shift
        emitted.append([len(h) for h in hyps])
    assert 0 < sum(emitted[0]) < sum(emitted[1]) < sum(emitted[2]) < sum(emitted[3]), emitted
    assert emitted[3] == [cap * n for n in frames.tolist()]
    record = parity.check(brain, test_set, Artifact(tmp_path / "shift-4.0"))  # the model is back to its own bias
    assert record["differing_transcripts"] > 0 and not parity.agrees(record)
    assert f"{record['differing_transcripts']} transcripts differ" in parity.describe(record)
    brain.logger.close()


@pytest.mark.slow  # ONNX and torch.export traces of three graphs, quantization, parity checks
def test_a_transducer_exports_in_every_format_and_int8(decoding_transducer, tmp_path):
    sizes = {}
    for fmt, quantize in (("onnx", None), ("torch_export", None), ("onnx", "int8"), ("torchscript", "int8")):
        out = tmp_path / f"{fmt}-{quantize}"
        proc = run_cli("framework.export", [str(decoding_transducer), "--format", fmt, "--out", str(out),
                                            *(["--quantize", quantize] if quantize else [])], cwd=tmp_path)
        if fmt == "onnx":  # the run's own lines: torch.onnx's, onnxscript's and the quantizer's (~200) are quieted
            assert len(proc.stderr.splitlines()) == 3, proc.stderr
        meta = json.loads((out / "artifact.json").read_text())
        parity = meta["parity"]
        sizes[(fmt, quantize)] = parity["bytes"]
        if quantize is None:
            assert parity["max_abs_diff"] <= 1e-4 and parity["exported_cer"] == parity["pytorch_cer"], (fmt, parity)
        else:
            assert abs(parity["exported_cer"] - parity["pytorch_cer"]) < 0.2, (fmt, parity)
    assert sizes[("onnx", "int8")] < sizes[("onnx", None)]


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_sigterm_mid_epoch_then_resume_is_bitwise_equal(transducer_cli, data_dir, tmp_path):
    args = ["tokenizer=bpe", "tokenizer.vocab_size=40", "trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1",
            "batching.max_batch_length=6"]
    _, straight = transducer_cli(*args, run_dir=tmp_path / "straight")
    steps_per_epoch = run_result(straight)["history"][0]["steps"]
    assert steps_per_epoch >= 8

    run_dir = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "framework.train", *TINY_TRANSDUCER, f"dataset.root={data_dir}/tones-tiny",
           f"hydra.run.dir={run_dir}", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "checkpoints" / f"ckpt-{steps_per_epoch + 3:09d}.pt", proc)  # 3 steps into epoch 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    state = newest_state(run_dir)
    done = state["progress"]
    assert done["epoch"] == 1 and done["batch_in_epoch"] == done["step"] - steps_per_epoch > 0  # mid-epoch

    transducer_cli(*args, "trainer.resume=auto", run_dir=run_dir)
    assert f"resumed from {run_dir / 'checkpoints'}" in (run_dir / "train.log").read_text()
    assert_trained_alike(straight, run_dir, ("train_loss", "valid_loss", "valid_cer", "valid_wer", "steps"))


@pytest.mark.slow
def test_torchrun_trains_the_ds2_transducer_in_lockstep_and_evaluates_sharded(tmp_path, data_dir):
    from tests.helpers import steps_per_epoch, torchrun

    ds2 = ["model=ds2_transducer", "model.encoder.hidden_size=32", "model.encoder.num_layers=1",
           "model.encoder.fc_size=32", "model.encoder.conv_channels=[4,4]"]
    common = [*(t for t in TINY_TRANSDUCER if not t.startswith("model.encoder.")), *ds2,
              "trainer.activation_checkpointing=[encoder.rnns]", f"dataset.root={data_dir}/tones-ddp",
              "dataset.prepare.splits={train:47,valid:13,test:17}", "trainer.device=cpu", "trainer.grad_accumulation=2",
              "batching.max_batch_length=12"]
    run_dir = tmp_path / "ddp"
    torchrun(["-m", "framework.train", *common, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    rank0 = steps_per_epoch((run_dir / "train.log").read_text())
    assert rank0 == steps_per_epoch((run_dir / "train-rank1.log").read_text()) and len(rank0) == 2 and rank0[0] > 0
    history = run_result(run_dir)["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]

    single = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    transcripts = (run_dir / "test_transcripts.tsv").read_text()
    sharded = json.loads(torchrun(["-m", "framework.evaluate", str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert (run_dir / "test_transcripts.tsv").read_text() == transcripts
    assert single == pytest.approx(sharded, abs=1e-5)
