"""WideResNet sizes and activation checkpointing of its groups."""

from __future__ import annotations

import pytest
import torch

from framework.models import WideResNet, count_parameters
from framework.trainer.activation_checkpointing import apply_activation_checkpointing


def test_wrn_28_10_parameter_count_matches_the_paper():
    model = WideResNet(depth=28, widen_factor=10, num_classes=10, in_channels=3)
    assert abs(count_parameters(model) / 1e6 - 36.5) < 0.05
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 40, 101), (5, 17, 33)])
def test_any_channel_count_and_size(shape):
    model = WideResNet(depth=10, widen_factor=1, num_classes=4, in_channels=shape[0])
    assert model(torch.randn(3, *shape)).shape == (3, 4)


def test_depth_must_be_6n_plus_4():
    with pytest.raises(ValueError, match="depth must be 6n\\+4"):
        WideResNet(depth=12)


def test_checkpointed_groups_give_the_same_gradients_and_statistics():
    def run(checkpointed):
        torch.manual_seed(0)
        model = WideResNet(depth=10, widen_factor=2, num_classes=3, in_channels=1, dropout=0.3)
        if checkpointed:
            apply_activation_checkpointing(model, ["groups"])
        torch.manual_seed(1)
        model(torch.randn(4, 1, 16, 16)).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        stats = {n: b.clone() for n, b in model.named_buffers()}
        return grads, stats

    (g1, s1), (g2, s2) = run(False), run(True)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-5, atol=1e-6)
    for n in s1:
        torch.testing.assert_close(s1[n], s2[n])
