"""The error every entry point reports in one line with exit status 2: a mistake in what
the user gave (config, data, files, a run directory), never a fault of the framework."""


class UserError(Exception):
    """A mistake in the user's input; the message names the file, key or entry and says
    what to do."""


class BadValue(UserError, ValueError):
    """A constructor refusing a value it was given (``model.dropout=1.5``): a ``ValueError``
    for Python callers, a one-line exit 2 for the command line even through Hydra's
    ``instantiate``, which wraps what a ``_target_`` raised."""
