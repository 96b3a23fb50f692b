"""Exporting a trained run: ONNX, torch.export or TorchScript, optionally int8, checked against
the PyTorch model on the run's test set (``python -m framework.export``, docs/export.md)."""
