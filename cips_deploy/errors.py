"""The one exception type that reaches users, and how its sentences name things.

Everything a user can get wrong (a missing file, a foreign checkpoint, an impossible size)
raises :class:`CipsError` with one sentence that names the problem. The CLI prints that
sentence and exits non-zero; anything else escaping is a bug and keeps its traceback.
"""

import difflib
from typing import Iterable


class CipsError(Exception):
    """A problem with the user's input, explained in one sentence."""


class CipsWarning(UserWarning):
    """Something the user should know that does not stop the work; the CLI prints it as one line."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after saving its work; the CLI exits with ``exit_code`` (128 + signal)."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


# Control characters in a message come from names a user gave (a file called "a\nb.png"):
# written as escapes, they can neither break a sentence over lines nor drive the terminal.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def printable(text: str) -> str:
    """``text`` on one line: every control character written as its escape (``\\n``, ``\\x1b``)."""
    return text.translate(_ESCAPES)


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


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'cylinder'?)`` for the choices closest to a misspelt ``name``, else ''."""
    if not isinstance(name, str):
        return ""
    choices = [str(choice) for choice in choices]
    folded = {choice.lower(): choice for choice in choices}  # 'FLAT' is 'flat' misspelt too
    close = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.6)
    close = [folded[match] for match in close if folded[match] != name]
    return f" (did you mean {' or '.join(repr(match) for match in close)}?)" if close else ""
