"""DeepSpeech2 as the DeepMark benchmark specifies it.

2 convolutions with batch norm -> N bidirectional recurrent layers with batch norm ->
a fully connected layer with batch norm -> a linear layer over the alphabet (blank at 0),
clipped ReLU (min(max(x, 0), 20)) everywhere: after the convolutions and the FC layer,
inside the recurrence (every hidden state) and after each recurrent layer (the summed
directions).

Padded frames never reach a valid frame's recurrence (sequences are packed; on the CPU, faster,
a GRU's or LSTM's reverse direction reads each sequence reversed within its own length) nor the
batch-norm statistics (normalisation runs over valid frames only), and the convolutions'
outputs are re-masked, so an utterance gives the same output alone or batched with longer
ones.

The model exports: under torch.export (and torch.onnx) the recurrences run as a ``scan``
over time with the same masking (:mod:`framework.models.recurrence`), and every layer takes
its padded path, so no Python number is taken from a tensor; ``torch.jit.script`` compiles
the evaluation path (training with TorchScript is not supported).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from framework.data.collate import length_mask
from framework.errors import BadValue
from framework.models import onnx_recurrence
from framework.models.export_mode import exporting
from framework.models.onnx_recurrence import native_recurrences
from framework.models.recurrence import clipped_relu_steps, scan_recurrence

RNN_TYPES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, 0.0, 20.0)


class _ClippedReLURecurrence(torch.autograd.Function):
    """``h_t = min(max(xw_t + h_(t-1) @ w_hh, 0), 20) * keep_t`` over ``xw [D, T, B, H]``,
    with a hand-written backward pass (one matmul per step, no autograd graph per step)."""

    @staticmethod
    def forward(ctx, xw: torch.Tensor, w_hh: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        device = xw.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else xw.dtype
        with torch.autocast(device, enabled=False):
            w = w_hh.to(dtype)
            out = clipped_relu_steps(xw.to(dtype), w, None if keep is None else keep.to(dtype))
        ctx.save_for_backward(out, w)
        ctx.dtypes = (xw.dtype, w_hh.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        out, w = ctx.saved_tensors
        grad_out = grad_out.to(out.dtype)
        grad_x = torch.empty_like(out)
        carry = torch.zeros_like(out[:, 0])  # d loss / d h_t through h_(t+1)
        w_t = w.transpose(1, 2)
        for t in range(out.shape[1] - 1, -1, -1):
            h = out[:, t]
            g = (grad_out[:, t] + carry) * ((h > 0) & (h < 20))  # the clip passes gradient inside (0, 20) only
            grad_x[:, t] = g
            carry = torch.bmm(g, w_t)
        previous = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], 1)
        grad_w = torch.einsum("dtbi,dtbj->dij", previous, grad_x)
        return grad_x.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the valid frames of ``[B, T, ..., C]`` (mask ``[B, T]``); padded
    frames stay zero. ``mask=None`` means every frame is valid (no gather needed). In
    evaluation the running statistics normalise each frame on its own, so every frame is
    normalised and the padded ones zeroed after: no gather, whose size would depend on the data."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not torch.jit.is_scripting() and self.training:  # TorchScript compiles the evaluation path only
            return self.normalize_batch(x, mask)
        if exporting():  # elementwise on the layout as it is: no reshape, whose view checks would fix sizes
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)
            y = x * scale + (self.bias - self.running_mean * scale)
        else:
            y = F.batch_norm(x.reshape(-1, x.shape[-1]), self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps).reshape(x.shape)
        if mask is None:
            return y
        while mask.dim() < y.dim():
            mask = mask.unsqueeze(-1)
        return y.masked_fill(~mask, 0.0)

    def normalize_batch(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Training: the batch's statistics over valid frames, and the running statistics updated."""
        if mask is None:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        out = torch.zeros_like(x)
        valid = x[mask]
        out[mask] = super().forward(valid.reshape(-1, x.shape[-1])).reshape(valid.shape)
        return out


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, tuple(kernel), tuple(stride), tuple(padding), bias=False)
        self.bn = MaskedBatchNorm(out_ch)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k, s, p = self.conv.kernel_size[1], self.conv.stride[1], self.conv.padding[1]
        return torch.div(lengths + 2 * p - k, s, rounding_mode="floor").add(1).clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, C, F, T]; batch norm over channels, valid frames only
        x = self.conv(x)
        lengths = self.out_lengths(lengths)
        mask = length_mask(lengths, x.shape[-1]) if padded else None
        x = self.bn(x.permute(0, 3, 2, 1), mask).permute(0, 3, 2, 1)
        return clipped_relu(x), lengths


