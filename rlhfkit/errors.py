"""The one exception family the CLI turns into a one-sentence message (exit status 2).

Every error caused by the user's input — a config key, a data row, a model folder — derives from
:class:`UserError`, so the command line can tell it apart from a bug, which keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user; ``str(exc)`` is the whole message, naming file, line and field or key."""


class RunStopped(RuntimeError):
    """A run stopped on purpose (a non-finite loss, out of memory): ``str(exc)`` says where, what was kept and
    which setting to change. The command line prints it as one sentence (exit status 2), like a UserError."""
