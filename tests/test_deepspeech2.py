"""DeepSpeech2: the DeepMark spec's sizes, output lengths, padding that never leaks, and the
intermediate CTC head (of both CTC models)."""

from __future__ import annotations

import pytest
import torch

from framework.models import DeepSpeech2, count_parameters
from framework.models.deepspeech2 import RecurrentLayer
from tests.helpers import tiny_conformer


def small(**kw):
    args = dict(num_classes=11, num_bins=40, conv_channels=(4, 4), hidden_size=24, num_layers=2, fc_size=24)
    args.update(kw)
    return DeepSpeech2(**args)


def test_full_spec_parameter_counts_match_deepmark():
    shared = DeepSpeech2()  # 161 bins, 7 x 1760 bidirectional RNN, shared projection, summed directions
    assert shared.rnn_input_size == 32 * 75  # 161 -> 79 -> 75 frequency bins after the convolutions
    assert 69.0e6 < count_parameters(shared) < 69.9e6
    separate = DeepSpeech2(shared_projection=False)
    assert 91.8e6 < count_parameters(separate) < 92.7e6


@pytest.mark.parametrize("frames", [40, 41, 100, 333, 1500])
def test_output_lengths_follow_the_conv_strides(frames):
    model = small().eval()
    logits, lengths = model(torch.randn(1, frames, 40), torch.tensor([frames]))
    t1 = (frames - 20) // 2 + 1
    expected = (t1 - 10) // 2 + 1
    assert lengths.item() == expected == logits.shape[1]
    assert logits.shape[-1] == 11


def test_too_short_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="too short for the convolutions"):
        small()(torch.randn(1, 20, 40), torch.tensor([20]))


@pytest.mark.parametrize("options", [
    dict(),
    dict(clip_recurrence=False),
    dict(rnn_type="gru", shared_projection=True),
    dict(rnn_type="lstm", merge="concat"),
    dict(bidirectional=False, lookahead=3),
    dict(conv_padding=((0, 10), (0, 5))),
    dict(rnn_type="gru", dropout=0.5),  # trained with dropout, evaluated without
])
def test_a_sequence_gives_the_same_output_alone_or_batched_with_longer_ones(options):
    torch.manual_seed(0)
    model = small(**options)
    model.train()
    model(torch.randn(4, 120, 40), torch.tensor([120, 90, 70, 100]))  # non-trivial running stats
    model.eval()
    lengths = torch.tensor([200, 77, 150])
    x = torch.randn(3, 200, 40)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    batched, out_lens = model(x, lengths)
    for i, n in enumerate(lengths):
        alone, alone_len = model(x[i : i + 1, :n], lengths[i : i + 1])
        assert alone_len.item() == out_lens[i].item()
        torch.testing.assert_close(alone[0], batched[i, : out_lens[i]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rnn_type,bidirectional,shared", [("gru", True, False), ("lstm", True, False),
                                                            ("gru", False, False), ("gru", True, True)])
def test_the_cpu_recurrence_over_padding_is_the_packed_one_in_outputs_and_gradients(rnn_type, bidirectional, shared):
    """On the CPU a padded batch runs unpacked (faster); valid frames must not tell the difference."""
    torch.manual_seed(0)
    layer = RecurrentLayer(6, 5, rnn_type, bidirectional, shared_projection=shared, merge="concat",
                           clip_recurrence=False).train()
    lengths = torch.tensor([9, 4, 7, 1], dtype=torch.int32)
    mask = (torch.arange(9)[None, :] < lengths[:, None])[..., None]
    x = torch.randn(4, 9, layer.rnn.input_size) * mask  # zeros on padding, as the convolutions leave it
    results = []
    for packed in (True, False):
        layer.zero_grad()
        inputs = x.clone().requires_grad_(True)
        out = layer.packed(inputs, lengths) if packed else layer.reversed_in_length(inputs, lengths) * mask
        (out * torch.linspace(-1, 1, out.shape[-1])).pow(2).sum().backward()
        results.append((out, inputs.grad, [p.grad.clone() for p in layer.rnn.parameters() if p.requires_grad]))
    (packed_out, packed_dx, packed_dw), (out, dx, dw) = results
    torch.testing.assert_close(out, packed_out)
    torch.testing.assert_close(dx, packed_dx)
    for a, b in zip(dw, packed_dw):
        torch.testing.assert_close(a, b)