class RecurrentLayer(nn.Module):
    """One (bi)directional recurrent layer with batch norm on its input projection.

    ``shared_projection``: one input projection (no bias) + batch norm shared by both
    directions, as the reference implementation does; the recurrences then take that
    projection as their input through a frozen identity input weight, which keeps
    cuDNN's fused kernels. Otherwise each direction has its own input weights and the
    batch norm acts on the layer's input.

    ``clip_recurrence`` (vanilla RNN only): the spec's clipped ReLU inside the recurrence,
    run as a step-by-step loop. Off, the RNN runs as one fused kernel (cuDNN on a GPU)
    with a plain ReLU inside and the clip applied after the layer only: faster, but not
    the spec's function (hidden states may exceed 20 within a layer).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        rnn_type: Literal["rnn", "gru", "lstm"] = "rnn",
        bidirectional: bool = True,
        shared_projection: bool = True,
        merge: Literal["sum", "concat"] = "sum",
        clip_recurrence: bool = True,
    ) -> None:
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise BadValue(f"rnn_type must be one of {sorted(RNN_TYPES)}, got {rnn_type!r}")
        if merge not in ("sum", "concat"):
            raise BadValue(f"merge must be sum or concat, got {merge!r}")
        self.merge = merge
        self.bidirectional = bidirectional
        self.hidden_size = hidden_size
        self.rnn_type = rnn_type
        self.clip_recurrence = clip_recurrence and rnn_type == "rnn"
        kwargs = {"batch_first": True, "bidirectional": bidirectional}
        if rnn_type == "rnn":
            kwargs["nonlinearity"] = "relu"
        if shared_projection:
            self.projection = nn.Linear(input_size, hidden_size, bias=False)
            self.bn = MaskedBatchNorm(hidden_size)
            self.rnn = RNN_TYPES[rnn_type](hidden_size, hidden_size, **kwargs)
            gates = self.rnn.weight_ih_l0.shape[0] // hidden_size
            for name, _ in list(self.rnn.named_parameters()):
                if name.startswith("weight_ih"):
                    weight = getattr(self.rnn, name)
                    with torch.no_grad():
                        weight.copy_(torch.eye(hidden_size).repeat(gates, 1))
                    weight.requires_grad_(False)
        else:
            self.projection = None
            self.bn = MaskedBatchNorm(input_size)
            self.rnn = RNN_TYPES[rnn_type](input_size, hidden_size, **kwargs)

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional and self.merge == "concat" else 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask`` is None when no example is padded: no packing needed then."""
        if self.projection is not None:
            x = self.projection(x)
        x = self.bn(x, mask)
        if not torch.jit.is_scripting() and exporting():
            out = self.onnx_gru(x, lengths, mask) if native_recurrences() and self.rnn_type == "gru" else \
                self.scanned(x, mask)
        elif self.clip_recurrence:
            out = self.clipped(x, mask)
        elif mask is None:
            out, _ = self.rnn(x)
        else:
            out = self.over_padding(x, lengths, mask)
        if self.bidirectional and self.merge == "sum":
            out = out[..., : self.hidden_size] + out[..., self.hidden_size :]
        if self.rnn_type == "rnn":
            out = clipped_relu(out)  # the spec's clip after each layer (the summed directions reach 40)
        return out

    def packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``self.rnn`` over ``x [B, T, I]`` packed to ``lengths``; zeros on padded frames."""
        out, _ = self.rnn(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def over_padding(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``self.rnn`` over a padded batch, zeros on padded frames. Packed, except on the CPU for a
        plain GRU or LSTM (:meth:`reversed_in_length`, faster there). Packed are a ReLU RNN (its
        state is unbounded: stepped through padding it could overflow, and the masked infinities
        would reach the gradients as NaN) and a layer with anything attached to its own forward
        (hooks, activation checkpointing's wrapper, an FSDP unit, a quantized layer); on a GPU
        cuDNN steps packed sequences natively, both directions at once."""
        if torch.jit.is_scripting():
            return self.packed(x, lengths)  # TorchScript compiles none of what follows
        rnn = self.rnn
        if (x.device.type == "cpu" and type(rnn) in (nn.GRU, nn.LSTM) and "forward" not in vars(rnn)
                and not rnn._forward_pre_hooks and not rnn._forward_hooks):
            return self.reversed_in_length(x, lengths) * mask[..., None].to(x.dtype)
        return self.packed(x, lengths)

    def reversed_in_length(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``self.rnn`` (a GRU or LSTM) over padded ``x [B, T, I]``, the same function as over packed
        sequences on every valid frame (padded frames hold garbage: the caller masks them). On the CPU torch
        steps packed sequences one shrinking batch at a time, 2-4x slower than a padded tensor
        in training (BENCHMARKS.md, "DeepSpeech2's recurrences on the CPU"). The forward
        direction is exact as it is, padding coming after every valid frame; the reverse
        direction reads each sequence reversed within its own length (padding still last)
        as a forward recurrence, and its outputs are put back in order."""
        out = self.forward_in_time(x, 0)
        if not self.bidirectional:
            return out
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        ends = lengths.to(x.device, torch.long)[:, None]
        order = torch.where(t < ends, ends - 1 - t, t)[..., None]  # [B, T, 1], its own inverse
        backward = self.forward_in_time(x.gather(1, order.expand_as(x)), 1)
        return torch.cat([out, backward.gather(1, order.expand_as(backward))], dim=-1)

    def forward_in_time(self, x: torch.Tensor, direction: int) -> torch.Tensor:
        """``self.rnn``'s direction ``direction`` (0 forward, 1 reverse) stepped forward in time over
        ``x [B, T, I]`` from a zero state."""
        h0 = x.new_zeros(1, x.shape[0], self.hidden_size)
        weights = [w[direction] for w in self.direction_weights()]
        if self.rnn_type == "lstm":
            return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]
        return torch.gru(x, h0, weights, True, 1, 0.0, self.training, False, True)[0]

    def clipped(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The ReLU RNN of ``self.rnn``'s weights with the spec's clip inside the recurrence:
        ``h_t = min(max(W x_t + U h_(t-1) + b, 0), 20)``. ``x [B, T, I]`` -> ``[B, T, D * H]``.
        Both directions step together (one batched matmul per time step); the autograd
        function's hand-written backward pass makes training fast."""
        xw, w_hh, keep = self.direction_inputs(x, mask)
        if torch.jit.is_scripting():
            out = clipped_relu_steps(xw, w_hh, keep)
        else:
            out = _ClippedReLURecurrence.apply(xw, w_hh, keep)
        return self.directions_out(out, x)

    def direction_weights(self) -> tuple[list[torch.Tensor], ...]:
        """``self.rnn``'s input weights, recurrent weights, input and recurrent biases, each a
        list over the directions (forward first), for the export paths."""
        suffixes = ["_l0", "_l0_reverse"][: 2 if self.bidirectional else 1]
        return tuple([getattr(self.rnn, kind + s) for s in suffixes]
                     for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def onnx_gru(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The GRU as one operator that ONNX has (:mod:`framework.models.onnx_recurrence`)."""
        w_ih, w_hh, b_ih, b_hh = (torch.stack(weights) for weights in self.direction_weights())
        out = onnx_recurrence.gru(x, lengths, w_ih, w_hh, b_ih, b_hh)
        return out if mask is None else out * mask[..., None].to(out.dtype)

    def scanned(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The recurrence as a ``scan`` over time, for torch.export: the same function as
        ``self.rnn`` on packed sequences (or :meth:`clipped`), the time axis left dynamic. Each
        direction's weights stay a matrix of their own (plain linear layers, which int8
        quantization of the exported graph finds)."""
        w_ih, w_hh, b_ih, b_hh = self.direction_weights()
        if self.rnn_type != "gru":  # only a GRU's recurrent bias sits inside a gate
            b_ih, b_hh = [i + h for i, h in zip(b_ih, b_hh)], [torch.zeros_like(h) for h in b_hh]
        if self.projection is not None and self.rnn_type == "rnn":  # the frozen identity input weight
            xw = [x + b for b in b_ih]
        else:
            xw = [F.linear(x, w, b) for w, b in zip(w_ih, b_ih)]
        xw = torch.stack([xw[0], *[d.flip(1) for d in xw[1:]]]).transpose(1, 2)  # [D, T, B, G*H], reverse backwards
        keep = xw.new_ones(1, xw.shape[1], xw.shape[2], 1)
        if mask is not None:
            keep = mask.transpose(0, 1)[None, :, :, None].to(xw.dtype)
            keep = torch.cat([keep, keep.flip(1)]) if len(w_hh) == 2 else keep
        out = scan_recurrence(self.rnn_type, xw, w_hh, b_hh, keep, self.clip_recurrence)
        return self.directions_out(out, x)

    def direction_inputs(self, x: torch.Tensor, mask: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``x [B, T, I]`` laid out for the clipped recurrence, both directions stacked: input
        projections with both biases ``[D, T, B, H]``, the recurrent weights transposed
        ``[D, H, H]``, and ``keep [D or 1, T, B, 1]`` (0 on padded frames) or None. The reverse
        direction reads time backwards and restarts from zero at each sequence's own last
        frame: its state is reset on padded frames, which also zeroes the outputs there."""
        rnn = self.rnn
        if hasattr(rnn, "weight_ih_l0_reverse"):
            w_ih = [rnn.weight_ih_l0, rnn.weight_ih_l0_reverse]
            w_hh = [rnn.weight_hh_l0, rnn.weight_hh_l0_reverse]
            b_ih, b_hh = [rnn.bias_ih_l0, rnn.bias_ih_l0_reverse], [rnn.bias_hh_l0, rnn.bias_hh_l0_reverse]
        elif hasattr(rnn, "weight_ih_l0"):
            w_ih, w_hh, b_ih, b_hh = [rnn.weight_ih_l0], [rnn.weight_hh_l0], [rnn.bias_ih_l0], [rnn.bias_hh_l0]
        else:  # TorchScript compiles this for dynamically quantized layers too, which never step here
            raise RuntimeError("a dynamically quantized recurrent layer has no float weights to step through")
        # summed per direction, then stacked: one gradient buffer per bias, never two views of one
        bias = torch.stack([i + h for i, h in zip(b_ih, b_hh)])
        if self.projection is not None:  # the input weight is the frozen identity of the shared projection
            xw = x.transpose(0, 1).unsqueeze(0) + bias[:, None, None, :]
        else:
            xw = torch.einsum("bti,dhi->dtbh", x, torch.stack(w_ih)) + bias[:, None, None, :]
        keep: torch.Tensor | None = None
        if mask is not None:
            keep = mask.transpose(0, 1)[None, :, :, None].to(xw.dtype)  # [1, T, B, 1]
        if len(w_hh) == 2:  # the reverse direction walks time backwards
            xw = torch.stack([xw[0], xw[1].flip(0)])
            if keep is not None:
                keep = torch.cat([keep, keep.flip(1)])
        return xw, torch.stack(w_hh).transpose(1, 2), keep

    def directions_out(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[D, T, B, H]`` states (the reverse direction's backwards) -> ``[B, T, D * H]``."""
        if out.shape[0] == 2:
            out = torch.stack([out[0], out[1].flip(0)])
        return out.permute(2, 1, 0, 3).reshape(x.shape[0], x.shape[1], -1)


class Lookahead(nn.Module):
    """Row convolution over ``context`` future frames, for unidirectional models."""

    def __init__(self, channels: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(channels, channels, context + 1, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (0, self.context))
        return clipped_relu(self.conv(y)).transpose(1, 2)


class DeepSpeech2(nn.Module):
    """``forward(features [B, T, F], lengths [B]) -> (logits [B, T', C], lengths' [B])``, and in
    training with ``intermediate_layer=k`` a third item: logits ``[B, T', C]`` of a linear head
    on the k-th recurrent layer's output, for an intermediate CTC loss (Lee & Watanabe, 2021).

    Defaults are the DeepMark spec: 161 input bins, convs (32, 5x20, stride 2x2) and
    (32, 5x10, stride 1x2) without padding, 7 bidirectional vanilla RNN layers of 1760 with
    a shared input projection and summed directions, FC 1760, 29 output symbols, clipped
    ReLU inside the recurrence (``clip_recurrence=False``: cuDNN's fused ReLU RNN, clipped
    after each layer only). ``dropout`` (not in the spec, 0 there) drops activations between
    layers in training: on the convolutions' output, each recurrent layer's and the FC layer's.
    """

    def __init__(
        self,
        num_classes: int = 29,
        num_bins: int = 161,
        conv_channels: Sequence[int] = (32, 32),
        conv_kernels: Sequence[Sequence[int]] = ((5, 20), (5, 10)),
        conv_strides: Sequence[Sequence[int]] = ((2, 2), (1, 2)),
        conv_padding: Sequence[Sequence[int]] = ((0, 0), (0, 0)),
        rnn_type: Literal["rnn", "gru", "lstm"] = "rnn",
        hidden_size: int = 1760,
        num_layers: int = 7,
        bidirectional: bool = True,
        shared_projection: bool = True,
        merge: Literal["sum", "concat"] = "sum",
        lookahead: int = 0,
        fc_size: int | None = 1760,
        clip_recurrence: bool = True,
        dropout: float = 0.0,
        intermediate_layer: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise BadValue(f"dropout={dropout} must be in [0, 1): the probability of zeroing an activation")
        check_intermediate_layer(intermediate_layer, num_layers, "recurrent")
        self.dropout_p = dropout  # functional: not a block for activation checkpointing to list
        self.convs = nn.ModuleList()
        channels, freq = 1, num_bins
        for out_ch, kernel, stride, pad in zip(conv_channels, conv_kernels, conv_strides, conv_padding):
            self.convs.append(ConvBlock(channels, out_ch, kernel, stride, pad))
            channels = out_ch
            freq = (freq + 2 * pad[0] - kernel[0]) // stride[0] + 1
            if freq < 1:
                raise BadValue(f"num_bins={num_bins} is too few for the convolution kernels {conv_kernels}")
        size = channels * freq
        self.rnn_input_size = size
        self.rnns = nn.ModuleList()
        for _ in range(num_layers):
            layer = RecurrentLayer(size, hidden_size, rnn_type, bidirectional, shared_projection, merge, clip_recurrence)
            self.rnns.append(layer)
            size = layer.output_size
        self.lookahead = Lookahead(size, lookahead) if lookahead and not bidirectional else None
        if fc_size:
            self.fc = nn.Linear(size, fc_size, bias=False)
            self.fc_bn = MaskedBatchNorm(fc_size)
            size = fc_size
        else:
            self.fc = None
        self.output = nn.Linear(size, num_classes)
        self.intermediate_layer = intermediate_layer
        if intermediate_layer:
            self.intermediate_output = nn.Linear(self.rnns[intermediate_layer - 1].output_size, num_classes)

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout_p, self.training)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            lengths = conv.out_lengths(lengths)
        return lengths

    def first_frame_centre(self) -> float:
        """The input frame output frame 0 is centred on (frame j: j times the time stride later),
        from the convolutions' kernels, strides and padding: where timestamps count from."""
        return receptive_field_centre([(c.conv.kernel_size[1], c.conv.stride[1], c.conv.padding[1]) for c in self.convs])

    # no return annotation: TorchScript takes it from the evaluation path (two tensors)
    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        if exporting():
            padded = True  # lengths are unknown while exporting
        else:
            shortest = int(lengths.min())  # one host sync; packing needs lengths on the host anyway
            if int(self.output_lengths(lengths.min().reshape(1))) < 1:
                raise ValueError(
                    f"an input of {shortest} frames is too short for the convolutions; "
                    "filter short utterances (min_duration) or add conv_padding"
                )
            padded = shortest < features.shape[1]
        x = features.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        for conv in self.convs:
            x, lengths = conv(x, lengths, padded)
        b, c, f, t = x.shape
        x = x.reshape(b, c * f, t).transpose(1, 2)  # [B, T, C*F]
        mask = length_mask(lengths, t) if padded else None
        intermediate: torch.Tensor | None = None
        for i, rnn in enumerate(self.rnns, 1):
            x = rnn(self.dropout(x), lengths, mask)
            if not torch.jit.is_scripting():
                if i == self.intermediate_layer and self.training:
                    intermediate = x
        x = self.dropout(x)
        if self.lookahead is not None:
            x = self.lookahead(x)
            if mask is not None:
                x = x * mask[..., None]
        if self.fc is not None:
            x = self.dropout(clipped_relu(self.fc_bn(self.fc(x), mask)))
        if torch.jit.is_scripting():
            return self.output(x), lengths
        else:
            if intermediate is None:
                return self.output(x), lengths
            return self.output(x), lengths, self.intermediate_output(self.dropout(intermediate))


def receptive_field_centre(layers: Sequence[tuple[int, int, int]]) -> float:
    """The input position a stack of convolutions' (kernel, stride, padding) centres its first output on."""
    centre, step = 0.0, 1
    for kernel, stride, padding in layers:
        centre += ((kernel - 1) / 2 - padding) * step
        step *= stride
    return centre


def check_intermediate_layer(layer: int | None, num_layers: int, kind: str) -> None:
    """An intermediate CTC head sits after one of the layers below the last (the last has the output)."""
    if layer is None:
        return
    if num_layers < 2:
        raise BadValue(f"intermediate_layer={layer}: a model of {num_layers} {kind} layer has no layer below the "
                       "last to put it on; use num_layers >= 2 or intermediate_layer=null")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_layers:
        raise BadValue(f"intermediate_layer={layer!r}: must be one of the {kind} layers 1..{num_layers - 1} "
                       "(below the last, which feeds the output), or null for none")
