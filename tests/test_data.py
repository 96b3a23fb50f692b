"""Manifests, audio reading, HDF5 datasets, preparation commands and bad input."""

from __future__ import annotations

import csv
import io
import json
import logging

import h5py
import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from framework.data.audio import AudioError, pcm_wav, read_audio
from framework.data.batching import FixedBatchSampler
from framework.data.collate import collate
from framework.data.hdf5 import HDF5Dataset, HDF5FormatError, HDF5Writer, combine_shards
from framework.data.manifest import ManifestDataset, ManifestError
from tests.conftest import run_cli

SR = 16000


def tone(seconds, rate=SR, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, -x], axis=1) if channels == 2 else x


@pytest.fixture()
def corpus(tmp_path):
    """Three utterances in WAV, FLAC and OGG, plus manifests in the three formats."""
    audio = tmp_path / "audio"
    audio.mkdir()
    specs = [("a", "wav", 0.5, "one"), ("b", "flac", 1.0, "two words"), ("c", "ogg", 0.75, "three")]
    for uid, ext, seconds, _ in specs:
        soundfile.write(audio / f"{uid}.{ext}", tone(seconds), SR)
    rows = {uid: {"wav": f"{{data_root}}/{uid}.{ext}", "duration": s, "words": w} for uid, ext, s, w in specs}
    (tmp_path / "m.json").write_text(json.dumps(rows))
    with open(tmp_path / "m.jsonl", "w") as f:
        for uid, ext, s, w in specs:
            f.write(json.dumps({"id": uid, "audio_filepath": f"$data_root/{uid}.{ext}", "duration": s, "text": w}) + "\n")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "file_path", "length", "wrd"])
        for uid, ext, s, words in specs:
            w.writerow([uid, f"{{data_root}}/{uid}.{ext}", int(s * SR), words])
    return tmp_path


# --------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("name", ["m.json", "m.jsonl", "m.csv"])
def test_manifest_formats_give_the_same_examples(corpus, name):
    ds = ManifestDataset(corpus / name, data_root=str(corpus / "audio"))
    assert ds.lengths.tolist() == [0.5, 1.0, 0.75]
    assert ds.texts == ["one", "two words", "three"]
    for i, seconds in enumerate([0.5, 1.0, 0.75]):
        ex = ds[i]
        assert ex["inputs"].shape == (int(seconds * SR),)
        assert ex["inputs"].abs().max() == pytest.approx(0.3, abs=0.02)


def test_manifest_keys_filters_and_subset(corpus):
    rows = {"x": {"audio": "{root}/a.wav", "secs": 0.5, "label": "A"},
            "y": {"audio": "{root}/b.flac", "secs": 1.0, "label": "B"}}
    (corpus / "k.json").write_text(json.dumps(rows))
    ds = ManifestDataset(corpus / "k.json", replacements={"root": str(corpus / "audio")}, audio_key="audio",
                         duration_key="secs", text_key="label")
    assert ds.texts == ["A", "B"]
    assert len(ManifestDataset(corpus / "m.json", data_root=str(corpus / "audio"), max_duration=0.8)) == 2
    assert len(ManifestDataset(corpus / "m.json", data_root=str(corpus / "audio"), min_duration=0.8)) == 1
    assert len(ManifestDataset(corpus / "m.json", data_root=str(corpus / "audio"), select_n=2)) == 2


def test_lengths_come_from_the_manifest_not_the_audio(corpus, monkeypatch):
    import framework.data.manifest as manifest

    monkeypatch.setattr(manifest, "read_audio", lambda *a, **k: pytest.fail("audio decoded to learn a length"))
    assert ManifestDataset(corpus / "m.csv", data_root=str(corpus / "audio")).lengths.tolist() == [0.5, 1.0, 0.75]


# ------------------------------------------------------------------------------- audio
def test_segments_resampling_and_mixdown(tmp_path):
    soundfile.write(tmp_path / "st.wav", tone(1.0, rate=8000, channels=2), 8000)
    seg = read_audio(tmp_path / "st.wav", 16000, start=0.25, stop=0.75)
    assert seg.shape == (8000,)  # 0.5 s at 16 kHz after resampling from 8 kHz
    assert seg.abs().max() < 1e-4  # the two channels cancel when mixed to mono
    both = read_audio(tmp_path / "st.wav", 8000, mono=False)
    assert both.shape == (2, 8000)


