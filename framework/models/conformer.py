"""Conformer-CTC: convolutional subsampling x4 -> sinusoidal positions -> conformer blocks ->
a linear layer over the alphabet (blank at 0).

The blocks are torchaudio's ``ConformerLayer`` (macaron feed-forward halves, multi-head
self-attention, depthwise convolution module) with a forward that keeps padding out:
attention ignores padded keys, padded frames are zeroed before the depthwise convolution
(torchaudio's own forward lets them leak into the last ``conv_kernel // 2`` valid frames),
and its batch norm sees valid frames only. So an utterance gives the same output alone or
batched with longer ones. Positions are absolute sinusoids added after the subsampling
(ESPnet's ``x * sqrt(d_model) + PE``); the paper's relative attention is not in torchaudio.

The model exports: under torch.export (and torch.onnx) every input takes the padded path
(so no Python number is taken from a tensor), and ``torch.jit.script`` compiles the
evaluation path.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchaudio.models.conformer import ConformerLayer

from framework.data.collate import length_mask
from framework.errors import BadValue
from framework.models.deepspeech2 import MaskedBatchNorm, check_intermediate_layer, receptive_field_centre
from framework.models.export_mode import exporting


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames left after two unpadded 3x3 stride-2 convolutions: T -> ((T - 1) // 2 - 1) // 2."""
    return (((lengths - 1) // 2 - 1) // 2).clamp(min=0)


def subsampled_frames(frames: int) -> int:
    """:func:`subsampled_lengths` of a number of frames."""
    return max(((frames - 1) // 2 - 1) // 2, 0)


MIN_FRAMES = 7  # the shortest input that keeps one frame after the subsampling


class ConvSubsampling(nn.Module):
    """ESPnet/icefall ``Conv2dSubsampling``: two 3x3 stride-2 convolutions with ReLU over
    (time, frequency), then a linear layer to ``d_model``. ``[B, T, F] -> [B, T', d_model]``."""

    def __init__(self, num_bins: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU())
        freq = subsampled_frames(num_bins)
        if freq < 1:
            raise BadValue(f"num_bins={num_bins} is too few for the x4 subsampling; it needs at least {MIN_FRAMES}")
        self.linear = nn.Linear(channels * freq, d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.conv(features.unsqueeze(1))  # [B, C, T', F']
        return self.linear(x.transpose(1, 2).flatten(2))


def sinusoidal_positions(length: int, d_model: int, device: torch.device) -> torch.Tensor:
    """``[length, d_model]``: sin on even channels, cos on odd ones (Vaswani et al., 2017)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model, device=device)
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs[: d_model // 2])
    return table


class ConformerBlock(ConformerLayer):
    """torchaudio's ``ConformerLayer`` on ``[T, B, D]`` with padding kept out of the convolution
    module. ``forward(x, padding_mask)``: ``padding_mask`` ``[B, T]`` is True at padded frames,
    or None when no frame is padded."""

    def __init__(self, d_model: int, ffn_dim: int, num_heads: int, conv_kernel: int, dropout: float) -> None:
        super().__init__(d_model, ffn_dim, num_heads, conv_kernel, dropout=dropout)
        self.conv_module.sequential[3] = MaskedBatchNorm(d_model)  # same parameters as the BatchNorm1d it replaces

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        x = x + 0.5 * self.ffn1(x)
        y = self.self_attn_layer_norm(x)
        y, _ = self.self_attn(y, y, y, key_padding_mask=padding_mask, need_weights=False)
        x = x + self.self_attn_dropout(y)
        x = x + self.convolve(x, padding_mask)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x)

    def convolve(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        # torchaudio's sequential: pointwise in, GLU, depthwise, norm, activation, pointwise out, dropout
        layers = self.conv_module.sequential
        y = layers[1](layers[0](self.conv_module.layer_norm(x).permute(1, 2, 0)))  # [B, D, T]
        valid: torch.Tensor | None = None
        if padding_mask is not None:
            y = y.masked_fill(padding_mask[:, None, :], 0.0)  # the depthwise kernel must see zeros, as alone
            valid = ~padding_mask
        y = layers[2](y).transpose(1, 2)  # [B, T, D]
        y = layers[3](y, valid)
        y = layers[6](layers[5](layers[4](y).transpose(1, 2)))
        return y.permute(2, 0, 1)


class ConformerCTC(nn.Module):
    """``forward(features [B, T, F], lengths [B]) -> (logits [B, T', C], lengths' [B])`` with
    ``T' = ((T - 1) // 2 - 1) // 2``; inputs need at least 7 frames. In training with
    ``intermediate_layer=k``, a third item: logits of a linear head on block k's output, for
    an intermediate CTC loss (Lee & Watanabe, 2021).

    Defaults are a ~30 M parameter model (NeMo Conformer-CTC medium: d_model 256, 18 layers,
    4 heads, kernel 31). The blocks are ``model.blocks`` (one per activation-checkpointing unit).
    """

    def __init__(
        self,
        num_bins: int = 80,
        num_classes: int = 29,
        d_model: int = 256,
        num_layers: int = 18,
        num_heads: int = 4,
        ffn_expansion: int = 4,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        subsampling_channels: int = 256,
        intermediate_layer: int | None = None,
    ) -> None:
        super().__init__()
        check_intermediate_layer(intermediate_layer, num_layers, "conformer")
        if d_model % num_heads:
            raise BadValue(f"d_model={d_model} must be a multiple of num_heads={num_heads}")
        if conv_kernel % 2 == 0:
            raise BadValue(f"conv_kernel={conv_kernel} must be odd, so the convolution keeps the frame count")
        self.d_model = d_model
        self.min_frames = MIN_FRAMES  # an attribute: TorchScript reads no global numbers
        self.subsampling = ConvSubsampling(num_bins, subsampling_channels, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, ffn_expansion * d_model, num_heads, conv_kernel, dropout) for _ in range(num_layers)
        )
        self.output = nn.Linear(d_model, num_classes)
        self.intermediate_layer = intermediate_layer
        if intermediate_layer:
            self.intermediate_output = nn.Linear(d_model, num_classes)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return subsampled_lengths(lengths)

    def first_frame_centre(self) -> float:
        """The input frame output frame 0 is centred on (frame j: 4 j later): where timestamps count from."""
        convs = [m for m in self.subsampling.conv if isinstance(m, nn.Conv2d)]
        return receptive_field_centre([(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs])

    # no return annotation: TorchScript takes it from the evaluation path (two tensors)
    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        shortest = features.shape[1]
        if not exporting():  # lengths are unknown while exporting
            shortest = int(lengths.min())  # one host sync, to name a too-short input before the convolutions fail
            if shortest < self.min_frames:
                raise ValueError(
                    f"an input of {shortest} frames is too short for the x4 subsampling (needs at least {self.min_frames}); "
                    "filter short utterances (min_duration)"
                )
        x = self.subsampling(features)
        lengths = self.output_lengths(lengths)
        t = x.shape[1]
        positions = sinusoidal_positions(t, self.d_model, x.device)
        x = self.dropout(x * math.sqrt(self.d_model) + positions.to(x.dtype))
        padding_mask: torch.Tensor | None = None
        if exporting() or subsampled_frames(shortest) < t:
            padding_mask = ~length_mask(lengths, t)
        x = x.transpose(0, 1)  # [T', B, D]: torchaudio's layers use a sequence-first attention
        intermediate: torch.Tensor | None = None
        for i, block in enumerate(self.blocks, 1):
            x = block(x, padding_mask)
            if not torch.jit.is_scripting():
                if i == self.intermediate_layer and self.training:
                    intermediate = x
        if torch.jit.is_scripting():
            return self.output(x.transpose(0, 1)), lengths
        else:
            if intermediate is None:
                return self.output(x.transpose(0, 1)), lengths
            return self.output(x.transpose(0, 1)), lengths, self.intermediate_output(intermediate.transpose(0, 1))
