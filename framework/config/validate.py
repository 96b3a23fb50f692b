"""Checking a composed config before anything is built.

Every node with a ``_target_`` (dataset splits, features, batching, model, optimizer,
scheduler, a user's own classes) is checked against its target's call signature: unknown
keys (with the closest valid one suggested), missing required arguments, values of the
annotated type and allowed values (``Literal`` annotations). Value ranges live in one
place each: the framework's own classes refuse bad values in their constructors
(:class:`framework.errors.BadValue`), the schema's fields carry theirs
(:mod:`framework.config.schema`), and the few third-party targets the configs use
(torch's optimizers and schedulers) have theirs in :data:`THIRD_PARTY_RANGES`. Nodes
without a ``_target_`` (``trainer``, ``logger``) are checked against their schema.

:func:`validate` checks a composed config (``framework.train`` runs it for every job,
``framework.evaluate`` on the saved config). It imports the targets it checks, so a
recipe kept outside the package must already be importable (the entry points add its
folder to ``sys.path``; see :func:`framework.config.compose.add_code_dir`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.config.cross import check_groups, check_settings
from framework.config.schema import LoggerConfig, TrainerConfig
from framework.config.signature import expected, matches, signature_parameters, suggest, type_name
from framework.errors import ConfigError, Problem

SCHEMAS: dict[str, type] = {"trainer": TrainerConfig, "logger": LoggerConfig}
HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}
# arguments the framework passes itself when it instantiates these nodes
CALLER_ARGS: dict[str, set[str]] = {
    "batching": {"lengths", "seed", "even", "epoch", "num_replicas", "rank", "ids"},
    "optimizer": {"params"},
    "scheduler": {"optimizer", "total_steps"},
    "decoder": {"tokenizer"},
    "features": {"augmentation"},
    "augment": set(),
    "dataset.train": set(),
    "dataset.valid": set(),
    "dataset.test": set(),
    "dataset.prepare": set(),
}
# Ranges of third-party targets' parameters, which cannot refuse a value in the framework's
# words themselves: target prefix -> parameter -> (lowest, whether the lowest is allowed).
THIRD_PARTY_RANGES: dict[str, dict[str, tuple[float, bool]]] = {
    "torch.optim.lr_scheduler.": {"max_lr": (0, False), "pct_start": (0, False)},
    "torch.optim.": {"lr": (0, False), "weight_decay": (0, True), "momentum": (0, True)},
    "bitsandbytes.optim.": {"lr": (0, False), "weight_decay": (0, True)},
}

def validate(cfg: DictConfig) -> None:
    """Raises :class:`ConfigError` listing every mistake found in ``cfg``."""
    problems = find_problems(cfg)
    if problems:
        raise ConfigError(problems)


def find_problems(cfg: DictConfig) -> list[Problem]:
    problems: list[Problem] = []
    for name, schema in SCHEMAS.items():
        if isinstance(cfg.get(name), DictConfig):
            _check_schema_node(cfg[name], schema, name, problems)
    model_args = _brain_model_arguments(cfg, problems)
    for path, node in _target_nodes(cfg):
        if path == "brain" or (path.startswith("dataset.") and path.count(".") == 1
                               and not split_given(cfg, path.split(".")[1])):
            continue
        known_caller = path in CALLER_ARGS or path == "model" or _nested(path, cfg)
        provided = model_args if path == "model" else CALLER_ARGS.get(path, set())
        _check_target_node(node, path, provided if known_caller else None, problems)
    _check_settings_without_target(cfg, problems)
    check_settings(cfg, problems)
    return problems


# groups the framework builds itself whenever their node is not empty (a recipe may build its
# own ``model`` from plain settings; a dataset split is left out with ``dataset.<split>=null``)
BUILT_GROUPS = ("batching", "optimizer", "scheduler", "features", "augment", "decoder")


def _check_settings_without_target(cfg: DictConfig, problems: list[Problem]) -> None:
    """A group option that builds nothing (``scheduler=constant``) given settings, e.g. by an
    experiment file written for another option: they would reach no constructor."""
    for path in BUILT_GROUPS:
        node = OmegaConf.select(cfg, path, throw_on_missing=False)
        if isinstance(node, DictConfig) and len(node) and "_target_" not in node:
            keys = [str(k) for k in node.keys()]
            drop = " ".join(f"~{path}.{k}" for k in keys)
            problems.append(Problem(f"{path}.{keys[0]}", f"{path}.{keys[0]}: the chosen {path} option builds nothing, "
                                    f"so nothing takes {', '.join(keys)}; add {drop} or choose another {path} option"))


def split_given(cfg: DictConfig, split: str) -> bool:
    """Whether the dataset has the split: a null split, or one whose ``path`` is null, is left out."""
    node = cfg.dataset.get(split) if isinstance(cfg.get("dataset"), DictConfig) else None
    return isinstance(node, DictConfig) and not ("path" in node and node._get_node("path")._is_none())


def _nested(path: str, cfg: DictConfig) -> bool:
    """Whether ``path`` lies inside another target node (Hydra instantiates it with no extra arguments)."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        parent = OmegaConf.select(cfg, ".".join(parts[:i]), throw_on_missing=False)
        if isinstance(parent, DictConfig) and "_target_" in parent:
            return True
    return False


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node and path:
            yield path, node
        for key in node.keys():
            if str(key) in SCHEMAS and not path:
                continue
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _target_nodes(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _target_nodes(child, f"{path}[{i}]")


def _brain_model_arguments(cfg: DictConfig, problems: list[Problem]) -> set[str]:
    brain = cfg.get("brain")
    if not isinstance(brain, DictConfig) or "_target_" not in brain:
        return set()
    obj = import_target(brain._target_, "brain", problems)
    return set(getattr(obj, "model_arguments", ()) or ()) if obj is not None else set()


def import_target(target: str, path: str, problems: list[Problem]) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as exc:
        cause = exc.__cause__ or exc
        problems.append(Problem(f"{path}._target_", f"{path}._target_={target}: cannot import it "
                                                    f"({type(cause).__name__}: {str(cause).splitlines()[0]})"))
        return None


def _check_target_node(node: DictConfig, path: str, provided: set[str] | None, problems: list[Problem]) -> None:
    obj = import_target(node._target_, path, problems)
    if obj is None:
        return
    params, hints, accepts_any = signature_parameters(obj)
    name = getattr(obj, "__name__", str(obj))
    for key in node.keys():
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        if path == "optimizer" and key == "groups":  # the framework's own key: parameter groups by name
            check_groups(node.get("groups"), problems)
            continue
        if key not in params:
            if not accepts_any:
                problems.append(Problem(f"{path}.{key}", f"{path}.{key}: unknown key; "
                                                         f"{suggest(key, list(params), path + '.')}"))
            continue
        _check_value(node, key, hints.get(key), f"{path}.{key}", _ranges(node._target_), problems)
    if provided is None:
        return  # a recipe's own node: it may pass arguments of its own
    for pname, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and pname not in node and pname not in provided:
            problems.append(Problem(f"{path}.{pname}", f"{path}.{pname}: missing; {name} requires it "
                                                       f"(set {path}.{pname}=...)"))


def _ranges(target: str) -> dict[str, tuple[float, bool]]:
    return next((r for prefix, r in THIRD_PARTY_RANGES.items() if str(target).startswith(prefix)), {})


def _check_value(node: DictConfig, key: str, hint: Any, full_key: str, ranges: dict[str, tuple[float, bool]],
                 problems: list[Problem]) -> None:
    raw = node._get_node(key)
    if raw is not None and raw._is_missing():
        problems.append(Problem(full_key, f"{full_key}: missing value; set it with {full_key}=..."))
        return
    if isinstance(raw, DictConfig) and "_target_" in raw:
        return  # checked as a node of its own
    if raw is not None and raw._is_interpolation():
        return  # checked where it points
    try:
        value = node[key]
    except OmegaConfBaseException:
        return  # an interpolation that resolves only in a run (${hydra:...}); checked where it points
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if hint is not None and matches(value, hint) is False:
        problems.append(Problem(full_key, f"{full_key}={value!r}: {expected(hint)}"))
        return
    if key in ranges and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, inclusive = ranges[key]
        if value < low or (value == low and not inclusive):
            problems.append(Problem(full_key, f"{full_key}={value!r}: must be {'>=' if inclusive else '>'} {low:g}"))


def _check_schema_node(node: Any, schema: type, path: str, problems: list[Problem]) -> None:
    if not isinstance(node, DictConfig):
        return
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    typed = OmegaConf.structured(schema)
    for key in node.keys():
        full = f"{path}.{key}"
        if key not in fields:
            problems.append(Problem(full, f"{full}: unknown key; {suggest(str(key), list(fields), path + '.')}"))
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            _check_schema_node(node[key], hint, full, problems)
            continue
        raw = node._get_node(key)._value()
        if isinstance(raw, str) and "${" in raw:
            continue  # an interpolation: its target is checked where it is defined
        try:
            typed[key] = OmegaConf.to_container(raw) if isinstance(raw, DictConfig) else raw
        except OmegaConfBaseException:
            problems.append(Problem(full, f"{full}={raw!r}: expected {type_name(hint)}"))
            continue
        _check_metadata(full, typed[key], fields[key].metadata, problems)


def _check_metadata(full: str, value: Any, meta: collections.abc.Mapping, problems: list[Problem]) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        problems.append(Problem(full, f"{full}={value!r}: expected one of {', '.join(map(str, choices))}"))
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta.get("min"), meta.get("max")
        if low is not None and (value < low or (value == low and meta.get("min_exclusive"))):
            problems.append(Problem(full, f"{full}={value!r}: must be {'>' if meta.get('min_exclusive') else '>='} "
                                          f"{low:g}"))
        elif high is not None and (value > high or (value == high and meta.get("max_exclusive"))):
            problems.append(Problem(full, f"{full}={value!r}: must be {'<' if meta.get('max_exclusive') else '<='} "
                                          f"{high:g}"))


def missing_search_keys(params: Any, cfg: DictConfig) -> list[str]:
    """The keys of a sweeper's search space (``hydra.sweeper.params``) that the job's config
    does not have: a search over them would only run failing jobs."""
    missing = []
    for key in (params or {}):
        key = str(key)
        if key.startswith("+"):
            continue  # added on purpose
        if OmegaConf.select(cfg, key.lstrip("~"), default=_ABSENT, throw_on_missing=False) is _ABSENT:
            missing.append(key)
    return missing


_ABSENT = object()
