"""Padding collate: a list of example dicts becomes one :class:`Batch`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from framework.data.audio import PCM

INLINE_BYTES = 64 << 10  # a batch's tensors up to this size cross processes inside its pickle


@dataclass(frozen=True)
class SkippedExample:
    """What a dataset returns in place of an example it cannot read when ``skip_bad`` is
    on; the batch leaves it out and lists it in ``batch.skipped``."""

    id: str
    reason: str


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]``, True on each example's valid positions (before its padding)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Batch(dict):
    """A dict with attribute access. Every padded tensor ``x`` comes with ``x_lens``
    (absolute lengths along dim 0 of each example) and ``x_rel_lens`` (lengths / longest,
    as SpeechBrain recipes expect). ``skipped`` lists the examples left out as unreadable."""

    def __init__(self, *args: Any, skipped: Sequence[SkippedExample] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped = list(skipped)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"batch has no {name!r}; it has {', '.join(self)}") from None

    def __len__(self) -> int:  # number of examples, not of keys
        return len(self["id"])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in self.items()},
            skipped=self.skipped,
        )

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch({k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.items()},
                     skipped=self.skipped)

    def __reduce__(self) -> tuple:
        # From a DataLoader worker, every tensor would cross as a shared-memory segment of its
        # own, its file descriptor passed over a socket (~0.5 ms each); the small ones (lengths,
        # labels) travel inside the pickle as numpy arrays instead: ~15% off a 2-worker epoch.
        inline = {k: a for k, a in ((k, _small_array(v)) for k, v in self.items()) if a is not None}
        return _rebuild_batch, (list(self), {k: v for k, v in self.items() if k not in inline}, inline, self.skipped)


def _small_array(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array when it is a small, plain CPU tensor numpy can hold, else None."""
    if not isinstance(value, torch.Tensor) or value.device.type != "cpu" or value.layout != torch.strided \
            or value.requires_grad or value.is_conj() or value.is_neg() or value.nbytes > INLINE_BYTES:
        return None
    try:
        return value.numpy()
    except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16...)
        return None


def _rebuild_batch(keys: list[str], tensors: dict[str, Any], arrays: dict[str, np.ndarray],
                   skipped: list[SkippedExample]) -> Batch:
    return Batch({k: torch.from_numpy(arrays[k]) if k in arrays else tensors[k] for k in keys}, skipped=skipped)


def pad_sequences(tensors: Sequence[torch.Tensor | PCM], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of different length along dim 0 into ``[B, T_max, ...]`` (:class:`PCM`
    samples scaled into float32 rows as they are copied). In a DataLoader worker a result
    over ``INLINE_BYTES`` is made in shared memory, where it would be copied to reach the
    main process (as torch's default collate does); a smaller one crosses inside the batch's
    pickle."""
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    pcm = any(isinstance(t, PCM) for t in tensors)
    like = torch.empty(0) if pcm else tensors[0]  # PCM: a float32 batch on the CPU, whatever else it holds
    shape = (len(tensors), int(lengths.max()), *tensors[0].shape[1:])
    size = math.prod(shape)
    if get_worker_info() is not None and like.device.type == "cpu" and size * like.element_size() > INLINE_BYTES:
        out = like.new(like._typed_storage()._new_shared(size, device=like.device)).view(shape)
    else:
        out = like.new_empty(shape)
    rows = out.numpy() if pcm else None
    for i, t in enumerate(tensors):
        if isinstance(t, PCM):
            t.scaled(out=rows[i, : t.shape[0]])
            rows[i, t.shape[0]:] = value
        else:
            out[i, : t.shape[0]] = t
            out[i, t.shape[0]:] = value
    return out, lengths


def collate(examples: Sequence[dict[str, Any] | SkippedExample]) -> Batch:
    """Pads tensors with a length axis (dim 0), stacks scalars, lists everything else.
    :class:`SkippedExample` entries are left out and listed in ``batch.skipped``."""
    good = [ex for ex in examples if not isinstance(ex, SkippedExample)]
    batch = Batch(id=[], skipped=[ex for ex in examples if isinstance(ex, SkippedExample)])
    for key in good[0] if good else ():
        values = [ex[key] for ex in good]
        first = values[0]
        if isinstance(first, torch.Tensor) and first.dim() > 0 or isinstance(first, PCM):
            padded, lengths = pad_sequences(values)
            batch[key] = padded
            batch[f"{key}_lens"] = lengths
            batch[f"{key}_rel_lens"] = lengths.float() / lengths.max().clamp(min=1)
        elif isinstance(first, torch.Tensor) or isinstance(first, (int, float)) and not isinstance(first, bool):
            batch[key] = torch.as_tensor(values)
        else:
            batch[key] = list(values)
    return batch
