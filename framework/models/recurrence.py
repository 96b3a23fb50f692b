"""Recurrences written out step by step: the clipped ReLU recurrence of the DeepSpeech2 spec
(a loop, for eager and TorchScript) and any of the recurrent layers as one ``scan`` over
time, for torch.export and ONNX.

torch.export cannot keep ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` with a dynamic time axis: their
decomposition unrolls the time loop at the example's length. ``scan`` (torch's control-flow
operator, ONNX ``Scan``) keeps the axis dynamic. Both directions step together (one batched
matmul per step) over input projections computed for all frames beforehand. Inputs are
laid out by the caller as ``[D, T, B, ...]`` with the reverse direction read backwards, and
``keep`` (0 on padded frames) resets the state there, so the reverse direction starts from
zero at each sequence's own last frame, as with packed sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_relu_steps(xw: Tensor, w_hh: Tensor, keep: Tensor | None) -> Tensor:
    """``h_t = min(max(xw_t + h_(t-1) @ w_hh, 0), 20) * keep_t`` over ``xw [D, T, B, H]``,
    ``w_hh [D, H, H]``, ``keep [D or 1, T, B, 1]``."""
    out = torch.empty_like(xw)
    h = xw.new_zeros(xw.shape[0], xw.shape[2], xw.shape[3])
    for t in range(xw.shape[1]):
        h = torch.baddbmm(xw[:, t], h, w_hh).clamp_(0.0, 20.0)
        if keep is not None:
            h.mul_(keep[:, t])
        out[:, t] = h
    return out


def scan_recurrence(rnn_type: str, xw: Tensor, w_hh: list[Tensor], b_hh: list[Tensor], keep: Tensor,
                    clip: bool) -> Tensor:
    """One layer's recurrence as a ``scan`` over time. ``xw [D, T, B, G*H]``: the input
    projections with their bias (and, except for a GRU, the recurrent bias); per direction the
    recurrent weight ``[G*H, H]`` and bias ``[G*H]`` (a GRU's, inside its reset gate; zeros
    otherwise); ``keep [D or 1, T, B, 1]``. ``clip``: a ReLU RNN clipped at 20 inside the
    recurrence. Returns the hidden states ``[D, T, B, H]``, zero where ``keep`` is."""
    from torch._higher_order_ops.scan import scan

    keep = keep.expand(xw.shape[0], -1, -1, -1)
    h0 = xw.new_zeros(xw.shape[0], xw.shape[2], w_hh[0].shape[1])

    def recurrent(h: Tensor) -> Tensor:  # [D, B, G*H]: one linear layer per direction
        return torch.stack([torch.nn.functional.linear(h[d], w, b) for d, (w, b) in enumerate(zip(w_hh, b_hh))])

    def rnn_step(h: Tensor, step: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, k = step
        h = x + recurrent(h)
        h = (h.clamp(0.0, 20.0) if clip else h.relu()) * k
        return h, h.clone()

    def gru_step(h: Tensor, step: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, k = step
        xr, xz, xn = x.chunk(3, -1)
        hr, hz, hn = recurrent(h).chunk(3, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = ((1 - z) * n + z * h) * k
        return h, h.clone()

    def lstm_step(hc: tuple[Tensor, Tensor], step: tuple[Tensor, Tensor]):
        (h, c), (x, k) = hc, step
        i, f, g, o = (x + recurrent(h)).chunk(4, -1)
        c = (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)) * k
        h = torch.sigmoid(o) * torch.tanh(c)  # zero where c was reset
        return (h, c), h.clone()

    steps = (xw.transpose(0, 1), keep.transpose(0, 1))  # scan walks dim 0: time
    if rnn_type == "lstm":
        _, out = scan(lstm_step, (h0, h0.clone()), steps)
    else:
        _, out = scan(gru_step if rnn_type == "gru" else rnn_step, h0, steps)
    return out.transpose(0, 1)
