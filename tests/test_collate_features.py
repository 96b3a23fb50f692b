"""Padding collate and the feature pipeline."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from framework.augment import AddNoise, Augmentation, SpecAugment, SpeedPerturbation
from framework.data.audio import PCM
from framework.data.collate import Batch, SkippedExample, collate, pad_sequences
from framework.errors import UserError
from framework.features import FeaturePipeline, fbank, mfcc, spectrogram


def test_collate_pads_and_returns_absolute_and_relative_lengths():
    batch = collate([
        {"id": "a", "inputs": torch.ones(3, 2), "text": "x", "target": 1},
        {"id": "b", "inputs": torch.ones(5, 2), "text": "y", "target": 0},
        SkippedExample("c", "c.wav: cannot read audio"),
    ])
    assert batch.inputs.shape == (2, 5, 2)
    assert batch.inputs[0, 3:].abs().sum() == 0
    assert batch.inputs_lens.tolist() == [3, 5]
    assert batch.inputs_rel_lens.tolist() == pytest.approx([0.6, 1.0])
    assert batch.text == ["x", "y"] and batch.target.tolist() == [1, 0]
    assert len(batch) == 2 and batch.skipped == [SkippedExample("c", "c.wav: cannot read audio")]
    assert "skipped" not in batch and batch.to("cpu").skipped == batch.skipped
    assert getattr(batch, "words", None) is None  # attribute access behaves like attributes
    with pytest.raises(AttributeError, match="batch has no 'txt'; it has id, inputs"):
        _ = batch.txt


class _Ragged(torch.utils.data.Dataset):
    """Rows of ones of lengths 3, 5, 2, 4 times ``scale``."""

    def __init__(self, scale: int = 1) -> None:
        self.scale = scale

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"id": str(i), "inputs": torch.ones([3, 5, 2, 4][i] * self.scale, 2)}


def _pad_in_worker(examples: list[dict]) -> tuple[bool, torch.Tensor]:
    padded, _ = pad_sequences([ex["inputs"] for ex in examples], value=-1.0)
    return padded.is_shared(), padded


def test_a_loader_workers_batches_are_padded_in_shared_memory():
    """In a worker a padded batch over INLINE_BYTES is made in the shared memory it crosses
    to the main process in (one copy of every batch less), every padded place set (fresh
    shared memory is zeros: padding with -1 shows it), as in the main process; a smaller one
    is not (it crosses inside the batch's pickle)."""
    for scale, shared_expected in ((3000, True), (1, False)):
        data = _Ragged(scale)
        loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=1, collate_fn=_pad_in_worker)
        [(shared, padded)] = list(loader)
        expected, _ = pad_sequences([data[i]["inputs"] for i in range(4)], value=-1.0)
        assert shared == shared_expected and torch.equal(padded, expected), scale
        assert (padded == -1).sum() == 2 * scale * (4 * 5 - (3 + 5 + 2 + 4))
    assert not collate([_Ragged(3000)[0]]).inputs.is_shared()


class _Labelled(torch.utils.data.Dataset):
    """Waveforms of 20,000-30,000 samples (a padded batch over INLINE_BYTES) with labels, and
    an example that cannot be read."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict | SkippedExample:
        if i == 3:
            return SkippedExample("3", "3.wav: cannot read audio")
        return {"id": str(i), "inputs": torch.full((20000 + 5000 * (i % 3),), float(i)), "label": i % 2,
                "weight": torch.tensor(0.5 * i, dtype=torch.bfloat16)}


def test_a_workers_small_tensors_cross_inside_the_pickle_and_the_padded_batch_in_shared_memory():
    """From a worker, lengths and labels come inside the batch's pickle (a shared-memory
    segment each would cost more than they hold); the padded batch, and a small tensor numpy
    cannot hold (bfloat16), come through shared memory; all as the same tensors, in order."""
    from framework.data.collate import INLINE_BYTES

    loader = torch.utils.data.DataLoader(_Labelled(), batch_size=4, num_workers=1, collate_fn=collate)
    [batch] = list(loader)
    expected = collate([_Labelled()[i] for i in range(4)])
    assert list(batch) == list(expected) and batch.inputs.nbytes > INLINE_BYTES
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
            assert batch[key].is_shared() == (key in ("inputs", "weight")), key
    assert batch.id == expected.id == ["0", "1", "2"] and batch.skipped == expected.skipped != []
    # tensors numpy cannot take as they are (sparse, conjugated) are left to torch's own reducers
    from framework.data.collate import _small_array

    assert _small_array(torch.eye(3).to_sparse()) is None
    assert _small_array(torch.ones(2, dtype=torch.cfloat).conj()) is None
    again = pickle.loads(pickle.dumps(Batch(id=["a"], small=torch.arange(3)[::2])))
    assert torch.equal(again.small, torch.tensor([0, 2])) and again.id == ["a"]


class _RaggedPCM(torch.utils.data.Dataset):
    """16-bit PCM of 3,000, 7,000 and 5,000 samples and 24-bit of 4,000, as a WAV shard's examples come."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.pcm = [PCM(rng.integers(-2**15, 2**15, n, dtype=np.int16), 2**15) for n in (3000, 7000, 5000)]
        self.pcm.append(PCM(rng.integers(-2**23, 2**23, 4000, dtype=np.int32), 2**23))

    def __len__(self) -> int:
        return len(self.pcm)

    def __getitem__(self, i: int) -> dict:
        return {"id": str(i), "inputs": self.pcm[i]}