def test_the_cpu_runs_unpacked_only_a_plain_gru_or_lstm_and_packs_whatever_watches_its_forward(monkeypatch):
    """A ReLU RNN's unbounded state could overflow stepping through padding; a hook, activation
    checkpointing's wrapper or an FSDP unit on the layer itself expects its forward to run."""
    calls = []
    unpacked = RecurrentLayer.reversed_in_length
    monkeypatch.setattr(RecurrentLayer, "reversed_in_length",
                        lambda layer, x, lengths: calls.append(layer.rnn_type) or unpacked(layer, x, lengths))
    x, lengths = torch.randn(2, 120, 40), torch.tensor([120, 90])

    def unpacked_layers(model) -> int:
        calls.clear()
        model(x, lengths)[0].sum().backward()
        return len(calls)

    assert unpacked_layers(small(rnn_type="gru")) == 2 and unpacked_layers(small(rnn_type="lstm")) == 2
    assert unpacked_layers(small(rnn_type="rnn", clip_recurrence=False)) == 0
    assert unpacked_layers(small(rnn_type="gru").eval()) == 2  # evaluation too: the same function
    calls.clear()
    small(rnn_type="gru")(x, torch.tensor([120, 120]))  # no padding: one plain call, nothing to unpack
    assert calls == []
    hooked, seen = small(rnn_type="gru"), []
    hooked.rnns[1].rnn.register_forward_hook(lambda *_: seen.append(1))
    assert unpacked_layers(hooked) == 1 and seen == [1]
    wrapped, forward = small(rnn_type="gru"), []  # as activation checkpointing wraps a block: its own forward
    wrapped.rnns[0].rnn.forward = lambda *a, inner=wrapped.rnns[0].rnn.forward: forward.append(1) or inner(*a)
    assert unpacked_layers(wrapped) == 1 and forward == [1]


def test_padded_frames_do_not_change_batch_norm_statistics():
    torch.manual_seed(0)
    a, b = small(), small()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 100, 40)
    a(x, torch.tensor([100, 60]))
    padded = torch.cat([x, torch.randn(2, 50, 40)], dim=1)  # garbage beyond the lengths
    b(padded, torch.tensor([100, 60]))
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys() and any("convs" in k for k in buffers_a) and "fc_bn.running_mean" in buffers_a
    for name, value in buffers_a.items():  # convolutions', recurrent layers' and the FC layer's batch norms
        torch.testing.assert_close(value, buffers_b[name], msg=name)


def test_invalid_options_are_named():
    with pytest.raises(ValueError, match="rnn_type must be one of"):
        small(rnn_type="transformer")
    with pytest.raises(ValueError, match="merge must be sum or concat"):
        small(merge="mean")
    with pytest.raises(ValueError, match=r"dropout=1.5 must be in \[0, 1\)"):
        small(dropout=1.5)


def reference_clipped_rnn(layer: RecurrentLayer, x: torch.Tensor, length: int) -> torch.Tensor:
    """The spec written out for one sequence: h_t = min(max(W x_t + U h_(t-1) + b, 0), 20)
    per direction, the reverse direction from the sequence's own last frame."""
    rnn = layer.rnn
    outs = []
    for suffix, steps in (("_l0", range(length)), ("_l0_reverse", reversed(range(length)))):
        w_ih, w_hh = getattr(rnn, "weight_ih" + suffix), getattr(rnn, "weight_hh" + suffix)
        b = getattr(rnn, "bias_ih" + suffix) + getattr(rnn, "bias_hh" + suffix)
        h = x.new_zeros(rnn.hidden_size)
        states = {}
        for t in steps:
            h = (w_ih @ x[t] + w_hh @ h + b).clamp(0, 20)
            states[t] = h
        outs.append(torch.stack([states[t] for t in range(length)]))
    return outs


@pytest.mark.parametrize("shared", [True, False])
def test_the_recurrence_is_clipped_inside_as_the_spec_says(shared):
    torch.manual_seed(0)
    layer = RecurrentLayer(6, 5, "rnn", shared_projection=shared, merge="concat").eval()
    with torch.no_grad():  # every unit follows input 0 and remembers 90% of its state
        for name, w in layer.rnn.named_parameters():
            if name.startswith("weight_hh"):
                w.copy_(torch.eye(5) * 0.9)
            elif name.startswith("bias"):
                w.zero_()
        drive = layer.projection.weight if shared else layer.rnn.weight_ih_l0
        drive.zero_()[:, 0] = 1.0
        if not shared:
            layer.rnn.weight_ih_l0_reverse.copy_(drive)
    lengths = torch.tensor([9, 6])
    x = torch.zeros(2, 9, 6)
    x[:, :4, 0], x[:, 4:, 0] = 10.0, -6.0  # the state would reach 34 before it falls
    mask = torch.arange(9)[None] < lengths[:, None]
    out = layer(x, lengths, mask)
    assert out.max() == 20.0  # the clip bites
    inner = layer.bn(layer.projection(x) if shared else x, mask)
    for i, n in enumerate(lengths.tolist()):
        fwd, bwd = reference_clipped_rnn(layer, inner[i], n)
        torch.testing.assert_close(out[i, :n], torch.cat([fwd, bwd], -1), rtol=1e-5, atol=1e-5)
        assert not out[i, n:].any()
    unclipped = RecurrentLayer(6, 5, "rnn", shared_projection=shared, merge="concat", clip_recurrence=False).eval()
    unclipped.load_state_dict(layer.state_dict())
    assert not torch.allclose(unclipped(x, lengths, mask), out)  # relu inside, clip only after the layer


