"""User-facing errors.

Every error a user can cause (a missing image, a checkpoint of the wrong kind, an unsupported precision) is raised
as a :class:`ReasonSegError` whose message is one line that says what went wrong and what to do. The CLI and the
server print that line without a traceback; anything else is a bug and keeps its traceback.
"""


class ReasonSegError(Exception):
    """Base class of errors caused by the user's input or environment."""


class InputError(ReasonSegError, ValueError):
    """A bad input: missing/corrupt image, malformed annotation, wrong argument value."""


class CheckpointError(ReasonSegError):
    """A checkpoint that cannot be loaded: not found, wrong architecture, missing parts."""


class UnsupportedError(ReasonSegError):
    """Something this hardware or library version cannot do; the message names the alternative."""