# --------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_file_and_entry(corpus):
    audio = corpus / "audio"
    (audio / "trunc.wav").write_bytes((audio / "a.wav").read_bytes()[:30])
    (audio / "empty.wav").write_bytes(b"")
    soundfile.write(audio / "silent.wav", np.zeros(0, np.float32), SR)
    soundfile.write(audio / "rate8k.wav", tone(0.5, rate=8000), 8000)
    rows = {"missing": {"wav": "{data_root}/nope.wav", "duration": 1.0},
            "trunc": {"wav": "{data_root}/trunc.wav", "duration": 1.0},
            "empty": {"wav": "{data_root}/empty.wav", "duration": 1.0},
            "silent": {"wav": "{data_root}/silent.wav", "duration": 1.0},
            "rate": {"wav": "{data_root}/rate8k.wav", "duration": 0.5}}
    (corpus / "bad.json").write_text(json.dumps(rows))
    ds = ManifestDataset(corpus / "bad.json", data_root=str(audio), resample=False)
    expected = {
        "missing": "entry 'missing': .*nope.wav: audio file not found",
        "trunc": "entry 'trunc': .*trunc.wav: cannot read audio .*replace it, or pass dataset.train.skip_bad=true",
        "empty": "entry 'empty': .*empty.wav: cannot read audio",
        "silent": "entry 'silent': .*silent.wav: no audio samples",
        "rate": "entry 'rate': .*rate8k.wav: sample rate 8000 Hz, expected 16000 Hz; set resample=true",
    }
    for i, pattern in enumerate(expected.values()):
        with pytest.raises(AudioError, match=pattern):
            ds[i]


def test_manifest_rows_missing_keys_are_named(corpus):
    (corpus / "nolen.json").write_text(json.dumps({"u1": {"wav": "a.wav"}}))
    with pytest.raises(ManifestError, match="nolen.json: entry 'u1' has no length: add a duration"):
        ManifestDataset(corpus / "nolen.json")
    (corpus / "nopath.jsonl").write_text(json.dumps({"id": "u2", "duration": 1.0}) + "\n")
    with pytest.raises(ManifestError, match="entry 'u2' has no audio path"):
        ManifestDataset(corpus / "nopath.jsonl")
    (corpus / "noid.csv").write_text("file_path,duration\na.wav,1.0\n")
    with pytest.raises(ManifestError, match="noid.csv: a CSV manifest needs an ID column"):
        ManifestDataset(corpus / "noid.csv")
    with pytest.raises(ManifestError, match="placeholder 'data_root' .* has no value"):
        ManifestDataset(corpus / "m.json")
    (corpus / "broken.json").write_text("{not json")
    with pytest.raises(ManifestError, match="broken.json: invalid JSON at line 1"):
        ManifestDataset(corpus / "broken.json")


def test_other_manifest_fields_reach_the_batch_under_their_own_names(corpus):
    rows = json.loads((corpus / "m.json").read_text())
    for i, row in enumerate(rows.values()):
        row.update(spkID=f"spk{i % 2}", gender="f", age=30 + i)
    (corpus / "fields.json").write_text(json.dumps(rows))
    ds = ManifestDataset(corpus / "fields.json", data_root=str(corpus / "audio"))
    assert ds[0]["spkID"] == "spk0" and "wav" not in ds[0] and "duration" not in ds[0]
    batch = collate([ds[i] for i in range(3)])
    assert batch.spkID == ["spk0", "spk1", "spk0"] and batch.gender == ["f"] * 3
    assert batch.age.tolist() == [30, 31, 32]  # numbers become a tensor
    assert batch.text == ["one", "two words", "three"]


def test_skip_bad_skips_and_the_trainer_reports(corpus, caplog):
    rows = json.loads((corpus / "m.json").read_text())
    rows["zz"] = {"wav": "{data_root}/nope.wav", "duration": 0.5, "words": "gone"}
    (corpus / "skip.json").write_text(json.dumps(rows))
    ds = ManifestDataset(corpus / "skip.json", data_root=str(corpus / "audio"), skip_bad=True)
    batch = collate([ds[i] for i in range(4)])
    assert len(batch) == 3 and batch.skipped[0].id == "zz" and "audio file not found" in batch.skipped[0].reason

    from tests.toy import ToyBrain, toy_cfg

    class Brain(ToyBrain):
        def compute_forward(self, batch, stage):
            return batch.inputs.mean(1) * self.model.net[0].weight.sum()

        def compute_objectives(self, outputs, batch, stage):
            return outputs.square().mean()

    brain = Brain(toy_cfg(corpus / "run", "trainer.max_epochs=1", "batching.batch_size=2", "batching.shuffle=false"))
    with caplog.at_level(logging.WARNING):
        brain.fit(ds)
    assert "1 example(s) skipped as unreadable so far (skip_bad); first: zz:" in caplog.text


