"""Configs: their schemas, composing a command line, and checking what was composed.

compose   composing a command line without running it (the one user of Hydra's internals)
validate  checking a composed config against its targets' signatures and the schemas
explain   Hydra's refusals of a command line as one-line messages
signature what a target accepts and whether a value fits its annotation
schema    the trainer and logger options (the nodes without a ``_target_``)
"""

from framework.config.compose import check_command_line, compose_command_line
from framework.config.validate import split_given, validate
from framework.errors import ConfigError

__all__ = ["ConfigError", "check_command_line", "compose_command_line", "split_given", "validate"]
