"""Bookkeeping of one training epoch: loss, steps, examples, padding, throughput and the
time spent waiting for data; its figures are the whole run's, over every rank.

Its state goes into mid-epoch checkpoints, so the figures of an interrupted and resumed
epoch are those of the whole epoch, as if it had run straight through.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from framework.trainer import distributed


class EpochMeter:
    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)  # over applied steps; read once per log interval
        self.applied_steps = 0  # optimizer steps applied (finite)
        self.steps = 0  # optimizer steps attempted
        self.micro_batches = 0
        self.examples = 0
        self.padded_elements = 0
        self.real_elements = 0
        self.lengths_s = 0.0  # sum of the examples' lengths (seconds of audio for audio datasets)
        self.busy_s = 0.0  # wall time of this epoch's training so far
        self.wait_s = 0.0  # of which waiting for the next batch
        self._mark: float | None = None

    # ------------------------------------------------------------------ timing
    def start(self) -> None:
        self._mark = time.perf_counter()

    def waited(self, seconds: float) -> None:
        self.wait_s += seconds

    def pause(self) -> None:
        """Stops the clock (the epoch's training is over, or interrupted)."""
        if self._mark is not None:
            self.busy_s += time.perf_counter() - self._mark
            self._mark = None

    # ----------------------------------------------------------------- counting
    def add_step(self, sizes: list[int], padded: int, real: int, lengths_s: float, loss: torch.Tensor | None) -> None:
        """One optimizer step over micro-batches of ``sizes`` examples; ``loss`` None when it
        was not applied."""
        self.steps += 1
        self.micro_batches += len(sizes)
        self.examples += sum(sizes)
        self.padded_elements += padded
        self.real_elements += real
        self.lengths_s += lengths_s
        if loss is not None:
            self.loss_sum += loss
            self.applied_steps += 1

    def mean_loss(self) -> float:
        """The epoch's training loss: the mean step loss over applied steps and all ranks."""
        total = torch.stack([self.loss_sum.double(), torch.tensor(float(self.applied_steps), device=self.loss_sum.device,
                                                                  dtype=torch.float64)])
        total = distributed.all_reduce_sum(total)
        return (total[0] / total[1].clamp(min=1)).item()

    def summary(self) -> dict[str, float]:
        """The epoch's figures over every rank (a collective: every rank calls it): its
        examples, audio and padding summed, its time the slowest rank's."""
        device = self.loss_sum.device
        sums = distributed.all_reduce_sum(torch.tensor(
            [self.examples, self.lengths_s, self.wait_s, self.busy_s, self.padded_elements, self.real_elements,
             self.micro_batches], dtype=torch.float64, device=device)).tolist()
        examples, lengths_s, wait_s, busy_sum, held, real, micro_batches = sums
        busy = max(distributed.all_reduce_max(torch.tensor(self.busy_s, dtype=torch.float64, device=device)).item(),
                   1e-9)
        return {
            "steps": self.steps,
            "epoch_s": busy,
            "examples": int(examples),
            "examples_per_s": examples / busy,
            "audio_s_per_s": lengths_s / busy,
            "data_wait_fraction": wait_s / max(busy_sum, 1e-9),
            "padding_fraction": 1 - real / held if held else 0.0,
            "mean_batch_size": examples / max(micro_batches, 1),
        }

    # --------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        self.pause()
        state = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "loss_sum"}
        state["loss_sum"] = float(self.loss_sum)
        self.start()
        return state

    @classmethod
    def restored(cls, device: torch.device, state: dict[str, Any]) -> EpochMeter:
        meter = cls(device)
        meter.load_state_dict(state)
        return meter

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key == "loss_sum":
                self.loss_sum.fill_(value)
            elif hasattr(self, key):
                setattr(self, key, value)


def padding(batches: list[Any]) -> tuple[int, int]:
    """(elements held, real elements) of the micro-batches' inputs."""
    held = real = 0
    for batch in batches:
        lens = batch.get("inputs_lens")
        if lens is not None:
            held += int(lens.max()) * len(lens)
            real += int(lens.sum())
    return held, real
