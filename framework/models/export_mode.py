"""Whether a forward runs under torch.export (and so torch.onnx): shapes are symbolic then, so
no Python number may be taken from a tensor and every layer takes its padded path, which
gives the same outputs on unpadded inputs."""

from __future__ import annotations

import torch


def exporting() -> bool:
    if torch.jit.is_scripting():
        return False  # TorchScript runs the eager code, checks included, with lengths known at run time
    # Under torch.compile dynamo answers True to is_exporting() as well (torch 2.11 folds every
    # "am I being traced" question to True); torch.export traces without dynamo (strict=False),
    # so a real export is is_exporting() outside dynamo. torch.compile keeps the eager paths
    # (cuDNN's fused RNN, packed sequences), which it compiles or breaks the graph around.
    return torch.compiler.is_exporting() and not torch.compiler.is_dynamo_compiling()
