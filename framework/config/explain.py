"""Hydra's refusals of a command line, explained in the framework's one-line form.

Hydra reports an unknown key, a wrong type or a missing group option through OmegaConf's
exceptions and message strings; this module turns them into the same lines the config
check (:mod:`framework.config.validate`) writes: the key, a did-you-mean taken from the
node's signature or schema, the file that set it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.config.signature import signature_parameters, suggest, type_name
from framework.config.validate import HYDRA_KEYS, import_target


def explain(exc: BaseException, hydra: Any, config_name: str, overrides: list[str]) -> str:
    """One line for Hydra's refusal of a command line: an unknown key (with a suggestion
    taken from the node's signature or schema), a wrong type, an unknown group option."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):
        return _missing_config(exc)
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    in_file = _in_file(str(exc))
    suffix = f" (set in {in_file})" if in_file else ""
    full_key = getattr(cause, "full_key", None) if cause is not None else None
    if cause is None or not full_key:
        text = str(exc).strip().splitlines()
        return "; ".join(line.strip() for line in text[:3] if line.strip()) or type(exc).__name__
    parent, _, key = full_key.rpartition(".")
    text = str(cause)
    schema = getattr(cause, "object_type", None)
    if "not in" in text or "Could not override" in str(exc) or "is not in struct" in text:
        valid, cfg = _valid_keys(full_key, schema, hydra, config_name, overrides)
        if valid is None:
            return f"{full_key}: unknown key{suffix}"
        # (not the key itself: the config composed to find it may be another option's of its group)
        elsewhere = [p for p in _paths_named(cfg, key) if p != full_key] if cfg is not None and key not in valid else []
        if elsewhere and not difflib.get_close_matches(key, valid, n=1, cutoff=0.6):
            return f"{full_key}: unknown key; did you mean {' or '.join(elsewhere[:3])}?{suffix}"
        return f"{full_key}: unknown key; {suggest(key, valid, parent + '.' if parent else '')}{suffix}"
    if "could not be converted" in text or "Value '" in text:
        hint = typing.get_type_hints(schema).get(key) if dataclasses.is_dataclass(schema) else None
        expected = type_name(hint) if hint is not None else "another type"
        value = text.split("'")[1] if "'" in text else "?"
        return f"{full_key}={value!r}: expected {expected}{suffix}"
    return f"{full_key}: {text.splitlines()[0]}{suffix}"


def _valid_keys(full_key: str, schema: Any, hydra: Any, config_name: str, overrides: list[str],
                ) -> tuple[list[str] | None, DictConfig | None]:
    """The keys the parent node of ``full_key`` takes (None where they cannot be known), and
    the config composed without the refused override (None where it cannot be composed)."""
    parent = full_key.rpartition(".")[0]
    from hydra.types import RunMode

    def refused(override: str) -> bool:
        key = override.lstrip("+~").split("=", 1)[0]
        return key == full_key or bool(parent) and key.startswith(parent + ".")

    cfg = None
    kept = [o for o in overrides if not refused(o)]
    # without the refused override; failing that (another override is wrong too), with the
    # config group choices alone
    for attempt in (kept, [o for o in kept if "." not in o.lstrip("+~").split("=", 1)[0]]):
        try:
            cfg = hydra.compose_config(config_name, attempt, run_mode=RunMode.RUN, with_log_configuration=False)
            break
        except Exception:
            continue
    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema)], cfg
    node = (OmegaConf.select(cfg, parent) if parent else cfg) if cfg is not None else None
    if not isinstance(node, DictConfig):
        return None, cfg
    keys = [str(k) for k in node.keys() if not _internal(str(k), parent)]
    if "_target_" in node:
        obj = import_target(node._target_, parent, [])
        if obj is not None:
            keys = sorted(set(keys) | set(signature_parameters(obj)[0]))
    return keys, cfg


def _internal(key: str, parent: str) -> bool:
    """Hydra's own keys: ``_target_`` and the like, and the top-level ``hydra`` node."""
    return key in HYDRA_KEYS or key == "hydra" and not parent


def _paths_named(cfg: DictConfig, key: str) -> list[str]:
    """The full paths of the config's keys named ``key`` (``skip_bad`` -> ``dataset.train.skip_bad``)."""
    found = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                if _internal(str(k), prefix):
                    continue
                path = f"{prefix}{k}"
                if str(k) == key:
                    found.append(path)
                walk(node._get_node(k), path + ".")

    walk(cfg, "")
    return found


def _in_file(message: str) -> str | None:
    match = re.search(r"In '([^']+)'", message)
    return f"{match.group(1)}.yaml" if match else None


def _missing_config(exc: BaseException) -> str:
    options = getattr(exc, "options", None)
    missing = getattr(exc, "missing_cfg_file", None) or ""
    if missing and "/" in missing:
        group, _, name = missing.rpartition("/")
        available = ", ".join(options) if options else "none"
        return f"{group}={name}: no such option in conf/{group}/ (or the --config-dir); available: {available}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first