# -------------------------------------------------------------------------------- HDF5
def write_h5(path, n=10, kind="audio", rate=SR):
    with HDF5Writer(path, kind, attrs={"sample_rate": rate}) as w:
        for i in range(n):
            w.add(f"u{i}", np.full(100 * (i + 1), i, np.float32), (i + 1) / 100, text=f"t{i}")
    return path


def test_hdf5_reads_lazily_and_opens_the_file_after_fork(tmp_path):
    ds = HDF5Dataset(write_h5(tmp_path / "a.h5"))
    assert ds._file is None  # nothing opened by the constructor
    loader = DataLoader(ds, batch_sampler=FixedBatchSampler(ds.lengths, 3, shuffle=True), collate_fn=collate,
                        num_workers=2, multiprocessing_context="fork")
    seen = {}
    for batch in loader:
        for uid, x, n in zip(batch.id, batch.inputs, batch.inputs_lens):
            seen[uid] = x[:n]
    assert ds._file is None  # the parent never opened it: only the workers did
    assert sorted(seen) == sorted(f"u{i}" for i in range(10))
    assert torch.equal(seen["u4"], torch.full((500,), 4.0))


def test_hdf5_virtual_dataset_stitches_shards(tmp_path):
    (tmp_path / "s").mkdir()
    shards = [write_h5(tmp_path / "s" / f"{k}.h5", n=3 + k) for k in range(2)]
    out = combine_shards(shards, tmp_path / "all.h5", "virtual")
    with h5py.File(out) as f:
        assert f["data"].is_virtual
    ds = HDF5Dataset(out)
    assert len(ds) == 7 and ds.ids[3] == "u0" and torch.equal(ds[4]["inputs"], torch.ones(200))


