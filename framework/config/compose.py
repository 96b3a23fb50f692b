"""Composing a command line's config without running it: the one module that uses Hydra's
internals (its search path, its defaults list, to name the file that set a key).

:func:`check_command_line` composes a command line, turns Hydra's refusals into one-line
messages (:mod:`framework.config.explain`), validates the result
(:mod:`framework.config.validate`), names the file that set each bad key and refuses
top-level keys that no config file declares.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from framework.config.explain import explain
from framework.config.signature import suggest
from framework.config.validate import find_problems, missing_search_keys
from framework.errors import ConfigError, Problem


def add_code_dir(path: str | None) -> None:
    """Makes the modules of a recipe kept outside the package importable (its folder first on
    ``sys.path``): a ``--config-dir`` or a recipe's ``code_dir``."""
    if path:
        path = os.path.abspath(path)
        if path not in sys.path:
            sys.path.insert(0, path)


@contextlib.contextmanager
def hydra_for(config_dir: str | None) -> Iterator[Any]:
    """A Hydra instance with the search path ``framework.train`` has (``--config-dir``
    first, as Hydra's own flag does), for composing without running."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from framework.paths import CONF_DIR

    search_path = create_config_search_path(str(CONF_DIR))
    if config_dir:
        search_path.prepend(provider="command-line", path=f"file://{Path(config_dir).resolve()}")
    previous = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name="framework", config_search_path=search_path)
    finally:
        GlobalHydra.instance().clear()
        if previous is not None:
            GlobalHydra.instance().initialize(previous)


def compose_command_line(overrides: list[str], config_dir: str | None = None, config_name: str = "train",
                         hydra_runtime: bool = False) -> DictConfig:
    """The config a command line composes, without running anything. With
    ``hydra_runtime``, ``${hydra:...}`` interpolations (the run dir) resolve as in a run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with hydra_for(config_dir) as hydra:
        cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
    if hydra_runtime:
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class Sources:
    """Which file of a composition sets which key (for naming the file of a mistake)."""

    def __init__(self, hydra: Any, config_name: str, overrides: list[str]) -> None:
        from hydra._internal.defaults_list import create_defaults_list
        from hydra.core.override_parser.overrides_parser import OverridesParser

        loader = hydra.config_loader
        parsed, repo = loader._parse_overrides_and_create_caching_repo(config_name, overrides)
        defaults = create_defaults_list(repo=repo, config_name=config_name, overrides_list=parsed, prepend_hydra=True,
                                        skip_missing=True)
        self.files: list[tuple[str, str, DictConfig]] = []  # (file, package, content)
        for d in defaults.defaults:
            if d.config_path is None or d.config_path.startswith("hydra/"):
                continue
            result = repo.load_config(d.config_path)
            if result is None or not result.path.startswith("file://"):
                continue  # the schemas in the ConfigStore
            content = OmegaConf.masked_copy(result.config, [k for k in result.config if k != "defaults"])
            self.files.append((self._display(result.path, d.config_path), d.package or "", content))
        self.command_line = {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}
        self.is_group = repo.group_exists  # a config group's name is a key its options fill

    @staticmethod
    def _display(provider_path: str, config_path: str) -> str:
        from framework.paths import REPO_ROOT

        path = (Path(provider_path.removeprefix("file://")) / f"{config_path}.yaml").resolve()
        for base in (Path.cwd(), REPO_ROOT):
            with contextlib.suppress(ValueError):
                return str(path.relative_to(base))
        return str(path)

    def origin(self, key: str) -> str | None:
        if key in self.command_line:
            return "the command line"
        for file, package, content in reversed(self.files):
            inner = key.removeprefix(package + ".") if package else key
            if package and not key.startswith(package + "."):
                continue
            if _has_key(content, inner):
                return file
        return None

    def declared_top_level(self) -> set[str]:
        keys = set()
        for _, package, content in self.files:
            keys.add(package.split(".")[0]) if package else keys.update(str(k) for k in content.keys())
        return keys - {"hydra"}


def _has_key(node: Any, dotted: str) -> bool:
    """Whether ``node`` sets the dotted key (nothing is resolved)."""
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def check_command_line(overrides: list[str], config_dir: str | None = None, config_name: str = "train",
                       multirun: bool = False) -> DictConfig | None:
    """Raises :class:`ConfigError` for a command line whose config has a mistake, naming
    where each bad key was set; returns the checked job config (``hydra.*`` overrides left
    out; None for a multirun), so a command that needs no run directory composes once."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # Hydra's own settings do not change the job's config, except where configs are found
    hydra_only = [o for o in overrides if o.lstrip("+~").startswith("hydra") and not o.startswith("hydra.searchpath")]
    job = [o for o in overrides if o not in hydra_only]
    if multirun:
        job = first_job(job)
        if job is None:
            return None
    with hydra_for(config_dir) as hydra:
        try:
            cfg = hydra.compose_config(config_name, job, run_mode=RunMode.RUN, with_log_configuration=False)
        except Exception as exc:
            raise ConfigError(explain(exc, hydra, config_name, job)) from None
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a run
        search = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
        with open_dict(cfg):
            del cfg["hydra"]
        add_code_dir(cfg.get("code_dir"))  # a recipe kept outside the package: its Brain is checked
        problems = find_problems(cfg)
        if search:
            for key in missing_search_keys(search, cfg):
                problems.append(Problem(key, f"hydra.sweeper.params.{key}: the config has no {key} to search "
                                             "over; remove it from the search space or choose a config that has it"))
        # Which file set what takes another walk of the defaults list (a quarter of a check): only to name
        # where a mistake was set, or where a key was added ('+key=...': the one way to a top-level key
        # that no file declares)
        if not problems and not any(o.startswith("+") for o in job):
            return cfg
        sources = Sources(hydra, config_name, job)
        declared = sources.declared_top_level()
        for key in cfg.keys():
            if str(key) not in declared and not sources.is_group(str(key)):
                problems.append(Problem(str(key), f"{key}: unknown top-level key; "
                                                  f"{suggest(str(key), sorted(declared), '')} (a recipe declares "
                                                  "keys of its own in its config file)"))
    for p in problems:
        where = sources.origin(p.key) if p.key else None
        if where and where != "the command line":
            p.text += f" (set in {where})"
    if problems:
        raise ConfigError(problems)
    return cfg


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
