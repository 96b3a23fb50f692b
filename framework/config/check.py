"""Config checks that run before anything is built: unknown keys (with the closest valid
one suggested) and values of the wrong type.

Hydra already refuses a misspelled ``key=value`` and a wrong type for keys covered by a
schema, but it suggests ``+key=value`` for the former and accepts ``+key`` / ``++key``
anywhere. :func:`check_command_line` composes the command line first and rewrites those
refusals; :func:`validate` walks the composed config against the schemas, which catches
keys added with ``+``/``++`` or by a config file.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from framework.config.schema import (
    DynamicBatchingConfig,
    FeaturesConfig,
    FixedBatchingConfig,
    HDF5SplitConfig,
    LoggerConfig,
    ManifestSplitConfig,
    SortedBatchingConfig,
    TrainerConfig,
)

BY_TARGET = {s._target_: s for s in (FixedBatchingConfig, SortedBatchingConfig, DynamicBatchingConfig,
                                     FeaturesConfig, ManifestSplitConfig, HDF5SplitConfig)}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class ConfigError(ValueError):
    """One or more config mistakes, each on its own line."""


def _suggest(key: str, valid: list[str], path: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {path}{close[0]}?"
    return "valid keys: " + ", ".join(sorted(valid))


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    name = TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
    return name + (" or null" if type(None) in typing.get_args(hint) else "")


def _check_node(node: Any, schema: type, path: str, errors: list[str]) -> None:
    if not isinstance(node, DictConfig):
        return
    hints = typing.get_type_hints(schema)
    fields = [f.name for f in dataclasses.fields(schema)]
    typed = OmegaConf.structured(schema)
    for key in node.keys():
        if key not in hints:
            errors.append(f"{path}{key}: unknown key; {_suggest(str(key), fields, path)}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            _check_node(node[key], hint, f"{path}{key}.", errors)
            continue
        raw = node._get_node(key)._value()
        if isinstance(raw, str) and "${" in raw:
            continue  # an interpolation: its target is checked where it is defined
        try:
            typed[key] = raw if not isinstance(raw, (DictConfig,)) else OmegaConf.to_container(raw)
        except OmegaConfBaseException:
            errors.append(f"{path}{key}={raw!r}: expected {_type_name(hint)}")


def validate(cfg: DictConfig) -> None:
    """Raises :class:`ConfigError` listing every unknown key and wrongly typed value in the
    parts of ``cfg`` that have a schema (trainer, logger, batching, features, dataset splits)."""
    errors: list[str] = []
    for name, schema in (("trainer", TrainerConfig), ("logger", LoggerConfig)):
        if name in cfg:
            _check_node(cfg[name], schema, f"{name}.", errors)
    nodes = [("batching", cfg.get("batching")), ("features", cfg.get("features"))]
    dataset = cfg.get("dataset")
    if isinstance(dataset, DictConfig):
        nodes += [(f"dataset.{s}", dataset.get(s)) for s in ("train", "valid", "test")]
    for path, node in nodes:
        if isinstance(node, DictConfig) and node.get("_target_") in BY_TARGET:
            _check_node(node, BY_TARGET[node._target_], f"{path}.", errors)
    if errors:
        raise ConfigError("\n".join(errors))


def explain(exc: BaseException) -> str | None:
    """A message with a suggestion for Hydra's refusal of an unknown key or a wrong type;
    None for other errors (Hydra's own message is then clear enough)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    full_key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    text = str(cause)
    if not full_key:
        return None
    parent, _, key = full_key.rpartition(".")
    prefix = f"{parent}." if parent else ""
    if "not in" in text and dataclasses.is_dataclass(schema):
        fields = [f.name for f in dataclasses.fields(schema)]
        return f"{full_key}: unknown key; {_suggest(key, fields, prefix)}"
    if "could not be converted" in text or "Value '" in text:
        hint = typing.get_type_hints(schema).get(key) if dataclasses.is_dataclass(schema) else None
        expected = _type_name(hint) if hint is not None else "another type"
        value = text.split("'")[1] if "'" in text else "?"
        return f"{full_key}={value!r}: expected {expected}"
    return None


def first_job(overrides: list[str]) -> list[str] | None:
    """The overrides of a multirun's first job (``a=1,2`` -> ``a=1``); None when a sweep
    cannot be listed (ranges and intervals for sweeper plugins)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        try:
            value = next(iter(o.sweep_string_iterator()))
        except Exception:
            return None
        prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(o.type, "")
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        out.append(f"{prefix}{key}={value}")
    return out


def compose_command_line(overrides: list[str], config_dir: str | None = None, config_name: str = "train",
                         hydra_runtime: bool = False) -> DictConfig:
    """The config a command line composes, without running anything. With
    ``hydra_runtime``, ``${hydra:...}`` interpolations (the run dir) resolve as in a run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from framework import CONF_DIR

    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=config_name, overrides=[*extra, *overrides], return_hydra_config=hydra_runtime)
    if hydra_runtime:
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def check_command_line(overrides: list[str], config_dir: str | None = None, config_name: str = "train",
                       multirun: bool = False) -> None:
    """Raises :class:`ConfigError` for a command line with a misspelled key or a wrong type."""
    # Hydra's own settings do not change the job's config, except where configs are found
    hydra_only = [o for o in overrides if o.lstrip("+~").startswith("hydra") and not o.startswith("hydra.searchpath")]
    job = [o for o in overrides if o not in hydra_only]
    if multirun:
        job = first_job(job)
        if job is None:
            return
    try:
        cfg = compose_command_line(job, config_dir, config_name)
    except Exception as exc:
        message = explain(exc)
        if message is None:
            return  # Hydra reports this one itself, when it composes
        raise ConfigError(message) from None
    validate(cfg)
