"""Config checks that run before anything is built.

Every node with a ``_target_`` (dataset splits, features, batching, model, optimizer,
scheduler, a user's own classes) is checked against its target's call signature: unknown
keys (with the closest valid one suggested), missing required arguments, values of the
annotated type, allowed values (``Literal`` annotations) and ranges of common parameters.
Nodes without a ``_target_`` (``trainer``, ``logger``) are checked against their schema
(:mod:`framework.config.schema`), the one home of their defaults.

:func:`validate` checks a composed config (``framework.train`` runs it for every job,
``framework.evaluate`` on the saved config). :func:`check_command_line` composes a command
line first, turns Hydra's refusals into the same messages, names the file that set a bad
key, and refuses top-level keys that no config file declares.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from framework.config.schema import LoggerConfig, TrainerConfig
from framework.errors import UserError
from framework.trainer.threads import resolve_num_threads

SCHEMAS: dict[str, type] = {"trainer": TrainerConfig, "logger": LoggerConfig}
HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}
# arguments the framework passes itself when it instantiates these nodes
CALLER_ARGS: dict[str, set[str]] = {
    "batching": {"lengths", "seed", "even", "epoch", "num_replicas", "rank"},
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
# ranges of common parameters, by name: (lowest, lowest allowed itself)
RANGES: dict[str, tuple[float, bool]] = {
    "lr": (0, False), "max_lr": (0, False), "max_batch_length": (0, False), "batch_size": (1, True),
    "num_buckets": (1, True), "max_batch_ex": (1, True), "sortagrad": (0, True), "weight_decay": (0, True), "momentum": (0, True),
    "sample_rate": (1, True), "hidden_size": (1, True), "num_layers": (1, True), "n_mels": (1, True),
}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class ConfigError(UserError, ValueError):
    """One or more config mistakes, each on its own line."""

    def __init__(self, problems: list[Problem] | str) -> None:
        self.problems = [Problem("", problems)] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(p.text for p in self.problems))


@dataclass
class Problem:
    key: str  # the full dotted key ("" when the problem is not about one key)
    text: str


# ------------------------------------------------------------------------ validation
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
    _check_cross(cfg, problems)
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
    from framework.cli import add_code_dir

    add_code_dir(_resolved(cfg, "code_dir"))
    obj = _import(brain._target_, "brain", problems)
    return set(getattr(obj, "model_arguments", ()) or ()) if obj is not None else set()


def _resolved(node: DictConfig, key: str) -> Any:
    try:
        return node.get(key)
    except OmegaConfBaseException:  # e.g. a ${hydra:...} outside a Hydra run
        return None


def _import(target: str, path: str, problems: list[Problem]) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as exc:
        cause = exc.__cause__ or exc
        problems.append(Problem(f"{path}._target_", f"{path}._target_={target}: cannot import it "
                                                    f"({type(cause).__name__}: {str(cause).splitlines()[0]})"))
        return None


def signature_parameters(obj: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(parameters, their type hints, whether any other keyword is accepted) of a callable;
    for a class, of ``__init__`` along the base classes that ``**kwargs`` passes on to."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    functions = []
    if inspect.isclass(obj):
        for klass in obj.__mro__:
            if klass is object:
                break
            if "__init__" in vars(klass):
                functions.append(vars(klass)["__init__"])
                if not any(p.kind is p.VAR_KEYWORD for p in _signature(vars(klass)["__init__"]).values()):
                    break
        else:
            functions = functions or []
    else:
        functions = [obj]
    accepts_any = not functions
    for i, fn in enumerate(functions):
        sig = _signature(fn)
        try:
            fn_hints = typing.get_type_hints(fn)
        except Exception:  # annotations naming what cannot be imported here
            fn_hints = {}
        for name, p in sig.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL,):
                continue
            if p.kind is p.VAR_KEYWORD:
                accepts_any = accepts_any or i == len(functions) - 1
                continue
            params.setdefault(name, p)
            if name in fn_hints:
                hints.setdefault(name, fn_hints[name])
    return params, hints, accepts_any


def _signature(fn: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def _check_target_node(node: DictConfig, path: str, provided: set[str] | None, problems: list[Problem]) -> None:
    obj = _import(node._target_, path, problems)
    if obj is None:
        return
    params, hints, accepts_any = signature_parameters(obj)
    name = getattr(obj, "__name__", str(obj))
    for key in node.keys():
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        if key not in params:
            if not accepts_any:
                problems.append(Problem(f"{path}.{key}", f"{path}.{key}: unknown key; "
                                                         f"{_suggest(key, list(params), path + '.')}"))
            continue
        _check_value(node, key, hints.get(key), f"{path}.{key}", problems)
    if provided is None:
        return  # a recipe's own node: it may pass arguments of its own
    for pname, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and pname not in node and pname not in provided:
            problems.append(Problem(f"{path}.{pname}", f"{path}.{pname}: missing; {name} requires it "
                                                       f"(set {path}.{pname}=...)"))


def _check_value(node: DictConfig, key: str, hint: Any, full_key: str, problems: list[Problem]) -> None:
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
    if hint is not None and _matches(value, hint) is False:
        problems.append(Problem(full_key, f"{full_key}={value!r}: {_expected(hint)}"))
        return
    leaf = key.rsplit(".", 1)[-1]
    if leaf in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, inclusive = RANGES[leaf]
        if value < low or (value == low and not inclusive):
            problems.append(Problem(full_key, f"{full_key}={value!r}: must be {'>=' if inclusive else '>'} {low:g}"))


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``hint``; None when it cannot be told."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in args]
        return True if any(r is True for r in results) else (None if None in results else False)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if args and args[-1] is not Ellipsis and origin is not tuple:
            return all(_matches(v, args[0]) is not False for v in value)
        return True
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    return None


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if origin is typing.Literal:
        return "expected one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        if literal is not None:
            return _expected(literal) + (" or null" if optional else "")
        base = args[0] if len(args) == 1 else None
        return (f"expected {TYPE_NAMES.get(base, getattr(base, '__name__', 'another type'))}" if base else
                "expected " + " or ".join(TYPE_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args)) + (
            " or null" if optional else "")
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return "expected a list"
    return f"expected {TYPE_NAMES.get(hint, getattr(hint, '__name__', str(hint)))}"


def _check_schema_node(node: Any, schema: type, path: str, problems: list[Problem]) -> None:
    if not isinstance(node, DictConfig):
        return
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    typed = OmegaConf.structured(schema)
    for key in node.keys():
        full = f"{path}.{key}"
        if key not in fields:
            problems.append(Problem(full, f"{full}: unknown key; {_suggest(str(key), list(fields), path + '.')}"))
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
            problems.append(Problem(full, f"{full}={raw!r}: expected {_type_name(hint)}"))
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


def _check_cross(cfg: DictConfig, problems: list[Problem]) -> None:
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return
    resume = _resolved(trainer, "resume")
    if resume not in (None, "auto") and isinstance(resume, str) and not Path(resume).is_file():
        problems.append(Problem("trainer.resume", f"trainer.resume={resume}: no such checkpoint file; give a "
                                                  "checkpoint path, auto (this run dir's newest) or null"))
    threads = _resolved(trainer, "num_threads")
    try:
        resolve_num_threads(threads)  # the one rule: auto or a whole number >= 1
    except ValueError as exc:
        problems.append(Problem("trainer.num_threads", f"{exc}"))
    if _resolved(trainer, "precision") == "fp16" or _resolved(trainer, "eval_precision") == "fp16":
        import torch

        device = _resolved(trainer, "device")
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            problems.append(Problem("trainer.precision", "trainer.precision=fp16 needs a CUDA device (this run uses "
                                                         "the CPU); use trainer.precision=bf16 or fp32"))


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


# ------------------------------------------------------------------- command lines
@contextlib.contextmanager
def hydra_for(config_dir: str | None) -> Iterator[Any]:
    """A Hydra instance with the search path ``framework.train`` has (``--config-dir``
    first, as Hydra's own flag does), for composing without running."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from framework import CONF_DIR

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
        from framework import REPO_ROOT

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
        sources = Sources(hydra, config_name, job)
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a run
        search = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
        with open_dict(cfg):
            del cfg["hydra"]
        problems = find_problems(cfg)
        if search:
            from framework.sweep import missing_search_keys

            for key in missing_search_keys(search, cfg):
                problems.append(Problem(key, f"hydra.sweeper.params.{key}: the config has no {key} to search "
                                             "over; remove it from the search space or choose a config that has it"))
        declared = sources.declared_top_level()
        for key in cfg.keys():
            if str(key) not in declared and not sources.is_group(str(key)):
                problems.append(Problem(str(key), f"{key}: unknown top-level key; "
                                                  f"{_suggest(str(key), sorted(declared), '')} (a recipe declares "
                                                  "keys of its own in its config file)"))
    for p in problems:
        where = sources.origin(p.key) if p.key else None
        if where and where != "the command line":
            p.text += f" (set in {where})"
    if problems:
        raise ConfigError(problems)
    return cfg


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
        valid = _valid_keys(parent, schema, hydra, config_name, overrides)
        return f"{full_key}: unknown key; {_suggest(key, valid, parent + '.' if parent else '')}{suffix}"
    if "could not be converted" in text or "Value '" in text:
        hint = typing.get_type_hints(schema).get(key) if dataclasses.is_dataclass(schema) else None
        expected = _type_name(hint) if hint is not None else "another type"
        value = text.split("'")[1] if "'" in text else "?"
        return f"{full_key}={value!r}: expected {expected}{suffix}"
    return f"{full_key}: {text.splitlines()[0]}{suffix}"


def _valid_keys(parent: str, schema: Any, hydra: Any, config_name: str, overrides: list[str]) -> list[str]:
    if dataclasses.is_dataclass(schema):
        return [f.name for f in dataclasses.fields(schema)]
    from hydra.types import RunMode

    others = [o for o in overrides if not o.lstrip("+~").startswith(parent + ".")]  # without the refused one
    try:
        cfg = hydra.compose_config(config_name, others, run_mode=RunMode.RUN, with_log_configuration=False)
    except Exception:
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return []
    keys = [str(k) for k in node.keys() if k not in HYDRA_KEYS]
    if "_target_" in node:
        obj = _import(node._target_, parent, [])
        if obj is not None:
            keys = sorted(set(keys) | set(signature_parameters(obj)[0]))
    return keys


def _in_file(message: str) -> str | None:
    import re

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

