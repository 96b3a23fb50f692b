"""What an exported model computes, as one module torch.export, ONNX and TorchScript take:
``forward(inputs, lengths)`` from the inputs a batch carries (waveforms ``[B, samples]`` for
speech) to what the recipe's ``compute_forward`` gives in evaluation.

Speech recognition (a Brain with a ``tokenizer``): the feature pipeline, the acoustic model
and the log-softmax, ``-> (log_probs [B, T, C], frames [B])``. Other recipes give their own
module through a hook, ``brain.inference_model(features) -> nn.Module`` (``(inputs, lengths)
-> logits``), built around the exportable features passed in.

A transducer exports as three graphs, as sherpa-onnx runs icefall's: the encoder (features
and encoder, ``-> (encodings [B, T, J], frames [B])``, a :class:`SpeechGraph`), one step of the prediction network
(:class:`PredictorStep`) and the joiner of one (frame, prediction) pair per row
(:class:`JoinerStep`); the decoding loop between them is the artifact's ``inference.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
from torch import nn

from framework.data.collate import length_mask
from framework.errors import UserError
from framework.features.pipeline import FeaturePipeline, GlobalNorm, UtteranceNorm
from framework.models.transducer import Joiner, Predictor, Transducer


class DFTSpectrogram(nn.Module):
    """What a torchaudio ``Spectrogram``, ``MelSpectrogram`` or ``MFCC`` transform computes,
    with the short-time Fourier transform as a matmul of windowed frames with a DFT basis.
    For ONNX: ONNX Runtime's ``STFT`` is far less exact than torch's FFT (log-mel differences
    up to 3e-2 on speech, against 1e-4 for the matmul in float32)."""

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        spec = self.spectrogram_of(transform)
        n = spec.n_fft
        angle = 2 * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), torch.arange(n // 2 + 1)) / n
        window = torch.zeros(n, dtype=torch.float64)
        offset = (n - spec.win_length) // 2  # torch.stft centres a shorter window in the frame
        window[offset:offset + spec.win_length] = spec.window.double()
        self.register_buffer("cos", (window[:, None] * torch.cos(angle)).float())
        self.register_buffer("sin", (window[:, None] * torch.sin(angle)).float())
        self.n_fft, self.hop_length, self.power = n, spec.hop_length, spec.power

    @staticmethod
    def spectrogram_of(transform: nn.Module) -> torchaudio.transforms.Spectrogram:
        if isinstance(transform, torchaudio.transforms.MFCC):
            return transform.MelSpectrogram.spectrogram
        return transform.spectrogram if isinstance(transform, torchaudio.transforms.MelSpectrogram) else transform

    @classmethod
    def supports(cls, transform: nn.Module | None) -> bool:
        """The settings the framework's extractors use: centred frames padded with zeros, one-sided,
        unnormalised, a power spectrogram."""
        if not isinstance(transform, (torchaudio.transforms.Spectrogram, torchaudio.transforms.MelSpectrogram,
                                      torchaudio.transforms.MFCC)):
            return False
        spec = cls.spectrogram_of(transform)
        return (spec.center and spec.pad_mode == "constant" and spec.onesided and not spec.normalized
                and spec.pad == 0 and spec.power in (1.0, 2.0))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = nn.functional.pad(wave, (self.n_fft // 2, self.n_fft // 2)).unfold(-1, self.n_fft, self.hop_length)
        power = (frames @ self.cos) ** 2 + (frames @ self.sin) ** 2
        spec = (power if self.power == 2.0 else power.sqrt()).transpose(-1, -2)  # [B, F, T]
        t = self.transform
        if isinstance(t, torchaudio.transforms.MelSpectrogram):
            return t.mel_scale(spec)
        if isinstance(t, torchaudio.transforms.MFCC):  # torchaudio's MFCC.forward after its spectrogram
            mel = t.MelSpectrogram.mel_scale(spec)
            mel = torch.log(mel + 1e-6) if t.log_mels else t.amplitude_to_DB(mel)
            return torch.matmul(mel.transpose(-1, -2), t.dct_mat).transpose(-1, -2)
        return spec


class FeatureGraph(nn.Module):
    """The evaluation path of a :class:`FeaturePipeline` (extractor -> log -> normalisation,
    no augmentation) without its Python-side checks: ``(inputs [B, S], lengths [B]) ->
    (features [B, T, F], frames [B])``. Global statistics are buffers of the module. ``dft``:
    the spectrogram as a DFT matmul (:class:`DFTSpectrogram`), for ONNX."""

    def __init__(self, pipeline: FeaturePipeline, dft: bool = False) -> None:
        super().__init__()
        extractor = pipeline.extractor
        self.transform = extractor.transform  # a torchaudio transform, or None for features given as inputs
        self.dft = DFTSpectrogram(extractor.transform) if dft and DFTSpectrogram.supports(extractor.transform) else None
        self.hop_length = extractor.hop_length
        self.log_compress = extractor.log_compress
        self.normalize = pipeline.normalize
        self.utterance_norm = UtteranceNorm()
        norm = pipeline.norm
        self.register_buffer("mean", norm.mean.clone() if isinstance(norm, GlobalNorm) else torch.zeros(1))
        self.register_buffer("std", norm.std.clone() if isinstance(norm, GlobalNorm) else torch.ones(1))

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = inputs
        if self.transform is not None:
            feats = self.transform(inputs.float()) if self.dft is None else self.dft(inputs.float())
            if self.log_compress:
                feats = torch.log(feats + 1e-6)
            feats = feats.transpose(1, 2)
            lengths = lengths // self.hop_length + 1  # the transforms pad n_fft // 2 on both sides
        if self.normalize == "utterance":
            feats = self.utterance_norm(feats, lengths)
        elif self.normalize == "global":
            # GlobalNorm's formula; its forward checks a Python flag, which no export keeps
            feats = (feats - self.mean) / self.std * length_mask(lengths, feats.shape[1])[..., None].to(feats.dtype)
        return feats, lengths


class SpeechGraph(nn.Module):
    """``(waveforms [B, S], lengths [B]) -> (outputs [B, T, C], frames [B])``: features and the
    acoustic model as the speech recognition recipes compute them; ``log_softmax``: a CTC
    model's log-probabilities (a transducer's encoder gives its frames in the joint space)."""

    def __init__(self, features: FeatureGraph, model: nn.Module, log_softmax: bool = True) -> None:
        super().__init__()
        self.features = features
        self.model = model
        self.log_softmax = log_softmax

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, feat_lens = self.features(inputs, lengths)
        outputs, out_lens = self.model(feats, feat_lens)  # in evaluation the models give these two
        outputs = outputs.float()
        return (outputs.log_softmax(-1) if self.log_softmax else outputs), out_lens


class PredictorStep(nn.Module):
    """``(labels [B], h [L, B, H], c [L, B, H]) -> (predictions [B, J], h', c')``: the
    prediction network after one more label, its LSTM state in ``nn.LSTM``'s layout (zeros
    before the first label, the blank)."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        # Predictor.forward for one label, without its batch-first state (dropout: none in evaluation)
        self.embedding, self.lstm, self.output = predictor.embedding, predictor.lstm, predictor.output

    def forward(self, labels: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, (h, c) = self.lstm(self.embedding(labels[:, None]), (h, c))
        return self.output(x[:, 0]).float(), h, c


class JoinerStep(nn.Module):
    """``(encodings [N, J], predictions [N, J]) -> logits [N, V]``: the joiner, one pair a row."""

    def __init__(self, joiner: Joiner) -> None:
        super().__init__()
        self.joiner = joiner

    def forward(self, encodings: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        return self.joiner(encodings[:, None], predictions[:, None])[:, 0, 0].float()


@dataclass
class Graph:
    """One exported graph: the module, example inputs, each input's dynamic axes and name."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic: tuple[dict[int, object], ...]
    names: tuple[str, ...]

    @classmethod
    def of_batch(cls, module: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> Graph:
        """A module of ``(inputs, lengths)``, with a padded batch of them."""
        return cls(module.eval(), example, dynamic_shapes(example), ("inputs", "lengths"))


def dynamic_shapes(example: tuple[torch.Tensor, ...]) -> tuple[dict[int, object], dict[int, object]]:
    """Of ``(inputs, lengths)``: batch and time dynamic; any further input axis (feature bins,
    image sizes) static."""
    dynamic = torch.export.Dim.DYNAMIC
    return ({0: dynamic, 1: dynamic} if example[0].dim() <= 3 else {0: dynamic}), {0: dynamic}


def inference_graphs(brain, example: tuple[torch.Tensor, torch.Tensor], onnx: bool = False) -> dict[str, Graph]:
    """The exportable graphs of a run's Brain (set up, weights loaded), in evaluation mode, by
    file name (without its format's suffix): ``model`` (``(inputs, lengths) -> outputs``), and
    for a transducer ``predictor`` and ``joiner`` beside it. They share the Brain's
    parameters: build them inside ``brain.eval_weights()`` to export the weight average.
    ``example``: a padded batch of inputs. ``onnx``: the spectrogram as a DFT matmul."""
    features = FeatureGraph(brain.features, dft=onnx) if brain.features is not None else None
    hook = getattr(brain, "inference_model", None)
    if hook is not None:
        model = hook(features)
    elif isinstance(brain.module, Transducer):  # its encoder here; the prediction network and joiner beside
        model = SpeechGraph(features, brain.module.encoder, log_softmax=False)
    elif hasattr(brain, "tokenizer"):
        model = SpeechGraph(features, brain.module)
    else:
        raise UserError(f"{type(brain).__name__} has no inference_model(features) hook: a recipe other than speech "
                        "recognition defines one to be exported (see docs/export.md)")
    graphs = {"model": Graph.of_batch(model, example)}
    if isinstance(brain.module, Transducer):
        graphs.update(transducer_steps(brain.module))
    return graphs


def transducer_steps(model: Transducer) -> dict[str, Graph]:
    """The prediction network's step and the joiner, with examples for a batch of two."""
    lstm, joint = model.predictor.lstm, model.joiner.output.in_features
    state = torch.zeros(lstm.num_layers, 2, lstm.hidden_size)
    batch = {0: torch.export.Dim.DYNAMIC}
    rows = {1: torch.export.Dim.DYNAMIC}  # the LSTM state's batch axis
    return {
        "predictor": Graph(PredictorStep(model.predictor).eval(), (torch.tensor([0, 1]), state, state.clone()),
                           (batch, rows, rows), ("labels", "h", "c")),
        "joiner": Graph(JoinerStep(model.joiner).eval(), (torch.randn(2, joint), torch.randn(2, joint)),
                        (batch, batch), ("encodings", "predictions")),
    }


def frame_geometry(features: FeaturePipeline | None, model: nn.Module) -> tuple[int, int, float]:
    """(input samples per output frame, the fewest input samples that give an output frame, the
    sample output frame 0 is centred on) of a CTC model behind ``features`` (None: the model
    takes waveforms), from the model's ``output_lengths`` and ``first_frame_centre``: what
    chunked transcription aligns its chunks to and timestamps count from."""
    hop = features.extractor.hop_length if features is not None else 1
    if not hasattr(model, "output_lengths"):
        raise UserError(f"{type(model).__name__} has no output_lengths(lengths): chunked transcription and export "
                        "need it to know how many output frames an input gives (see docs/export.md)")
    frames = torch.arange(1, 20001)
    out = model.output_lengths(frames)
    stride = (frames[-1] - frames[-10001]) / (out[-1] - out[-10001]).clamp(min=1)
    if stride != stride.round():
        raise UserError(f"{type(model).__name__}: output frames are not a whole number of input frames apart; "
                        "chunked transcription needs a fixed time stride")
    first = int(frames[out >= 1][0])
    centre = model.first_frame_centre() if hasattr(model, "first_frame_centre") else 0.0
    return hop * int(stride), (first - 1) * hop, centre * hop  # feature frame k is centred on sample k x hop
