"""Errors a user can act on (an argument, a file, a setting, a service), as opposed to bugs.

The command line prints these as one line and exits with status 2; any other exception
keeps its traceback. ConfigError (with PlacementError and StorageError), DataError,
SchemaError, RunConflict and PartsConflict are the other user errors, each beside the code
that raises it.
"""


class UsageError(ValueError):
    """An argument that cannot be used; the message names the argument and what to do."""


class EndpointError(RuntimeError):
    """The endpoint cannot answer: unreachable, bad key, unknown model, or a failing request."""


class JudgeError(RuntimeError):
    """The judge endpoint cannot be used at all (bad key, unknown model or URL)."""


class BenchUnavailable(RuntimeError):
    """lm-evaluation-harness or a task's data is not available on this machine."""
