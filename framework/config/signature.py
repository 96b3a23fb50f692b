"""What a config node's target accepts: its parameters, their annotations, and whether a
value fits an annotation (``int``, ``float | None``, ``Literal[...]``, lists, ...)."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


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


def matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``hint``; None when it cannot be told."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        results = [matches(value, a) for a in args]
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
            return all(matches(v, args[0]) is not False for v in value)
        return True
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    return None


def expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if origin is typing.Literal:
        return "expected one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        if literal is not None:
            return expected(literal) + (" or null" if optional else "")
        base = args[0] if len(args) == 1 else None
        return (f"expected {TYPE_NAMES.get(base, getattr(base, '__name__', 'another type'))}" if base else
                "expected " + " or ".join(TYPE_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args)) + (
            " or null" if optional else "")
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return "expected a list"
    return f"expected {TYPE_NAMES.get(hint, getattr(hint, '__name__', str(hint)))}"


def type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    name = TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
    return name + (" or null" if type(None) in typing.get_args(hint) else "")


def resolved(node: DictConfig, key: str) -> Any:
    """``node[key]``, or None when it cannot be resolved here (e.g. a ``${hydra:...}`` outside a Hydra run)."""
    try:
        return node.get(key)
    except OmegaConfBaseException:  # e.g. a ${hydra:...} outside a Hydra run
        return None


def suggest(key: str, valid: list[str], path: str) -> str:
    if not valid and path:  # e.g. scheduler=constant: a group option without settings
        node = path.rstrip(".")
        if "." in node:
            return f"{node} takes no keys: leave {key} out"
        return f"the chosen {node} option takes no keys: leave {key} out or choose another {node} option"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {path}{close[0]}?"
    return "valid keys: " + ", ".join(sorted(valid))
