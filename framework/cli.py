"""Command-line pieces the entry points share: Hydra-style flags, ``key=value`` overrides,
and making a user's recipe folder importable."""

from __future__ import annotations

import argparse
import os
import sys

# Hydra's flags that take a value (which may itself contain '=')
HYDRA_VALUE_FLAGS = (("--config-dir", "-cd"), ("--config-name", "-cn"), ("--config-path", "-cp"),
                     ("--cfg", "-c"), ("--package", "-p"))


def option(argv: list[str], *names: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE``; None when absent."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def hydra_overrides(argv: list[str]) -> list[str]:
    """The ``key=value`` overrides of a Hydra command line (not the values of its flags)."""
    values = {option(argv, *names) for names in HYDRA_VALUE_FLAGS}
    return [a for a in argv if "=" in a and not a.startswith("-") and a not in values]


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """argparse options plus trailing ``key=value`` config overrides; anything else is an error."""
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    if len(overrides) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    return args, overrides


def add_code_dir(path: str | None) -> None:
    """Makes the modules of a recipe kept outside the package importable."""
    if path:
        path = os.path.abspath(path)
        if path not in sys.path:
            sys.path.insert(0, path)
