"""The error every entry point reports in one line with exit status 2: a mistake in what
the user gave (config, data, files, a run directory), never a fault of the framework."""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A mistake in the user's input; the message names the file, key or entry and says
    what to do."""


class Unavailable(Exception):
    """Something the run needs cannot be reached now (a server, the network): neither the
    user's mistake nor the framework's. One line, exit status 75 (``EX_TEMPFAIL``: run it
    again later; a training run continues from its last checkpoint)."""


class BadValue(UserError, ValueError):
    """A constructor refusing a value it was given (``model.dropout=1.5``): a ``ValueError``
    for Python callers, a one-line exit 2 for the command line even through Hydra's
    ``instantiate``, which wraps what a ``_target_`` raised."""


@dataclass
class Problem:
    """One mistake in a config: the full dotted key ("" when it is not about one key) and its line."""

    key: str
    text: str


class ConfigError(UserError, ValueError):
    """One or more config mistakes, each on its own line (every problem is reported at once)."""

    def __init__(self, problems: list[Problem] | str) -> None:
        self.problems = [Problem("", problems)] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(p.text for p in self.problems))