def test_hdf5_errors(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(HDF5FormatError, match="other.h5 is not a framework HDF5 dataset.*framework.prepare hdf5"):
        HDF5Dataset(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(HDF5FormatError, match="text.h5: not a readable HDF5 file"):
        HDF5Dataset(tmp_path / "text.h5")
    with pytest.raises(HDF5FormatError, match="at 8000 Hz but the config asks for 16000 Hz"):
        HDF5Dataset(write_h5(tmp_path / "r.h5", rate=8000), sample_rate=16000)


# --------------------------------------------------------------------- prepare commands
@pytest.fixture()
def librispeech(tmp_path):
    """A LibriSpeech-shaped tree: speaker/chapter/*.flac + speaker-chapter.trans.txt."""
    root = tmp_path / "LibriSpeech" / "train"
    n = 0
    for spk in ("19", "26"):
        for chap in ("198", "495"):
            folder = root / spk / chap
            folder.mkdir(parents=True)
            lines = []
            for k in range(3):
                uid = f"{spk}-{chap}-{k:04d}"
                soundfile.write(folder / f"{uid}.flac", tone(0.3 + 0.1 * k, freq=300 + 50 * n), SR)
                lines.append(f"{uid} HELLO NUMBER {n}")
                n += 1
            (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_prepare_manifest_librispeech_and_generic(librispeech, tmp_path):
    out = tmp_path / "ls.jsonl"
    proc = run_cli("framework.prepare", ["manifest", str(librispeech), str(out), "--workers", "2"], cwd=tmp_path)
    assert "12 entries" in proc.stdout
    ds = ManifestDataset(out, data_root=str(librispeech))
    assert len(ds) == 12 and ds.texts[0] == "HELLO NUMBER 0"
    assert ds.lengths[:3] == pytest.approx([0.3, 0.4, 0.5])

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        soundfile.write(flat / f"clip{i}.wav", tone(0.2 * (i + 1)), SR)
    (flat / "labels.csv").write_text("file,label\nclip0.wav,dog\nclip1.wav,cat\nclip2.wav,dog\n")
    run_cli("framework.prepare", ["manifest", str(flat), str(tmp_path / "g.csv"), "--layout", "generic",
                                  "--table", str(flat / "labels.csv"), "--absolute"], cwd=tmp_path)
    g = ManifestDataset(tmp_path / "g.csv")
    assert g.labels == ["dog", "cat", "dog"] and g.lengths.tolist() == pytest.approx([0.2, 0.4, 0.6])


def test_prepare_manifest_bad_file_fails_or_is_skipped(librispeech, tmp_path):
    bad = next(librispeech.rglob("*.flac"))
    bad.write_bytes(b"not audio at all")
    proc = run_cli("framework.prepare", ["manifest", str(librispeech), str(tmp_path / "x.json")], cwd=tmp_path,
                   check=False)
    assert proc.returncode != 0 and f"{bad}: cannot read audio" in proc.stderr and "--skip-bad" in proc.stderr
    assert not (tmp_path / "x.json").exists()
    proc = run_cli("framework.prepare", ["manifest", str(librispeech), str(tmp_path / "x.json"), "--skip-bad"],
                   cwd=tmp_path)
    assert "skipped 1 bad entry while building the manifest: " + bad.stem in proc.stdout
    assert len(json.loads((tmp_path / "x.json").read_text())) == 11


@pytest.mark.parametrize("features,combine", [("none", "copy"), pytest.param("fbank", "virtual", marks=pytest.mark.slow)])
def test_prepare_hdf5_packs_audio_or_features(librispeech, tmp_path, features, combine):
    manifest = tmp_path / "ls.json"
    run_cli("framework.prepare", ["manifest", str(librispeech), str(manifest)], cwd=tmp_path)
    out = tmp_path / "ls.h5"
    run_cli("framework.prepare", ["hdf5", str(manifest), str(out), "--data-root", str(librispeech), "--workers", "3",
                                  "--features", features, "--combine", combine, "extractor.n_mels=24"][: None if features != "none" else -1],
            cwd=tmp_path)
    ds = HDF5Dataset(out)
    src = ManifestDataset(manifest, data_root=str(librispeech))
    assert ds.ids == [e.id for e in src.entries] and ds.texts == src.texts
    assert ds.lengths == pytest.approx(src.lengths)
    assert (tmp_path / "ls.h5.shards").exists() == (combine == "virtual")
    if features == "none":
        assert ds.kind == "audio" and torch.allclose(ds[5]["inputs"], src[5]["inputs"], atol=1e-4)
    else:
        assert ds.kind == "features" and ds[5]["inputs"].shape[1] == 24
        assert json.loads(ds.attrs["features"])["n_mels"] == 24


@pytest.mark.slow  # 15-30 s: `make test-slow` runs it
def test_prepare_hdf5_interrupted_leaves_no_file(librispeech, tmp_path):
    manifest = tmp_path / "ls.json"
    run_cli("framework.prepare", ["manifest", str(librispeech), str(manifest)], cwd=tmp_path)
    next(librispeech.rglob("*.flac")).write_bytes(b"broken")
    proc = run_cli("framework.prepare", ["hdf5", str(manifest), str(tmp_path / "o.h5"), "--data-root", str(librispeech)],
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "cannot read audio" in proc.stderr
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.shards").exists()
    assert not list(tmp_path.glob(".o.h5*"))
    proc = run_cli("framework.prepare", ["hdf5", str(manifest), str(tmp_path / "o.h5"), "--data-root", str(librispeech),
                                         "--skip-bad"], cwd=tmp_path)
    assert "skipped 1 bad entry while packing" in proc.stdout and len(HDF5Dataset(tmp_path / "o.h5")) == 11


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("samples", [1, 2, 3, 16001])
def test_pcm_wav_decoded_with_numpy_equals_soundfile(subtype, samples):
    x = np.random.default_rng(samples).uniform(-1, 1, samples).astype(np.float32)
    x[: min(samples, 3)] = [-1.0, 0.999, -0.5][: min(samples, 3)]  # the extremes, where sign handling shows
    buffer = io.BytesIO()
    soundfile.write(buffer, x, 16000, format="WAV", subtype=subtype)
    expected, _ = soundfile.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    pcm = pcm_wav(buffer.getvalue())
    got = pcm.scaled()
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_wavs_numpy_does_not_decode_are_left_to_soundfile():
    def wav(data, subtype):
        buffer = io.BytesIO()
        soundfile.write(buffer, data, 16000, format="WAV", subtype=subtype)
        return buffer.getvalue()

    assert pcm_wav(wav(np.zeros((10, 2), np.float32), "PCM_16")) is None  # stereo
    assert pcm_wav(wav(np.zeros(10, np.float32), "FLOAT")) is None
    assert pcm_wav(wav(np.zeros(10, np.float32), "PCM_U8")) is None
    assert pcm_wav(b"fLaC" + bytes(40)) is None
    assert pcm_wav(wav(np.zeros(10, np.float32), "PCM_16")[:-4]) is None  # data chunk cut short