def test_fused_and_clipped_recurrence_agree_while_no_state_reaches_the_clip():
    torch.manual_seed(0)
    clipped = small(num_layers=2)
    fused = small(num_layers=2, clip_recurrence=False)
    fused.load_state_dict(clipped.state_dict())
    x, lengths = torch.randn(3, 120, 40) * 0.1, torch.tensor([120, 90, 70])
    a, _ = clipped(x, lengths)
    b, _ = fused(x, lengths)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    a.sum().backward()
    assert all(p.grad is not None for p in clipped.parameters() if p.requires_grad)


@pytest.mark.parametrize("shared", [True, False])
def test_the_clipped_recurrence_backward_matches_autograd_through_the_spec(shared):
    torch.manual_seed(0)
    layer = RecurrentLayer(6, 5, "rnn", shared_projection=shared, merge="concat").double().eval()
    with torch.no_grad():
        layer.rnn.weight_hh_l0.mul_(4)  # states reach the clip at 20 on some steps
    lengths = torch.tensor([9, 6])
    x = (torch.randn(2, 9, 6, dtype=torch.double) * 6).requires_grad_()
    mask = torch.arange(9)[None] < lengths[:, None]
    probe = torch.randn(2, 9, 10, dtype=torch.double)
    params = [p for p in layer.parameters() if p.requires_grad]

    out = layer(x, lengths, mask)
    assert (out == 20).any() and (out[out > 0] < 20).any()
    ours = torch.autograd.grad((out * probe).sum(), [x, *params])

    inner = layer.bn(layer.projection(x) if shared else x, mask)
    total = 0
    for i, n in enumerate(lengths.tolist()):
        fwd, bwd = reference_clipped_rnn(layer, inner[i], n)
        total = total + (torch.cat([fwd, bwd], -1).clamp(0, 20) * probe[i, :n]).sum()
    reference = torch.autograd.grad(total, [x, *params], allow_unused=True)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    plain, dropped = small(), small(dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout adds no parameters
    x, lengths = torch.randn(2, 60, 40), torch.tensor([60, 45])
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x, lengths)[0], dropped(x, lengths)[0])
    dropped.train()
    assert not torch.allclose(dropped(x, lengths)[0], dropped(x, lengths)[0])


@pytest.mark.parametrize("build, layers", [
    (lambda **kw: small(rnn_type="gru", dropout=0.2, **kw), lambda m: m.rnns),
    (tiny_conformer, lambda m: m.blocks),
], ids=["deepspeech2", "conformer"])
def test_an_intermediate_ctc_head_reads_the_chosen_layer_in_training_only(build, layers):
    torch.manual_seed(0)
    model = build(intermediate_layer=1)  # 2 layers: the head on the first
    x, lengths = torch.randn(3, 120, 40), torch.tensor([120, 90, 70])
    logits, out_lens, lower = model.train()(x, lengths)
    assert lower.shape == logits.shape and not torch.allclose(lower, logits)
    lower.sum().backward()  # the head's gradient reaches the layers below it, not the last one
    first, last = layers(model)
    assert all(p.grad is None or not p.grad.any() for p in last.parameters())
    assert any(p.grad is not None and p.grad.any() for p in first.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.intermediate_output.parameters())
    assert len(model.eval()(x, lengths)) == 2  # evaluation, decoding and export see logits and lengths only
    for bad in (2, 1.5, True):
        with pytest.raises(ValueError, match=rf"intermediate_layer={bad!r}: must be one of the .* layers 1\.\.1"):
            build(intermediate_layer=bad)
    with pytest.raises(ValueError, match="has no layer below the last"):
        build(intermediate_layer=1, num_layers=1)
