"""``python -m framework.new_recipe NAME [--from asr_ctc] [--dir .]``: start a recipe of your own.

Copies a working recipe's Brain into ``NAME/brain.py`` and writes ``NAME/recipe/NAME.yaml``,
an option of the ``recipe`` config group that starts from the chosen recipe's settings. It
trains as is, and behaves like the built-in recipes (the command line, ``experiment=``
files and ``debug=default`` override it):

    python -m framework.train --config-dir NAME recipe=NAME

Edit ``brain.py`` (the hooks) and ``recipe/NAME.yaml`` (groups and keys of your own);
models, datasets, features or losses of your own plug in by ``_target_: module.Class``
with the module in ``NAME/``. Nothing in the framework's package needs to change.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from framework.cli import exit_on_error
from framework.errors import UserError
from framework.paths import REPO_ROOT

TEMPLATE = """\
# @package _global_
# The {name} recipe, started from the framework's {source} recipe (conf/recipe/{source}.yaml).
# Run:      python -m framework.train --config-dir {folder} recipe={name} [overrides]
# Check:    python -m framework.validate --config-dir {folder} recipe={name}
# Evaluate: python -m framework.evaluate <run dir>
defaults:
  - {source}   # the settings of the recipe this one started from
  - _self_

brain:
  _target_: brain.{brain_class}   # {folder}/brain.py
code_dir: {code_dir}   # where brain.py (and any module of yours) is imported from

# Your own keys go here (a recipe declares its keys here), and any group can be chosen
# or overridden, e.g.
# defaults:
#   - {source}
#   - override /model: ds2
#   - _self_
# trainer:
#   max_epochs: 20
"""


def create(name: str, source: str = "asr_ctc", directory: str | Path = ".") -> Path:
    recipe_dir = REPO_ROOT / "recipes" / source
    brain_file = recipe_dir / "brain.py"
    if not brain_file.is_file():
        available = sorted(p.name for p in (REPO_ROOT / "recipes").iterdir() if (p / "brain.py").is_file())
        raise UserError(f"no recipe {source!r} to start from; available: {', '.join(available)}")
    if (REPO_ROOT / "conf" / "recipe" / f"{name}.yaml").is_file():
        raise UserError(f"{name!r} is the name of a built-in recipe; choose another name")
    target = Path(directory) / name
    if target.exists():
        raise UserError(f"{target} already exists; choose another name or remove it")
    match = re.search(r"^class (\w+)\(Brain\)", brain_file.read_text(), re.M)
    if match is None:
        raise UserError(f"{brain_file} defines no Brain subclass")
    tmp = target.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(brain_file, tmp / "brain.py")
    (tmp / "recipe").mkdir()
    (tmp / "recipe" / f"{name}.yaml").write_text(TEMPLATE.format(name=name, source=source, folder=target,
                                                                 brain_class=match.group(1), code_dir=target.resolve()))
    tmp.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.new_recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--from", dest="source", default="asr_ctc", help="the recipe to start from (recipes/<name>)")
    parser.add_argument("--dir", default=".", help="where to create the recipe folder")
    args = parser.parse_args(argv)
    target = exit_on_error(lambda: create(args.name, args.source, args.dir))
    print(f"created {target}/brain.py and {target}/recipe/{args.name}.yaml\n"
          f"train it: python -m framework.train --config-dir {target} recipe={args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
