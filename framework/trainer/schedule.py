"""Learning-rate schedules that can follow a run whose length changes on resume.

:class:`OneCycle` is torch's ``OneCycleLR`` (warm-up, then cosine annealing; momentum
cycled the other way) planned over ``total_steps``. A run resumed with more or fewer steps
to go (``trainer.max_epochs`` raised, another world size or batching at an epoch boundary)
does not restart or stretch the plan from its beginning: from the step reached, the rest of
the plan is mapped onto the steps that remain, so the learning rate continues exactly where
it was and reaches the plan's end on the run's new last step. A schedule over a time budget
(``over="time"``) resumed with another budget (``trainer.max_time``) is mapped the same way:
the rest of the plan onto the time from the last step to the new budget's end. A run
extended after its plan ended keeps the final learning rate (the schedule never climbs back
up); train a new run from its weights (``trainer.init_from``) for a new schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR

from framework.errors import BadValue, UserError


class OneCycle(OneCycleLR):
    """``OneCycleLR`` with a re-plannable end (:meth:`plan_run`). Until the run's length
    changes, its learning rates are exactly ``OneCycleLR``'s.

    ``over="time"``: the position in the plan follows the seconds of the run's time budget
    (``trainer.max_time``, :meth:`plan_budget`) spent, read from ``clock`` (set by the
    Brain), so warm-up and annealing end when the budget does, whatever the speed of the
    machine."""

    def __init__(self, optimizer: Optimizer, total_steps: int, over: Literal["steps", "time"] = "steps",
                 **kwargs: Any) -> None:
        if over not in ("steps", "time"):
            raise BadValue(f"scheduler.over={over!r}: expected steps or time")
        # Set before the base class takes its first step: real steps -> planned steps.
        self.over = over
        self.clock: Callable[[], float] = lambda: 0.0  # seconds of the time budget spent (over="time")
        self.run_steps = total_steps  # optimizer steps the run takes in all
        self.anchor = (0, 0.0)  # (real step, planned step) the mapping starts from
        self.budget_s = 0.0  # over="time": the time budget the plan ends with,
        self.spent_s = 0.0  # the seconds spent at the last step,
        self.time_anchor = (0.0, 0.0)  # and (seconds spent, planned step) the mapping starts from
        max_lr = kwargs.pop("max_lr")
        if isinstance(max_lr, (int, float)):  # parameter groups with their own scale (optimizer.groups)
            max_lr = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        super().__init__(optimizer, total_steps=total_steps, max_lr=max_lr, **kwargs)

    def planned_step(self, real_step: int) -> float:
        """Where in the plan (0 .. total_steps - 1) real step ``real_step`` is."""
        last_planned = self.total_steps - 1
        if self.over == "time":  # the step is the last one taken, at spent_s
            t0, p0 = self.time_anchor
            if self.budget_s <= t0:
                return min(p0, last_planned)
            return min(max(p0 + (self.spent_s - t0) * (last_planned - p0) / (self.budget_s - t0), p0), last_planned)
        r0, p0 = self.anchor
        if self.run_steps - 1 <= r0:
            return min(p0, last_planned)
        mapped = p0 + (real_step - r0) * (last_planned - p0) / (self.run_steps - 1 - r0)
        return min(mapped, last_planned)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "clock"}

    def get_lr(self) -> list[float]:
        if self.over == "time":
            self.spent_s = self.clock()
        real = self.last_epoch
        self.last_epoch = self.planned_step(real)  # OneCycleLR reads its position from last_epoch
        try:
            return super().get_lr()
        finally:
            self.last_epoch = real

    def plan_run(self, run_steps: int) -> None:
        """The run now takes ``run_steps`` optimizer steps in all: the rest of the plan is
        mapped onto the steps from here to there."""
        if run_steps == self.run_steps or self.over == "time":
            return
        step = self.last_epoch
        if run_steps < step:
            raise UserError(f"the scheduler is at optimizer step {step}, but the resumed run takes only {run_steps} "
                            "steps in all: raise trainer.max_epochs, or keep the settings it was trained with")
        self.anchor = (step, self.planned_step(step))
        self.run_steps = run_steps

    def plan_budget(self, budget_s: float) -> None:
        """The run's time budget is now ``budget_s`` seconds (over="time"): the rest of the plan
        is mapped onto the time from the last step to the budget's end."""
        if budget_s == self.budget_s:
            return
        if self.budget_s:  # a resumed run with another budget: from where the plan is
            self.time_anchor = (self.spent_s, self.planned_step(self.last_epoch))
        self.budget_s = budget_s

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        wanted, budget_s = self.run_steps, self.budget_s  # what this run was built for
        # also torch's OneCycleLR's state, and a checkpoint from before time budgets were re-planned
        state = {"run_steps": state_dict["total_steps"], "anchor": (0, 0.0), "budget_s": budget_s, "spent_s": 0.0,
                 "time_anchor": (0.0, 0.0), **state_dict}
        super().load_state_dict(state)
        self.anchor, self.time_anchor = tuple(self.anchor), tuple(self.time_anchor)
        self.plan_run(wanted)
        self.plan_budget(budget_s)
