"""Mixed precision: autocast contexts, loss scaling for fp16, the optimizer step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``precision`` for training, ``eval_precision`` (default: the same) for evaluation.

    fp16 uses a GradScaler and needs CUDA; bf16 runs on CUDA and CPU.
    """

    def __init__(self, precision: str, device: torch.device, eval_precision: str | None = None) -> None:
        for name, value in (("precision", precision), ("eval_precision", eval_precision)):
            if value is not None and value not in DTYPES:
                raise ValueError(f"trainer.{name} must be one of {sorted(DTYPES)}, got {value!r}")
        if "fp16" in (precision, eval_precision) and device.type != "cuda":
            raise ValueError(
                f"trainer.precision=fp16 needs a CUDA device (this run uses {device.type}); "
                "use trainer.precision=bf16 or fp32 on CPU"
            )
        self.device = device
        self.train_dtype = DTYPES[precision]
        self.eval_dtype = DTYPES[eval_precision or precision]
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self, training: bool = True) -> contextlib.AbstractContextManager:
        dtype = self.train_dtype if training else self.eval_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def clip(
        self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], max_grad_norm: float | None
    ) -> torch.Tensor | None:
        """Unscales the gradients (fp16) and clips their global norm to ``max_grad_norm``.
        Returns the norm before clipping (a device tensor, no host sync), or None when
        clipping is off (the norm is then not computed at all)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if not max_grad_norm:
            return None
        norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_grad_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # sharded (fsdp): a DTensor

    def apply_step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                   max_grad_norm: float | None, step_loss: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        """Clips, then steps unless the loss or the gradients are not finite. Returns
        (whether the step was applied, the gradient norm before clipping)."""
        norm = self.clip(optimizer, params, max_grad_norm)
        if self.scaler is not None:
            # fp16: GradScaler skips steps with inf/nan gradients itself and lowers its
            # scale; only a non-finite loss is a fault
            self.step(optimizer)
            return bool(torch.isfinite(step_loss)), norm
        ok = torch.isfinite(step_loss) if norm is None else torch.isfinite(norm) & torch.isfinite(step_loss)
        finite = bool(ok)  # the one host sync per step: a non-finite step must not be applied
        if finite:
            self.step(optimizer)
        return finite, norm

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


class BufferSnapshot:
    """The model's buffers (batch-norm statistics) copied aside before a step and put back
    after a step that is not applied, so such a step leaves the model exactly as before."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.buffers = list(module.buffers())
        self.copy = [b.clone() for b in self.buffers]

    def take(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.copy, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.copy)
