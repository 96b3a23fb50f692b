"""The optimizer and the learning-rate schedule of a run, built from ``cfg.optimizer`` and
``cfg.scheduler`` (the schedule planned over the run's optimizer steps), and the optimizers
that need more than a ``_target_``."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from framework.errors import UserError

log = logging.getLogger(__name__)


def build_optimizer(node: DictConfig, module: torch.nn.Module) -> torch.optim.Optimizer:
    """``node``'s optimizer over ``module``'s trainable parameters, in the parameter groups of
    ``node.groups`` (the rest in a group of their own at the optimizer's learning rate)."""
    settings = OmegaConf.to_container(node, resolve=True)
    spec = settings.pop("groups", None) or []
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    factory = instantiate(settings, _partial_=True)
    if not spec:
        return factory([p for _, p in named])
    groups = param_groups(named, spec, float(settings["lr"]))
    for group in groups:
        log.info("optimizer group %s: %d tensors, lr x %.3g", group["name"], len(group["params"]), group["lr_scale"])
    return factory(groups)


def param_groups(named: list[tuple[str, torch.nn.Parameter]], spec: list[dict[str, Any]],
                 lr: float) -> list[dict[str, Any]]:
    """Parameter groups by name pattern (``optimizer.groups``): each ``{match, lr_scale}``
    takes the parameters its fnmatch pattern matches (the first matching entry wins), with
    ``lr x lr_scale``. With ``layer_decay: d`` the matched parameters are split by the layer
    index that follows the pattern's fixed part (``encoder.layers.3.*`` -> 3) and layer ``i``
    of ``L`` gets ``lr_scale x d^(L - 1 - i)``: the top layer moves most (layer-wise decay)."""
    assigned: dict[str, list[torch.nn.Parameter]] = {}
    scales: dict[str, float] = {}
    taken: set[str] = set()
    for entry in spec:
        pattern, scale, decay = entry["match"], float(entry.get("lr_scale", 1.0)), entry.get("layer_decay")
        matched = [(n, p) for n, p in named if fnmatch.fnmatchcase(n, pattern) and n not in taken]
        taken.update(n for n, _ in matched)
        if not matched:
            raise UserError(f"optimizer.groups: {pattern!r} matches no trainable parameter (their names look like "
                            f"{', '.join(n for n, _ in named[:3])}, ...)")
        if decay is None:
            assigned[pattern], scales[pattern] = [p for _, p in matched], scale
            continue
        prefix = pattern.split("*")[0]
        layers = sorted({_layer_index(n, prefix, pattern) for n, _ in matched})
        for i in layers:
            key = f"{prefix}{i}"
            assigned[key] = [p for n, p in matched if _layer_index(n, prefix, pattern) == i]
            scales[key] = scale * float(decay) ** (layers[-1] - i)
    rest = [p for n, p in named if n not in taken]
    groups = [{"name": key, "params": ps, "lr": lr * scales[key], "lr_scale": scales[key]} for key, ps in assigned.items()]
    if rest:
        groups.append({"name": "other", "params": rest, "lr": lr, "lr_scale": 1.0})
    return groups


def _layer_index(name: str, prefix: str, pattern: str) -> int:
    head = name[len(prefix):].split(".")[0]
    if not head.isdigit():
        raise UserError(f"optimizer.groups: layer_decay needs {pattern!r} to end where a layer number follows "
                        f"(e.g. encoder.layers.*); {name} has {head!r} there")
    return int(head)


def build_scheduler(node: DictConfig | None, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    max_epochs: int) -> Any:
    """``node``'s scheduler over ``steps_per_epoch x max_epochs`` optimizer steps (None for
    ``scheduler=constant``). Settings the schedule cannot run with are one line."""
    if not node:
        return None
    total = max(1, steps_per_epoch * max_epochs)
    try:
        return instantiate(node, optimizer=optimizer, total_steps=total)
    except InstantiationException as exc:
        # OneCycleLR refuses settings with a ValueError, and divides by zero when its warm-up
        # (pct_start x total steps) is exactly one step
        if not isinstance(exc.__cause__, (ZeroDivisionError, ValueError)):
            raise
        raise UserError(
            f"scheduler {node.get('_target_')} over {total} optimizer steps ({steps_per_epoch} per epoch x "
            f"trainer.max_epochs={max_epochs}): {type(exc.__cause__).__name__}: {exc.__cause__}; change the "
            "scheduler's settings (scheduler.pct_start, ...; or scheduler=constant) or train for more steps"
        ) from exc


def adamw8bit(params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas=(0.9, 0.999), weight_decay: float = 0.01,
              eps: float = 1e-8) -> torch.optim.Optimizer:
    """8-bit AdamW from bitsandbytes (``pip install 'framework[bnb]'``); CUDA only."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError(
            "optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes (GPU machines only), "
            "or use optimizer=adamw"
        ) from None
    params = list(params)
    if not params or params[0].device.type != "cuda":
        raise ValueError("optimizer=adamw8bit runs on CUDA only; this model is on the CPU: use optimizer=adamw")
    return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


class ScheduleState:
    """The scheduler as a checkpoint part. A resumed run whose length changed (more epochs,
    another world size or batching at an epoch boundary) re-plans a schedule that can
    (:meth:`framework.trainer.schedule.OneCycle.plan_run`); one that cannot is refused."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        planned = getattr(self.scheduler, "run_steps", None) or self.scheduler.state_dict().get("total_steps")
        saved = state.get("run_steps", state.get("total_steps"))
        if saved != planned and not hasattr(self.scheduler, "plan_run"):
            raise UserError(f"the run being resumed was planned over {saved} optimizer steps and now takes "
                            f"{planned}; {type(self.scheduler).__name__} cannot follow that: resume with the "
                            "trainer.max_epochs, batching and number of ranks it had (or scheduler=onecycle)")
        self.scheduler.load_state_dict(state)
