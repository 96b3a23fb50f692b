"""Waveform augmentation: exact speed-perturbed lengths, SNRs that match the draw, noise
read from real files, identity where it must be, and clear errors for a bad noise manifest."""

from __future__ import annotations

import json
import math

import pytest
import soundfile
import torch
import torchaudio.functional as AF

from framework.augment import AddNoise, Augmentation, QuietPadding, SpeedPerturbation
from framework.augment.quiet import quiet_lead_of
from framework.data.audio import AudioError
from framework.data.collate import length_mask
from framework.data.manifest import ManifestError

SR = 16000


def zero_padded(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    wav = torch.randn(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, n:] = 0
    return wav, torch.tensor(lengths)


def sine(lengths: list[int], hz: float = 440.0) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(max(lengths)) / SR
    wav = torch.sin(2 * math.pi * hz * t).repeat(len(lengths), 1)
    for i, n in enumerate(lengths):
        wav[i, n:] = 0
    return wav, torch.tensor(lengths)


def test_speed_perturbation_gives_exact_lengths_zero_padding_and_the_per_example_resampling():
    torch.manual_seed(0)
    wav, lengths = zero_padded([16000, 12345, 8000, 999])
    out, new_lengths = SpeedPerturbation(SR, factors=(1.1,))(wav, lengths)
    assert new_lengths[0].item() == 14546 == math.ceil(16000 / 1.1)
    assert out.shape == (4, 14546)
    for i, n in enumerate(lengths.tolist()):
        alone = AF.resample(wav[i, :n], 17600, 16000)  # speed 1.1 = playing 17.6 kHz audio at 16 kHz
        assert new_lengths[i].item() == len(alone)
        torch.testing.assert_close(out[i, : len(alone)], alone, atol=1e-5, rtol=1e-4)
        assert not out[i, len(alone) :].any()


def test_each_example_draws_its_own_factor():
    torch.manual_seed(0)
    module = SpeedPerturbation(SR)
    wav, lengths = zero_padded([8000] * 24)
    out, new_lengths = module(wav, lengths)
    by_factor = {math.ceil(8000 / f): f for f in (0.9, 1.0, 1.1)}
    assert set(new_lengths.tolist()) == set(by_factor)  # all three factors among 24 examples
    for i, n in enumerate(new_lengths.tolist()):
        expected = AF.speed(wav[i : i + 1], SR, by_factor[n])[0][0]
        torch.testing.assert_close(out[i, :n], expected, atol=1e-5, rtol=1e-4)
        assert not out[i, n:].any()
    assert module.length_factor == pytest.approx(1 / 0.9)
    assert (new_lengths <= torch.ceil(lengths * module.length_factor)).all()


def test_speed_perturbation_identities():
    wav, lengths = zero_padded([4000, 3000])
    out, new_lengths = SpeedPerturbation(SR, factors=(1.0,))(wav, lengths)
    assert torch.equal(out, wav) and torch.equal(new_lengths, lengths)
    out, new_lengths = SpeedPerturbation(SR, factors=(0.9,), p=0.0)(wav, lengths)
    assert torch.equal(out, wav) and torch.equal(new_lengths, lengths)
    out, new_lengths = SpeedPerturbation(SR, factors=(0.9,)).eval()(wav, lengths)
    assert torch.equal(out, wav) and torch.equal(new_lengths, lengths)


def test_speed_perturbation_of_one_example_follows_the_global_rng():
    wav = torch.randn(1, 5000)
    torch.manual_seed(3)
    first = SpeedPerturbation(SR, factors=(0.9, 1.1))(wav)
    torch.manual_seed(3)
    again = SpeedPerturbation(SR, factors=(0.9, 1.1))(wav)
    assert first[1].item() in (math.ceil(5000 / 0.9), math.ceil(5000 / 1.1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def measured_snr(clean: torch.Tensor, noisy: torch.Tensor, n: int) -> float:
    noise = noisy[:n] - clean[:n]
    return 10 * math.log10(clean[:n].square().sum() / noise.square().sum())


@pytest.mark.parametrize("color", ["white", "pink"])
def test_added_noise_has_the_drawn_snr_and_padding_stays_zero(color):
    torch.manual_seed(0)
    wav, lengths = sine([16000, 9000, 4000])
    out, out_lengths = AddNoise(snr_db=(7.5, 7.5), p=1.0, color=color)(wav, lengths)
    assert torch.equal(out_lengths, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert measured_snr(wav[i], out[i], n) == pytest.approx(7.5, abs=0.01)
        assert not out[i, n:].any()
    out, _ = AddNoise(snr_db=(0, 15), p=1.0)(*sine([4000] * 16))
    snrs = [measured_snr(w, o, 4000) for w, o in zip(sine([4000] * 16)[0], out)]
    assert all(-0.01 < s < 15.01 for s in snrs) and max(snrs) - min(snrs) > 3


def test_pink_noise_has_more_low_frequency_power_than_white():
    torch.manual_seed(0)
    low_to_high = []
    for color in ("white", "pink"):
        wav, lengths = sine([SR] * 4)
        noise = AddNoise(snr_db=(0, 0), p=1.0, color=color)(wav, lengths)[0] - wav
        power = torch.fft.rfft(noise).abs().square().mean(0)  # 1 Hz bins
        low_to_high.append((power[100:200].mean() / power[3200:6400].mean()).item())
    white, pink = low_to_high
    assert 0.7 < white < 1.4
    assert 15 < pink < 60  # 1/f: about 4800 / 150 = 32


def test_noise_identities():
    wav, lengths = sine([4000, 3000])
    out, _ = AddNoise(p=0.0)(wav, lengths)
    assert torch.equal(out, wav)
    out, _ = AddNoise(p=1.0).eval()(wav, lengths)
    assert torch.equal(out, wav)


def write_noise_manifest(tmp_path, files: dict[str, torch.Tensor]) -> str:
    manifest = {}
    for name, samples in files.items():
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, samples.numpy(), SR, subtype="FLOAT")
        manifest[name] = {"file_path": str(path), "duration": len(samples) / SR}
    (tmp_path / "noise.json").write_text(json.dumps(manifest))
    return str(tmp_path / "noise.json")


def test_noise_from_a_manifest_is_a_random_crop_of_a_real_file(tmp_path):
    torch.manual_seed(0)
    recording = torch.randn(SR // 2) * 0.1
    manifest = write_noise_manifest(tmp_path, {"long": recording})
    wav, lengths = sine([2000, 2000, 1500])
    out, _ = AddNoise(snr_db=(5, 5), p=1.0, noise_manifest=manifest)(wav, lengths)
    offsets = set()
    for i, n in enumerate(lengths.tolist()):
        added = out[i, :n] - wav[i, :n]
        # the added noise is a scaled segment of the recording: find where it correlates perfectly
        windows = recording.unfold(0, n, 1)
        correlation = windows @ added / (windows.norm(dim=1) * added.norm())
        offsets.add(int(correlation.argmax()))
        assert correlation.max().item() == pytest.approx(1.0, abs=1e-4)
        assert measured_snr(wav[i], out[i], n) == pytest.approx(5.0, abs=0.01)
        assert not out[i, n:].any()
    assert len(offsets) == 3  # random crops


def test_a_short_noise_file_is_looped(tmp_path):
    torch.manual_seed(0)
    short = torch.randn(1000)
    manifest = write_noise_manifest(tmp_path, {"short": short})
    wav, lengths = sine([3500])
    out, _ = AddNoise(p=1.0, noise_manifest=manifest)(wav, lengths)
    added = out[0, :3500] - wav[0]
    scale = added[:1000] / short
    torch.testing.assert_close(scale, scale.mean().expand(1000), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(added[1000:2000], added[:1000])
    torch.testing.assert_close(added[3000:3500], added[:500])


def test_a_silent_noise_file_leaves_the_example_alone(tmp_path):
    manifest = write_noise_manifest(tmp_path, {"silence": torch.zeros(2000)})
    wav, lengths = sine([1500, 1000])
    out, _ = AddNoise(p=1.0, noise_manifest=manifest)(wav, lengths)
    assert torch.equal(out, wav)  # no SNR can be reached: no NaN, no change


def test_a_bad_noise_manifest_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match="missing.json: manifest not found"):
        AddNoise(noise_manifest=tmp_path / "missing.json")
    manifest = tmp_path / "noise.json"
    manifest.write_text(json.dumps({"gone": {"file_path": str(tmp_path / "gone.wav"), "duration": 1.0}}))
    with pytest.raises(ManifestError, match=r"noise.json: entry 'gone': noise file .*gone.wav not found"):
        AddNoise(noise_manifest=manifest)
    (tmp_path / "text.wav").write_text("not audio")
    manifest.write_text(json.dumps({"text": {"file_path": str(tmp_path / "text.wav"), "duration": 1.0}}))
    module = AddNoise(p=1.0, noise_manifest=manifest)
    with pytest.raises(AudioError, match=r"noise.json: entry 'text': .*text.wav: cannot read audio"):
        module(*sine([4000]))


def test_quiet_padding_moves_each_utterance_into_noise_at_the_drawn_level():
    torch.manual_seed(0)
    module = QuietPadding(SR, lead_s=0.25, tail_s=0.1, level_db=(-60.0, -60.0))
    wav, lengths = zero_padded([8000, 5000, 3000] * 8)
    out, new_lengths = module(wav, lengths)
    grown = new_lengths - lengths
    assert (grown >= 0).all() and (grown <= round(module.extra_s * SR)).all() and grown.float().std() > 0
    assert out.shape[1] == new_lengths.max() and not (out * ~length_mask(new_lengths, out.shape[1])).any()
    for i, (n, m) in enumerate(zip(lengths.tolist(), new_lengths.tolist())):
        row = out[i, :m]
        # the utterance, sample for sample, somewhere in the first 0.25 s; noise before and after it
        lead = next(k for k in range(m - n + 1) if torch.equal(row[k:k + n], wav[i, :n]))
        assert lead <= 0.25 * SR and m - n - lead <= 0.1 * SR
        quiet = torch.cat([row[:lead], row[lead + n:]])
        if len(quiet) > 1000:
            assert quiet.pow(2).mean().sqrt().item() == pytest.approx(1e-3, rel=0.15)  # -60 dBFS


def test_quiet_padding_identities_and_bad_settings():
    wav, lengths = zero_padded([4000, 3000])
    for module in (QuietPadding(SR, p=0.0), QuietPadding(SR, lead_s=0.0, tail_s=0.0), QuietPadding(SR).eval()):
        out, new_lengths = module(wav, lengths)
        assert torch.equal(out, wav) and torch.equal(new_lengths, lengths)
    with pytest.raises(ValueError, match="level_db"):
        QuietPadding(SR, level_db=(-40.0, -60.0))
    with pytest.raises(ValueError, match="lead_s=-0.1"):
        QuietPadding(SR, lead_s=-0.1)


def test_the_median_quiet_before_an_utterance_follows_the_padding_probability():
    def median(p):  # as the features pipeline holds it
        return quiet_lead_of(type("Features", (), {"augmentation": Augmentation(quiet=QuietPadding(SR, p=p))})())

    assert median(1.0) == pytest.approx(0.15) and median(0.75) == pytest.approx(0.1)
    assert median(0.5) == 0.0 and quiet_lead_of(None) == 0.0
