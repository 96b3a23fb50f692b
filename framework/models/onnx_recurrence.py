"""GRU layers as ONNX's own ``GRU`` operator when a model is exported to ONNX.

torch.export traces a recurrence over a dynamic time axis as a scan, and ONNX Runtime runs a
scan step by step through its graph machinery: half the time of a DeepSpeech2 ``ds2_small``
(3 GRU layers) transcription went into its scans. ONNX's ``GRU`` operator is one fused kernel
and takes each sequence's length, so padded batches give what packed sequences give in
PyTorch. A model's recurrent layer calls :func:`gru` inside :func:`onnx_recurrences` (which
``framework.export`` enters for ONNX only), and the ONNX exporter writes the operator through
:data:`TRANSLATIONS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

_native = False


@contextlib.contextmanager
def onnx_recurrences() -> Iterator[None]:
    """Within: recurrent layers that have an ONNX operator export as that operator."""
    global _native
    before, _native = _native, True
    try:
        yield
    finally:
        _native = before


def native_recurrences() -> bool:
    return _native


@torch.library.custom_op("framework::gru", mutates_args=())
def gru(x: torch.Tensor, lengths: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
        b_hh: torch.Tensor) -> torch.Tensor:
    """A one-layer GRU over ``x [B, T, I]`` with ``lengths [B]``, each direction's weights
    stacked on dim 0 in PyTorch's layout (``w_ih [D, 3H, I]``, gates r, z, n): ``[B, T, D*H]``,
    zero past each sequence's length, as ``nn.GRU`` on packed sequences gives."""
    params = [p for d in range(w_ih.shape[0]) for p in (w_ih[d], w_hh[d], b_ih[d], b_hh[d])]
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    hidden = x.new_zeros(w_ih.shape[0], x.shape[0], w_hh.shape[2])
    data, _ = torch.gru(packed.data, packed.batch_sizes, hidden, params, True, 1, 0.0, False, w_ih.shape[0] == 2)
    out, _ = pad_packed_sequence(packed._replace(data=data), batch_first=True, total_length=x.shape[1])
    return out


@gru.register_fake
def _(x, lengths, w_ih, w_hh, b_ih, b_hh):
    return x.new_empty(x.shape[0], x.shape[1], w_ih.shape[0] * w_hh.shape[2])


def _onnx_gru(x, lengths, w_ih, w_hh, b_ih, b_hh):
    """:func:`gru` as ONNX's ``GRU`` (``linear_before_reset=1`` is PyTorch's formula)."""
    from onnxscript import INT32
    from onnxscript import opset18 as op

    directions, hidden = w_ih.shape[0], w_hh.shape[2]

    def zrn(w):  # PyTorch's gate order r, z, n along dim 1 -> ONNX's z, r, n
        return op.Concat(op.Slice(w, [hidden], [2 * hidden], [1]), op.Slice(w, [0], [hidden], [1]),
                         op.Slice(w, [2 * hidden], [3 * hidden], [1]), axis=1)

    y, _ = op.GRU(op.Transpose(x, perm=[1, 0, 2]), zrn(w_ih), zrn(w_hh), op.Concat(zrn(b_ih), zrn(b_hh), axis=1),
                  op.Cast(lengths, to=INT32.dtype), direction="bidirectional" if directions == 2 else "forward",
                  hidden_size=hidden, linear_before_reset=1)
    # [T, D, B, H] -> [B, T, D * H]
    return op.Reshape(op.Transpose(y, perm=[2, 0, 1, 3]), op.Constant(value_ints=[0, 0, -1]))


TRANSLATIONS = {torch.ops.framework.gru.default: _onnx_gru}
