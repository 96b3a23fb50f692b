"""The shipped sentence corpus (recipes/asr_ctc/sentences/): complete, readable, and built as documented."""

from __future__ import annotations

import json
import re

import pytest
import soundfile

from tests.conftest import ROOT, run_cli

CORPUS = ROOT / "recipes" / "asr_ctc" / "sentences"
SPEECH = ROOT / "recipes" / "asr_ctc" / "speech"
SPLITS = {"train": 2800, "valid": 300, "test": 300}


def manifest(split: str, corpus=CORPUS) -> dict[str, dict]:
    return json.loads((corpus / f"{split}.json").read_text())


def words(split: str) -> list[list[str]]:
    return [entry["words"].split() for entry in manifest(split).values()]


@pytest.mark.parametrize("split", SPLITS)
def test_every_file_exists_with_the_declared_number_of_samples(split):
    from framework.data.manifest import ManifestDataset

    dataset = ManifestDataset(CORPUS / f"{split}.json", data_root=str(CORPUS))
    assert len(dataset) == SPLITS[split]
    for entry in dataset.entries:  # the header holds the length: every file
        info = soundfile.info(entry.path)
        assert (info.samplerate, info.channels) == (16000, 1), entry.path
        assert abs(info.frames - entry.duration * 16000) < 1, (entry.path, info.frames, entry.duration)
    for index in range(0, len(dataset), 50):  # decoding is slower: every 50th file
        example = dataset[index]
        assert len(example["inputs"]) == round(dataset.entries[index].duration * 16000)
        assert 0.01 < example["inputs"].abs().max() <= 1.0 and example["text"] == dataset.entries[index].text


def test_utterances_are_4_to_15_lowercase_words_and_no_sentence_is_in_two_splits():
    sentences = {split: [" ".join(w) for w in words(split)] for split in SPLITS}
    for split, texts in sentences.items():
        assert all(4 <= len(t.split()) <= 15 and re.fullmatch(r"[a-z]+( [a-z]+)*", t) for t in texts), split
        assert len(set(texts)) == len(texts), f"{split} repeats a sentence"
    assert not set(sentences["train"]) & set(sentences["valid"])
    assert not set(sentences["train"]) & set(sentences["test"])
    assert not set(sentences["valid"]) & set(sentences["test"])


def test_the_vocabulary_is_large_and_test_has_a_few_percent_unseen_words():
    train_vocabulary = {w for sentence in words("train") for w in sentence}
    vocabulary = train_vocabulary | {w for split in ("valid", "test") for sentence in words(split) for w in sentence}
    assert len(vocabulary) >= 1000
    for split in ("valid", "test"):
        tokens = [w for sentence in words(split) for w in sentence]
        unseen = [w for w in tokens if w not in train_vocabulary]
        assert 0.01 < len(unseen) / len(tokens) < 0.08, (split, len(unseen) / len(tokens))
        assert len(set(unseen)) >= 20, split  # many words, not one frequent word
        assert set("".join(tokens)) <= set("".join(train_vocabulary)), f"{split} has letters training lacks"


def test_speakers_differ_from_the_speech_corpus():
    def voices(corpus):
        return {entry["voice"] for split in SPLITS for entry in manifest(split, corpus).values()}

    sentences, speech = voices(CORPUS), voices(SPEECH)
    assert not sentences & speech
    variants = {v.split("+")[1] for v in sentences}
    assert len(variants) >= 8 and not variants & {v.split("+")[1] for v in speech}
    assert len({v.split("+")[0] for v in sentences}) >= 3
    for split in SPLITS:
        assert len({entry["voice"] for entry in manifest(split).values()}) >= 20, split


def test_a_trigram_of_the_training_transcripts_predicts_test_sentences_far_better_than_word_frequencies(tmp_path):
    from framework.text.ngram import read_arpa

    run_cli("framework.prepare", ["lm", str(CORPUS / "train.json"), "lm.arpa", "--order", "3"], cwd=tmp_path)
    test = words("test")
    trigram = read_arpa(tmp_path / "lm.arpa").perplexity(test)
    unigram = read_arpa(tmp_path / "lm.arpa", max_order=1).perplexity(test)
    assert trigram < 0.3 * unigram, (trigram, unigram)


def test_the_dataset_option_composes_and_points_at_the_corpus():
    from framework.config import check_command_line, compose_command_line

    check_command_line(["dataset=sentences"])
    config = compose_command_line(["dataset=sentences"])
    assert config.dataset.train.path == str(CORPUS / "train.json")
    assert config.dataset.test.data_root == str(CORPUS)
