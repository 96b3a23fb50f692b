"""Whether a forward runs under torch.export (and so torch.onnx): shapes are symbolic then, so
no Python number may be taken from a tensor and every layer takes its padded path, which
gives the same outputs on unpadded inputs."""

from __future__ import annotations

import torch


def exporting() -> bool:
    if torch.jit.is_scripting():
        return False  # TorchScript runs the eager code, checks included, with lengths known at run time
    else:
        return torch.compiler.is_exporting()
