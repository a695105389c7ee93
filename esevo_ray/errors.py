"""Errors in what a user gave (an argument, a file, a setting), as opposed to bugs.

The command line prints these as one line and exits with status 2; any other exception
keeps its traceback. ConfigError, DataError, SchemaError and RunConflict are the other
user errors, each beside the code that raises it.
"""


class UsageError(ValueError):
    """An argument that cannot be used; the message names the argument and what to do."""
