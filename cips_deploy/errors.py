"""The one exception type that reaches users.

Everything a user can get wrong (a missing file, a foreign checkpoint, an impossible size)
raises :class:`CipsError` with one sentence that names the problem. The CLI prints that
sentence and exits non-zero; anything else escaping is a bug and keeps its traceback.
"""


class CipsError(Exception):
    """A problem with the user's input, explained in one sentence."""


class CipsWarning(UserWarning):
    """Something the user should know that does not stop the work; the CLI prints it as one line."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after saving its work; the CLI exits with ``exit_code`` (128 + signal)."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def first_line(error: BaseException) -> str:
    """The first line of an exception's message ('' for an empty one): libraries' messages
    run over many lines (stack dumps, graph listings), and a user sees one sentence. Never
    raises: an exception whose ``__str__`` fails (or returns no string) has no message to show."""
    try:
        text = str(error).strip()
    except Exception:
        return ""
    return text.splitlines()[0] if text else ""


def describe_error(error: BaseException) -> str:
    """``ValueError: first line of the message``, or just ``ValueError`` when it is empty."""
    text = first_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