def test_pcm_samples_are_scaled_straight_into_the_padded_batch():
    """Integer PCM becomes float32 in its padded row, with no float copy of each example on
    the way: the values its own float decode gives, in a worker's shared memory as in the
    main process."""
    data = _RaggedPCM()
    expected, lengths = pad_sequences([torch.from_numpy(p.scaled()) for p in data.pcm], value=-1.0)
    assert expected[0, :3000].abs().max() > 0 and expected.dtype == torch.float32
    padded, got = pad_sequences(data.pcm, value=-1.0)
    assert torch.equal(padded, expected) and torch.equal(got, lengths)
    batch = collate([data[i] for i in range(len(data))])
    assert batch.inputs.dtype == torch.float32 and batch.inputs_lens.tolist() == [3000, 7000, 5000, 4000]
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=1, collate_fn=_pad_in_worker)
    [(shared, padded)] = list(loader)
    assert shared and torch.equal(padded, expected)
    mixed, _ = pad_sequences([torch.full((2,), 0.25, dtype=torch.float64), data.pcm[0]])  # a float decode beside PCM
    assert mixed.dtype == torch.float32 and mixed[0, :2].tolist() == [0.25, 0.25] and not mixed[0, 2:].any()
    assert torch.equal(mixed[1], expected[0, :3000])


@pytest.mark.parametrize("extractor,bins", [(spectrogram(), 161), (fbank(n_mels=80), 80), (mfcc(n_mfcc=13), 13)])
def test_extractors_shapes_and_frame_counts(extractor, bins):
    wav = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 8000])
    feats, frames = FeaturePipeline(extractor, normalize="utterance")(wav, lengths)
    assert feats.shape == (2, 101, bins)  # 10 ms hop: 100 frames per second + 1
    assert frames.tolist() == [101, 51]
    assert feats[1, 51:].abs().sum() == 0  # padding stays zero after normalisation
    valid = feats[0]
    assert valid.mean(0).abs().max() < 1e-4 and (valid.std(0, unbiased=False) - 1).abs().max() < 1e-2


def test_per_example_equals_batched_extraction():
    pipe = FeaturePipeline(fbank(n_mels=40), normalize="utterance")
    wav = torch.randn(12000)
    batched, _ = pipe(torch.stack([torch.cat([wav, torch.zeros(4000)]), torch.randn(16000)]), torch.tensor([12000, 16000]))
    torch.testing.assert_close(pipe.per_example(wav), batched[0, :76], rtol=1e-4, atol=1e-4)


def test_global_normalisation_statistics_are_computed_once_and_reloaded(tmp_path):
    data = [{"id": str(i), "inputs": torch.randn(8000) * (i + 1)} for i in range(6)]
    pipe = FeaturePipeline(fbank(n_mels=20), normalize="global")
    with pytest.raises(RuntimeError, match="statistics were not computed"):
        pipe(torch.randn(1, 8000), torch.tensor([8000]))
    pipe.fit_stats(data, tmp_path / "stats.pt")
    assert (tmp_path / "stats.pt").is_file()
    feats, _ = pipe(torch.stack([d["inputs"] for d in data]), torch.full((6,), 8000))
    assert feats.mean().abs() < 0.05 and abs(feats.std().item() - 1) < 0.05
    again = FeaturePipeline(fbank(n_mels=20), normalize="global")
    again.load_stats(tmp_path / "stats.pt")  # what evaluation does: nothing is computed on its data
    torch.testing.assert_close(again.norm.mean, pipe.norm.mean)
    (tmp_path / "stats.pt").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match=f"{tmp_path}/stats.pt is damaged or not a feature-statistics file"):
        again.load_stats(tmp_path / "stats.pt")


def test_augmentation_runs_in_training_batches_only():
    aug = Augmentation(speed=SpeedPerturbation(16000, factors=(0.9,)), noise=AddNoise(p=1.0),
                       specaugment=SpecAugment(2, 5, 2, 10))
    pipe = FeaturePipeline(fbank(n_mels=20), normalize="none", augmentation=aug)
    wav, lengths = torch.randn(3, 8000), torch.tensor([8000, 6000, 4000])
    clean, clean_lens = pipe(wav, lengths, augment=False)
    torch.manual_seed(0)
    augmented, aug_lens = pipe(wav, lengths, augment=True)
    assert aug_lens.tolist() == [(n * 10 + 8) // 9 // 160 + 1 for n in (8000, 6000, 4000)]  # 1/0.9 times longer
    assert clean_lens.tolist() == [51, 38, 26] and not torch.equal(augmented[:, :51], clean)
    assert (augmented == 0).any()  # masked
    pipe.eval()  # evaluation: the modules themselves are identities too
    again, _ = pipe(wav, lengths, augment=True)
    torch.testing.assert_close(again, clean)
    assert aug.longest(np.array([1.0, 0.5])) == pytest.approx([1 / 0.9, 0.5 / 0.9])
    assert aug.describe() == "speed + noise + specaugment"


def test_waveform_augmentation_of_precomputed_features_is_refused():
    pipe = FeaturePipeline(fbank(n_mels=20), normalize="none", augmentation=Augmentation(noise=AddNoise(p=1.0)))
    with pytest.raises(UserError, match="augment=noise changes waveforms, but the training data arrive as features"):
        pipe(torch.randn(2, 30, 20), torch.tensor([30, 20]), augment=True)


