"""Subword units (sentencepiece BPE / unigram): the tokenizer, `prepare tokenizer`, runs that
learn or load one and keep it, CTC losses and decoders (greedy, beam with lexicon and LM) in pieces."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from framework.errors import UserError
from framework.prepare.lm import read_sentences
from framework.text.decoders import BeamSearchDecoder, GreedyDecoder
from framework.text.subword import MISSING_SENTENCEPIECE, SentencePieceTokenizer
from framework.text.tokenizer import BLANK
from tests.conftest import ROOT, TINY, run_cli, run_result
from tests.helpers import ARPA, needs_flashlight

SPEECH = ROOT / "recipes" / "asr_ctc" / "speech" / "train.json"


@pytest.fixture(scope="module")
def speech_texts() -> list[str]:
    return [entry["words"] for entry in json.loads(SPEECH.read_text()).values()]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_tokenizer_round_trips_normalised_text_and_is_saved_and_loaded(tmp_path, speech_texts, model_type):
    tokenizer = SentencePieceTokenizer.train(speech_texts, model_type, 80)
    assert len(tokenizer) == 81 and tokenizer.symbols[0] == BLANK and tokenizer.model_type == model_type
    for text in [*speech_texts, "  About THESE\tnumber ", ""]:
        ids = tokenizer.encode(text)
        assert 0 not in ids and tokenizer.decode(ids) == " ".join(text.lower().split()) == tokenizer.normalize(text)
    words = {w for t in speech_texts for w in t.lower().split()}
    lengths = {len(tokenizer.spell(w)) for w in words}
    assert 1 in lengths and max(lengths) > 1  # whole words and words in several pieces
    assert all("".join(tokenizer.spell(w)).replace("\u2581", " ").strip() == w for w in words)

    tokenizer.save(tmp_path / "tokenizer.model")
    loaded = SentencePieceTokenizer.load(tmp_path / "tokenizer.model")
    assert loaded.symbols == tokenizer.symbols and all(loaded.encode(t) == tokenizer.encode(t) for t in speech_texts)

    # a character no piece covers: refused in training targets, left out in evaluation
    assert tokenizer.unknown("Café") == ["é"] and tokenizer.spell("café") is None
    with pytest.raises(ValueError, match="'é' in 'Café'"):
        tokenizer.encode("Café")
    assert tokenizer.decode(tokenizer.encode("Café au", drop_unknown=True)) == "caf au"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_a_vocabulary_size_the_text_cannot_give_names_the_option_and_the_size_that_works(speech_texts, model_type):
    with pytest.raises(UserError) as info:
        SentencePieceTokenizer.train(speech_texts, model_type, 100_000)
    largest = int(re.fullmatch(r"tokenizer.vocab_size=100000: too large for the training transcripts; the largest "
                               r"that works is (\d+)", str(info.value)).group(1))
    assert len(SentencePieceTokenizer.train(speech_texts, model_type, largest)) == largest + 1  # the size named works
    with pytest.raises(UserError, match=f"the largest that works is {largest}$"):
        SentencePieceTokenizer.train(speech_texts, model_type, largest + 1)

    with pytest.raises(UserError) as info:
        SentencePieceTokenizer.train(speech_texts, model_type, 5, option="--vocab-size")
    smallest = int(re.fullmatch(r"--vocab-size=5: too small for the characters of the training transcripts; the "
                                r"smallest that works is (\d+)", str(info.value)).group(1))
    assert len(SentencePieceTokenizer.train(speech_texts, model_type, smallest)) == smallest + 1
    with pytest.raises(UserError, match=f"the smallest that works is {smallest}$"):
        SentencePieceTokenizer.train(speech_texts, model_type, smallest - 1)


def test_ctc_loss_and_greedy_decoding_in_pieces_with_blanks_and_empty_transcripts(speech_texts):
    tokenizer = SentencePieceTokenizer.train(speech_texts, "bpe", 80)
    texts = ["about these number", "", "go go"]  # a repeated piece needs a blank between its two frames
    targets, lengths = tokenizer.encode_batch(texts)
    assert lengths.tolist()[1] == 0 and len(targets) == int(lengths.sum())
    frames = 2 * int(lengths.max()) + 1
    log_probs = torch.full((len(texts), frames, len(tokenizer)), -20.0)
    log_probs[:, :, 0] = 0.0  # blank everywhere but where a label is placed
    for b, ids in enumerate(targets.split(lengths.tolist())):
        for k, label in enumerate(ids.tolist()):
            log_probs[b, 2 * k + 1, 0], log_probs[b, 2 * k + 1, label] = -20.0, 0.0
    log_probs = log_probs.log_softmax(-1)
    out_lens = torch.full((len(texts),), frames)
    assert GreedyDecoder(tokenizer).decode(log_probs, out_lens) == texts

    loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lens, lengths, reduction="none", zero_infinity=True)
    assert torch.isfinite(loss).all()
    assert loss[1].item() == pytest.approx(-log_probs[1, :, 0].sum().item(), rel=1e-5)  # empty: all blank
    assert (loss < 1e-3).all()  # each path is the one the emissions spell


def cat_pieces(vocab_size: int) -> SentencePieceTokenizer:
    """BPE pieces of a few sentences (the more pieces, the more whole words)."""
    return SentencePieceTokenizer.train(["the cat sat", "the hat", "a cat ran", "the cot"] * 20, "bpe", vocab_size)


def pieces(tokenizer, frames: list[dict[str, float]]) -> torch.Tensor:
    """Log-probs [1, T, C] from per-frame {piece: probability} ('_' is the blank); the rest share 1e-4."""
    probs = torch.full((1, len(frames), len(tokenizer)), 1e-4)
    for t, frame in enumerate(frames):
        for piece, p in frame.items():
            probs[0, t, 0 if piece == "_" else tokenizer.symbols.index(piece)] = p
    return (probs / probs.sum(-1, keepdim=True)).log()


@needs_flashlight
@pytest.mark.parametrize("lexicon", [None, "words"], ids=["lexicon-free", "lexicon"])
def test_a_word_lm_fixes_what_greedy_gets_wrong_in_pieces(tmp_path, lexicon):
    """'the ?at': the acoustics lean to the piece of 'hat' (0.6) over 'cat' (0.4); the
    hand-written bigram knows 'the cat'."""
    tokenizer = cat_pieces(26)
    assert [tokenizer.spell(w) for w in ("the", "cat", "hat", "sat")] == [["\u2581the"], ["\u2581cat"],
                                                                            ["\u2581hat"], ["\u2581s", "at"]]
    (tmp_path / "hand.arpa").write_text(ARPA)
    log_probs = pieces(tokenizer, [{"\u2581the": 1}, {"_": 1}, {"\u2581hat": 0.6, "\u2581cat": 0.4}, {"_": 1}])
    length = torch.tensor([log_probs.shape[1]])
    assert GreedyDecoder(tokenizer).decode(log_probs, length) == ["the hat"]
    words = ["the", "cat", "hat", "sat"] if lexicon else None
    assert BeamSearchDecoder(tokenizer, lexicon=words).decode(log_probs, length) == ["the hat"]
    with_lm = BeamSearchDecoder(tokenizer, lexicon=words, lm=tmp_path / "hand.arpa", lm_weight=2.0)
    assert with_lm.decode(log_probs, length) == ["the cat"]


@needs_flashlight
def test_a_lexicon_is_spelled_in_pieces_and_keeps_hypotheses_to_its_words():
    tokenizer = cat_pieces(22)
    assert tokenizer.spell("cat") == ["\u2581cat"] and tokenizer.spell("cot") == ["\u2581c", "ot"]
    # greedy spells the non-word 'cot': its first piece (0.5) beats the piece of 'cat' (0.45)
    frames = [{"\u2581the": 1}, {"_": 1}, {"\u2581c": 0.5, "\u2581cat": 0.45}, {"ot": 0.9, "_": 0.1}]
    log_probs = pieces(tokenizer, frames)
    length = torch.tensor([log_probs.shape[1]])
    assert GreedyDecoder(tokenizer).decode(log_probs, length) == ["the cot"]
    decoder = BeamSearchDecoder(tokenizer, lexicon=["the", "cat", "zebra!"])  # '!' cannot be spelled
    assert decoder.lexicon_words == ["cat", "the"]
    assert decoder.decode(log_probs, length) == ["the cat"]


# ----------------------------------------------------------------------- commands and runs
@pytest.fixture()
def tones(data_dir):
    """The tiny tone corpus the train_cli fixture trains on (made here if no run made it yet)."""
    from framework.data.synthetic import prepare_tone_corpus

    return prepare_tone_corpus(data_dir / "tones-tiny", splits={"train": 48, "valid": 16, "test": 16})


def one_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_prepared_tokenizer_trains_evaluates_and_decodes_a_run_in_pieces(train_cli, tones, tmp_path):
    pytest.importorskip("flashlight.lib.text", reason="beam search needs flashlight-text (pip install '.[lm]')")
    train_json, model = tones / "train.json", tmp_path / "tones.model"
    proc = run_cli("framework.prepare", ["tokenizer", str(train_json), str(model), "--vocab-size", "99999"],
                   cwd=tmp_path, check=False)
    assert re.fullmatch(r"error: --vocab-size=99999: too large for the training transcripts; the largest that works "
                        r"is \d+", one_line(proc)) and not model.exists()
    run_cli("framework.prepare", ["tokenizer", str(train_json), str(model), "--vocab-size", "40"], cwd=tmp_path)
    texts = [" ".join(words) for words in read_sentences(train_json)]
    assert model.read_bytes() == SentencePieceTokenizer.train(texts, "bpe", 40).model_proto  # as a run would make it

    subword = ["tokenizer=bpe", "tokenizer.vocab_size=40", f"tokenizer.path={model}"]
    _, run_dir = train_cli(*subword, "trainer.max_epochs=1")
    assert (run_dir / "tokenizer.model").read_bytes() == model.read_bytes() and not (run_dir / "tokenizer.json").exists()
    metrics = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert metrics == pytest.approx({k: v for k, v in run_result(run_dir)["metrics"].items() if k.startswith("test_")})
    _, *rows = [line.split("\t") for line in (run_dir / "test_transcripts.tsv").read_text().splitlines()]
    manifest = json.loads((tones / "test.json").read_text())
    assert all(r[3] == " ".join(manifest[r[0]]["words"].lower().split()) for r in rows)  # scored on normalised text

    # beam search over the training words, spelled in pieces, with a word LM of the transcripts
    run_cli("framework.prepare", ["lm", str(train_json), str(tmp_path / "lm.arpa"), "--order", "2"], cwd=tmp_path)
    beam = ["decoder=beam", f"decoder.lm={tmp_path / 'lm.arpa'}", "decoder.lexicon=train", "decoder.beam_size=8",
            "decoder.word_score=2"]
    wavs = [str(w) for w in sorted((tones / "test").glob("*.wav"))[:4]]
    out = run_cli("framework.transcribe", [str(run_dir), *wavs, *beam], cwd=tmp_path).stdout
    lines = [line.split("\t") for line in out.rstrip("\n").split("\n")]
    lexicon = set((run_dir / "lexicon.txt").read_text().split())
    assert [path for path, _ in lines] == wavs
    assert any(text for _, text in lines) and all(set(text.split()) <= lexicon for _, text in lines)

    # a resumed run keeps the units it started with
    for other, kept in ((["tokenizer=char"], "tokenizer.model"), (["tokenizer=bpe", "tokenizer.vocab_size=30"], None)):
        proc, _ = train_cli(*other, "trainer.resume=auto", run_dir=run_dir, check=False)
        line = one_line(proc)
        if kept:
            assert line == (f"error: {run_dir / kept} holds the tokenizer this run started with; resume with the same "
                            "tokenizer option or start a new run")
        else:
            assert line == ("error: tokenizer=bpe tokenizer.vocab_size=30: this run started with tokenizer=bpe "
                            f"tokenizer.vocab_size=40 ({run_dir / 'tokenizer.model'}); resume with those or start a "
                            "new run")


def test_a_run_learns_its_pieces_from_the_training_transcripts(train_cli, tones, tmp_path):
    _, run_dir = train_cli("tokenizer=unigram", "tokenizer.vocab_size=40", "trainer.max_epochs=1",
                           "trainer.limit_batches=2")
    texts = [e["words"] for e in json.loads((tones / "train.json").read_text()).values()]
    learnt = SentencePieceTokenizer.load(run_dir / "tokenizer.model")
    assert learnt.model_proto == SentencePieceTokenizer.train(texts, "unigram", 40).model_proto
    assert not (run_dir / "tokenizer.json").exists()
    # evaluation decodes with the run's pieces: the numbers training reported with them
    metrics = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert metrics == pytest.approx({k: v for k, v in run_result(run_dir)["metrics"].items() if k.startswith("test_")})
    # a prepared model (here the run's) is used only under the type and size the config names
    proc, _ = train_cli("tokenizer=bpe", "tokenizer.vocab_size=40", f"tokenizer.path={run_dir / 'tokenizer.model'}",
                        run_dir=tmp_path / "other", check=False)
    assert one_line(proc) == (f"error: tokenizer.path={run_dir / 'tokenizer.model'} holds 40 unigram pieces; use it "
                              "with tokenizer=unigram tokenizer.vocab_size=40")
    proc, _ = train_cli("tokenizer=bpe", "tokenizer.vocab_size=100000", run_dir=tmp_path / "big", check=False)
    assert re.fullmatch(r"error: tokenizer.vocab_size=100000: too large for the training transcripts; the largest "
                        r"that works is \d+", one_line(proc))
    assert not list((tmp_path / "big").glob("tokenizer.*"))


def test_missing_sentencepiece_is_one_line_naming_the_extra(tmp_path, data_dir):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sentencepiece.py").write_text("raise ImportError('No module named sentencepiece')\n")
    env = {"PYTHONPATH": f"{shadow}:{ROOT}"}
    proc = run_cli("framework.prepare", ["tokenizer", str(SPEECH), str(tmp_path / "x.model")], cwd=tmp_path, env=env,
                   check=False)
    assert one_line(proc) == f"error: {MISSING_SENTENCEPIECE}"
    proc = run_cli("framework.train", [*TINY, f"dataset.root={data_dir}/tones-tiny", "tokenizer=bpe",
                                       f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, check=False)
    assert one_line(proc) == f"error: {MISSING_SENTENCEPIECE}"
    assert "pip install 'framework[subword]'" in MISSING_SENTENCEPIECE and "tokenizer=char" in MISSING_SENTENCEPIECE


def test_a_run_from_before_tokenizers_were_chosen_still_evaluates_in_characters(one_epoch_run, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    run_dir = tmp_path / "old"
    shutil.copytree(one_epoch_run, run_dir)
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.tokenizer._target_ == "framework.text.units.CharUnits"
    del config["tokenizer"]  # as runs wrote it before the tokenizer group
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    metrics = json.loads(run_cli("framework.evaluate", [str(run_dir)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert metrics == pytest.approx({k: v for k, v in run_result(run_dir)["metrics"].items() if k.startswith("test_")})


def test_a_run_in_pieces_exports_and_its_artifact_spells_what_the_run_transcribes(train_cli, tones, tmp_path):
    """The artifact's tokenizer.json holds what each piece spells (a leading space for a
    piece that starts a word), which inference.py decodes with; the framework decodes an
    artifact with the run's sentencepiece model, kept beside it."""
    import subprocess
    import sys

    from tests.test_export import isolated_env

    _, run_dir = train_cli("tokenizer=bpe", "tokenizer.vocab_size=30", "trainer.max_epochs=2")
    out = tmp_path / "export"
    run_cli("framework.export", [str(run_dir), "--format", "torchscript", "--out", str(out)], cwd=tmp_path)
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["subword_model"] == "tokenizer.model"
    assert (out / "tokenizer.model").read_bytes() == (run_dir / "tokenizer.model").read_bytes()
    spelt = json.loads((out / "tokenizer.json").read_text())["symbols"]
    pieces = SentencePieceTokenizer.load(run_dir / "tokenizer.model")
    assert spelt == pieces.surface[1:] and any(s.startswith(" ") for s in spelt) and not any("\u2581" in s for s in spelt)
    wavs = [str(w) for w in sorted((tones / "test").glob("*.wav"))[:6]]
    isolated = subprocess.run([sys.executable, "-I", str(out / "inference.py"), *wavs], cwd=tmp_path,
                              env=isolated_env(), capture_output=True, text=True, timeout=300)
    assert isolated.returncode == 0, isolated.stderr
    from_run = run_cli("framework.transcribe", [str(run_dir), *wavs], cwd=tmp_path).stdout
    assert isolated.stdout == from_run == run_cli("framework.transcribe", [str(out), *wavs], cwd=tmp_path).stdout
    assert any(line.split("\t")[1] for line in from_run.splitlines())
