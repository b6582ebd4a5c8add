"""The one exception family the CLI turns into a one-sentence message (exit status 2).

Every error caused by the user's input — a config key, a data row, a model folder — derives from
:class:`UserError`, so the command line can tell it apart from a bug, which keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user; ``str(exc)`` is the whole message, naming file, line and field or key."""
