"""Conformer-CTC: output lengths of the x4 subsampling, padding that never leaks, learning,
the shipped sizes, and activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from framework.models import ConformerCTC, count_parameters
from framework.trainer.activation_checkpointing import apply_activation_checkpointing
from tests.conftest import ROOT
from tests.helpers import tiny_conformer

pytestmark = pytest.mark.usefixtures("one_thread")


tiny = tiny_conformer


def zero_padded(lengths: list[int], bins: int = 40) -> torch.Tensor:
    x = torch.randn(len(lengths), max(lengths), bins)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x


@pytest.mark.parametrize("frames, expected", [(7, 1), (8, 1), (10, 1), (11, 2), (100, 24), (201, 49)])
def test_output_lengths_follow_the_subsampling(frames, expected):
    model = tiny().eval()
    logits, lengths = model(torch.randn(2, frames, 40), torch.tensor([frames, frames]))
    assert lengths.tolist() == [expected, expected]
    assert logits.shape == (2, expected, 11)
    assert ConformerCTC.output_lengths(torch.tensor([frames])).item() == expected


def test_too_short_input_is_named():
    model = tiny()
    with pytest.raises(ValueError, match="input of 6 frames is too short .* at least 7"):
        model(torch.randn(2, 50, 40), torch.tensor([50, 6]))
    with pytest.raises(ValueError, match="num_bins=6 is too few"):
        tiny(num_bins=6)


def test_a_sequence_gives_the_same_output_alone_or_batched_with_longer_ones():
    torch.manual_seed(0)
    model = tiny()
    model(torch.randn(4, 120, 40), torch.tensor([120, 90, 70, 100]))  # non-trivial batch-norm statistics
    model.eval()
    lengths = [200, 77, 150, 7]  # 7 frames: the shortest input, one output frame
    x = zero_padded(lengths)
    batched, out_lengths = model(x, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, alone_length = model(x[i : i + 1, :n], torch.tensor([n]))
        assert alone_length.item() == out_lengths[i].item()
        torch.testing.assert_close(alone[0], batched[i, : out_lengths[i]], rtol=1e-4, atol=1e-5)


def test_padding_changes_neither_training_outputs_nor_batch_norm_statistics():
    torch.manual_seed(0)
    a = tiny()
    b = copy.deepcopy(a)
    lengths = torch.tensor([100, 60])
    x = zero_padded([100, 60])
    garbage = x.clone()
    garbage[1, 60:] = torch.randn(40, 40) * 5
    out_a, out_lengths = a(x, lengths)
    out_b, _ = b(garbage, lengths)
    torch.testing.assert_close(out_a[1, : out_lengths[1]], out_b[1, : out_lengths[1]])
    for (name, buf_a), (_, buf_b) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(buf_a, buf_b, msg=name)


def test_a_few_steps_reduce_the_ctc_loss():
    torch.manual_seed(0)
    model = tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    lengths = torch.tensor([80, 64, 72, 56])
    x = zero_padded(lengths.tolist())
    targets = torch.randint(1, 11, (4, 5))
    losses = []
    for _ in range(25):
        logits, out_lengths = model(x, lengths)
        loss = ctc(logits.log_softmax(-1).transpose(0, 1), targets, out_lengths, torch.full((4,), 5))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # the first steps only learn to emit blanks (5 -> 2.3); learning the targets is what follows
    assert losses[-1] < 0.6 * losses[5], losses


def build_config(name: str, num_bins: int, num_classes: int) -> ConformerCTC:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return instantiate(cfg.model, num_bins=num_bins, num_classes=num_classes)


def test_shipped_sizes():
    medium = build_config("conformer_m", 80, 29)
    assert 25e6 < count_parameters(medium) < 35e6
    assert len(medium.blocks) == 18
    small = build_config("conformer_small", 40, 29)
    assert 0.5e6 < count_parameters(small) < 2e6
    assert 64 <= small.d_model <= 144 and 4 <= len(small.blocks) <= 6


def test_activation_checkpointing_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = tiny(dropout=0.1)
    checkpointed = copy.deepcopy(plain)
    assert apply_activation_checkpointing(checkpointed, ["blocks"]) == ["blocks.0", "blocks.1"]
    lengths = torch.tensor([90, 50, 70])
    x = zero_padded(lengths.tolist())
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks
        logits, _ = model(x, lengths)
        logits.square().mean().backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, p), (_, q) in zip(plain.named_buffers(), checkpointed.named_buffers()):
        torch.testing.assert_close(p, q, msg=name)  # batch-norm statistics updated once, not twice
