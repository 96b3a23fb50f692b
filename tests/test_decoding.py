"""CTC decoders (greedy, beam search with lexicon and word LM), the n-gram estimator, `prepare lm`."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from framework import CONF_DIR
from framework.prepare.__main__ import main as prepare_main
from framework.prepare.lm import read_sentences
from framework.text import CharTokenizer, ErrorRate
from framework.text.decoders import MISSING_FLASHLIGHT, BeamSearchDecoder, GreedyDecoder, training_words
from framework.text.ngram import BOS, EOS, UNK, discounts, estimate, read_arpa, write_arpa
from tests.conftest import ROOT, run_cli
from tests.helpers import ARPA, needs_flashlight

TEXTS = ["the cat sat", "the hat", "a cat ran", "the cot"]
TOKENIZER = CharTokenizer.from_texts(TEXTS)



def emissions(frames: list[dict[str, float]], tokenizer: CharTokenizer = TOKENIZER) -> torch.Tensor:
    """Log-probs [1, T, C] from per-frame {character: probability} ('_' is the blank); the rest share 1e-4."""
    probs = torch.full((1, len(frames), len(tokenizer)), 1e-4)
    for t, frame in enumerate(frames):
        for char, p in frame.items():
            probs[0, t, 0 if char == "_" else tokenizer.index[char]] = p
    return (probs / probs.sum(-1, keepdim=True)).log()


def spell(text: str, tokenizer: CharTokenizer = TOKENIZER, peak: float = 0.9, seed: int = 0) -> torch.Tensor:
    """A CTC path for ``text`` (random repeats and blanks), each frame peaked at its label."""
    g = torch.Generator().manual_seed(seed)
    path = [0]
    for i, c in enumerate(text):
        if i and c == text[i - 1]:
            path.append(0)  # a blank between repeated characters
        path += [tokenizer.index[c]] * int(torch.randint(1, 3, (1,), generator=g))
        path += [0] * int(torch.randint(0, 2, (1,), generator=g))
    rest = (1 - peak) / (len(tokenizer) - 1)
    probs = torch.full((1, len(path), len(tokenizer)), rest)
    probs[0, torch.arange(len(path)), torch.tensor(path)] = peak
    return probs.log()


def single(log_probs: torch.Tensor) -> torch.Tensor:
    return torch.tensor([log_probs.shape[1]])


# "the ?at": the acoustics lean to "hat" (0.6) over "cat" (0.4).
THE_HAT_OR_CAT = [{"t": 1}, {"h": 1}, {"e": 1}, {" ": 1}, {"h": 0.6, "c": 0.4}, {"a": 1}, {"t": 1}]
# "the c?t": the acoustics spell the non-word... well, "cot" (0.55) over "cat" (0.45).
THE_COT_OR_CAT = [{"t": 1}, {"h": 1}, {"e": 1}, {" ": 1}, {"c": 1}, {"o": 0.55, "a": 0.45}, {"t": 1}]


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "hand.arpa"
    path.write_text(ARPA)
    return path


@needs_flashlight
@pytest.mark.parametrize("lexicon", [None, "words"], ids=["lexicon-free", "lexicon"])
def test_word_lm_corrects_what_greedy_gets_wrong(arpa, lexicon):
    log_probs = emissions(THE_HAT_OR_CAT)
    assert GreedyDecoder(TOKENIZER).decode(log_probs, single(log_probs)) == ["the hat"]
    words = ["the", "cat", "hat", "sat"] if lexicon else None
    assert BeamSearchDecoder(TOKENIZER, lexicon=words).decode(log_probs, single(log_probs)) == ["the hat"]
    with_lm = BeamSearchDecoder(TOKENIZER, lexicon=words, lm=arpa, lm_weight=2.0)
    assert with_lm.decode(log_probs, single(log_probs)) == ["the cat"]


@needs_flashlight
def test_lexicon_of_training_words_rules_out_non_words(tmp_path):
    log_probs = emissions(THE_COT_OR_CAT)
    assert GreedyDecoder(TOKENIZER).decode(log_probs, single(log_probs)) == ["the cot"]
    assert BeamSearchDecoder(TOKENIZER).decode(log_probs, single(log_probs)) == ["the cot"]
    words = training_words(["The cat sat", "the hat"])
    assert words == ["cat", "hat", "sat", "the"]
    assert BeamSearchDecoder(TOKENIZER, lexicon=words).decode(log_probs, single(log_probs)) == ["the cat"]
    (tmp_path / "words.txt").write_text("the\ncat\tc a t |\nzebra\n")  # first field of each line; 'z' unspellable
    from_file = BeamSearchDecoder(TOKENIZER, lexicon=tmp_path / "words.txt")
    assert from_file.lexicon_words == ["cat", "the"]
    assert from_file.decode(log_probs, single(log_probs)) == ["the cat"]


@needs_flashlight
@pytest.mark.parametrize("texts", [TEXTS, ["cat", "hat", "tact"]], ids=["with-space", "no-space-in-alphabet"])
def test_beam_search_without_lm_equals_greedy(texts):
    tokenizer = CharTokenizer.from_texts(texts)
    paths = [spell(t, tokenizer, seed=i) for i, t in enumerate(texts)]
    lengths = torch.tensor([p.shape[1] for p in paths])
    batch = torch.full((len(paths), int(lengths.max()) + 3, len(tokenizer)), -1.0)  # padding past each length
    for i, p in enumerate(paths):
        batch[i, : p.shape[1]] = p[0]
    greedy = GreedyDecoder(tokenizer).decode(batch, lengths)
    assert greedy == texts
    beam = BeamSearchDecoder(tokenizer, beam_size=8)
    assert beam.decode(batch, lengths) == greedy
    assert beam.decode(batch.to(torch.bfloat16), lengths) == greedy  # any float dtype


def test_missing_flashlight_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchaudio.models.decoder", None)  # what a missing flashlight-text looks like
    with pytest.raises(ImportError) as info:
        BeamSearchDecoder(TOKENIZER)
    message = str(info.value)
    assert message == MISSING_FLASHLIGHT and "\n" not in message
    assert "pip install 'framework[lm]'" in message and "pip install flashlight-text" in message
    assert "decoder=greedy" in message


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_decoder_configs_instantiate_with_the_tokenizer(name, arpa):
    if name == "beam" and importlib.util.find_spec("flashlight") is None:
        pytest.skip("beam search needs flashlight-text")
    with initialize_config_dir(config_dir=str(CONF_DIR / "decoder"), version_base=None):
        cfg = compose(config_name=name)
    decoder = instantiate(cfg, tokenizer=TOKENIZER)
    log_probs = spell("the cat sat")
    assert decoder.decode(log_probs, single(log_probs)) == ["the cat sat"]
    if name == "beam":
        with pytest.raises(ValueError, match="training_words"):
            BeamSearchDecoder(TOKENIZER, lexicon="train")  # the recipe fills the words in
        with pytest.raises(FileNotFoundError, match="framework.prepare lm"):
            BeamSearchDecoder(TOKENIZER, lm="missing.arpa")


# The estimator -------------------------------------------------------------------------------------


def test_kneser_ney_by_hand():
    """Corpus 'a b' / 'b', bigram. Continuation counts: a 1 (after <s>), b 2 (after a, <s>), </s> 1.
    Too few counts to estimate discounts: the fallback D1=0.5, D2=1. Unigrams: total 4, discounted
    0.5+1+0.5 = 2, so gamma = 0.5, spread over {a, b, </s>, <unk>}: p(a) = 0.5/4 + 0.5/4 = 0.25,
    p(b) = 1/4 + 0.125, p(</s>) = 0.25, p(<unk>) = 0.125. After <s> (a 1, b 1): gamma = 0.5,
    p(a|<s>) = 0.5/2 + 0.5*0.25, p(b|<s>) = 0.5/2 + 0.5*0.375; p(</s>|b) = (2-1)/2 + 0.5*0.25."""
    model = estimate([["a", "b"], ["b"]], order=2)
    p = {g: 10 ** lp for g, lp in model.logprob.items()}
    assert p[(BOS,)] == pytest.approx(0)
    assert {g: v for g, v in p.items() if len(g) == 1 and g != (BOS,)} == pytest.approx(
        {("a",): 0.25, ("b",): 0.375, (EOS,): 0.25, (UNK,): 0.125})
    assert {g: v for g, v in p.items() if len(g) == 2} == pytest.approx(
        {(BOS, "a"): 0.375, (BOS, "b"): 0.4375, ("a", "b"): 0.6875, ("b", EOS): 0.625})
    assert {g: 10 ** bo for g, bo in model.backoff.items()} == pytest.approx({(BOS,): 0.5, ("a",): 0.5, ("b",): 0.5})
    assert 10 ** model.log10_prob(EOS, [BOS]) == pytest.approx(0.5 * 0.25)  # unseen bigram: backoff x unigram


def test_discounts_from_counts_of_counts():
    # n1=10, n2=4, n3=2, n4=1: Y = 10/18; D1 = 1 - 2Y(4/10), D2 = 2 - 3Y(2/4), D3+ = 3 - 4Y(1/2)
    y = 10 / 18
    assert discounts([1] * 10 + [2] * 4 + [3] * 2 + [4, 7]) == pytest.approx((1 - 0.8 * y, 2 - 1.5 * y, 3 - 2 * y))
    assert discounts([1, 1, 2, 3]) == (0.5, 1.0, 1.5)  # no 4s: the fallback


@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_context_distribution_sums_to_one(order, tmp_path):
    sentences = [t.split() for t in json_texts(ROOT / "recipes/asr_ctc/speech/train.json")]
    write_arpa(estimate(sentences, order), tmp_path / "lm.arpa")
    model = read_arpa(tmp_path / "lm.arpa")  # what the file says, rounding included
    assert model.order == order
    vocab = [w for w in model.vocabulary if w != BOS]
    assert {UNK, EOS} <= set(vocab) and len(vocab) == len({w for s in sentences for w in s}) + 2
    contexts = [()] + [g for g in model.logprob if len(g) < order and g[-1] != EOS]
    assert len(contexts) == 1 if order == 1 else len(contexts) > 80
    for h in contexts:
        assert sum(10 ** model.log10_prob(w, h) for w in vocab) == pytest.approx(1, abs=1e-5), h


def test_unseen_words_score_as_unk():
    model = estimate([["the", "cat"], ["the", "hat"]], order=3)
    assert model.log10_prob("zebra", ["the"]) == model.log10_prob(UNK, ["the"]) < model.log10_prob("cat", ["the"])
    assert model.log10_prob("cat", ["zebra", "the"]) == model.log10_prob("cat", [UNK, "the"])
    assert model.perplexity([["the", "cat"]]) < model.perplexity([["the", "zebra"]])


@needs_flashlight
@pytest.mark.parametrize("order", [1, 3])
def test_arpa_scores_match_kenlm(tmp_path, order):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    model = estimate([t.split() for t in json_texts(ROOT / "recipes/asr_ctc/speech/train.json")], order=order)
    write_arpa(model, tmp_path / "lm.arpa")  # order 1 with an empty 2-gram section: KenLM loads bigrams and up
    words = Dictionary(model.vocabulary)
    kenlm = KenLM(str(tmp_path / "lm.arpa"), words)
    for sentence in (["about", "these", "number"], ["go"], ["there", "zebra", "go"]):
        state, total = kenlm.start(False), 0.0
        for w in sentence:
            state, score = kenlm.score(state, words.get_index(w) if words.contains(w) else words.get_index(UNK))
            total += score
        total += kenlm.finish(state)[1]
        assert total == pytest.approx(model.sentence_log10(sentence), abs=1e-4)


def json_texts(path) -> list[str]:
    return [row["words"] for row in json.loads(path.read_text()).values()]


# python -m framework.prepare lm --------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_lm(tmp_path_factory):
    """`prepare lm` run on a JSONL manifest, as a user would."""
    tmp = tmp_path_factory.mktemp("prepare_lm")
    texts = ["the cat sat"] * 4 + ["The cat"] * 4 + ["the hat", "a cat ran", "the cot"]
    rows = [{"id": f"u{i}", "audio_filepath": f"{i}.wav", "duration": 1.0, "text": t} for i, t in enumerate(texts)]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("framework.prepare", ["lm", "train.jsonl", "lm.arpa", "--order", "3"], cwd=tmp)
    return tmp, proc


def test_prepare_lm_writes_an_arpa_file(built_lm):
    tmp, proc = built_lm
    assert "3-gram of 11 sentences" in proc.stdout
    model = read_arpa(tmp / "lm.arpa")
    assert model.order == 3
    assert set(model.vocabulary) == {BOS, EOS, UNK, "the", "cat", "sat", "hat", "a", "ran", "cot"}
    assert ("the", "cat", "sat") in model.logprob
    assert [p.name for p in tmp.iterdir() if p.name.endswith(".tmp")] == []


@needs_flashlight
def test_prepare_lm_output_drives_the_decoder(built_lm):
    tmp, _ = built_lm
    log_probs = emissions(THE_HAT_OR_CAT)
    assert BeamSearchDecoder(TOKENIZER).decode(log_probs, single(log_probs)) == ["the hat"]
    decoder = BeamSearchDecoder(TOKENIZER, lm=tmp / "lm.arpa")  # 'the cat' 8 times, 'the hat' once
    assert decoder.decode(log_probs, single(log_probs)) == ["the cat"]


def test_transcripts_from_a_text_file(tmp_path):
    (tmp_path / "corpus.txt").write_text("The cat sat\n\n  a cat  \n")
    assert read_sentences(tmp_path / "corpus.txt") == [["the", "cat", "sat"], ["a", "cat"]]


def test_prepare_lm_missing_file_is_exit_2_and_one_line(tmp_path):
    proc = run_cli("framework.prepare", ["lm", "train.json", "lm.arpa"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.json: transcripts file not found"


@pytest.mark.parametrize("content", ["{not json", '{"u1": {"wav": "a.wav"}}', "",
                                     '{"u1": {"text": "a cat"}, "u2": {"words": "the hat"}}',
                                     '{"u1": {"text": "a cat"}, "u2": {"text": null}}'],
                         ids=["bad-json", "no-transcript", "empty", "two-transcript-keys", "null-transcript"])
def test_prepare_lm_bad_input_is_exit_2_and_one_line(tmp_path, capsys, content):
    (tmp_path / "train.json").write_text(content)
    with pytest.raises(SystemExit) as exit_:
        prepare_main(["lm", str(tmp_path / "train.json"), str(tmp_path / "lm.arpa")])
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith(f"error: {tmp_path / 'train.json'}: "), message
    assert list(tmp_path.iterdir()) == [tmp_path / "train.json"]


def test_error_rates_count_edits_over_reference_length_and_return_each_pairs_edits():
    cer, wer = ErrorRate("char"), ErrorRate("word")
    refs, hyps = ["see", "for she what"], ["she", "for she we out"]
    assert cer.update(refs, hyps) == [1, 4] and (cer.edits, cer.total) == (5, 15)
    assert wer.update(refs, hyps) == [1, 2] and wer.value == pytest.approx(3 / 4)
