"""Running plugin code so that whatever it does reads as the plugin's, by name.

Three guards, used by the plugin manager while plugins load and by the renderer while they
render:

- **Failures.** A :class:`~cips_deploy.errors.CipsError` a plugin raises passes (it is the
  plugin's own clear sentence); any other exception, ``SystemExit`` included, becomes a
  CipsError that names the plugin and what it was doing (``Topology 'x' (plugin 'y') failed
  in layout (ValueError: ...).``). :func:`error_text` describes an exception whatever its
  ``__str__`` does (raises, returns a megabyte): the description must never fail itself.
  A ``KeyboardInterrupt`` at render time is the user's Ctrl-C and is never contained.
- **Output.** :func:`plugin_code` keeps what plugin code writes to stdout, through Python
  (``print``) and through file descriptor 1 (``os.write(1, ...)``, C libraries, child
  processes), off stdout, which carries results (``--json``), and shows it on stderr under
  the plugin's name.
- **The user's Ctrl-C.** Inside :func:`plugin_code` a real SIGINT arrives as
  :class:`UserInterrupt`, so that a plugin's own ``raise KeyboardInterrupt`` (its failure,
  contained while plugins load) and the user's (never contained) can be told apart.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from cips_deploy.errors import CipsError

if TYPE_CHECKING:
    from cips_deploy.runtime.plugin_manager import Registered

MESSAGE_CHARACTERS = 300  # of a plugin's message in ours: one sentence, not a dump
PLUGIN_SENTENCE_CHARACTERS = 4000  # a plugin's own CipsError longer than this is a dump, not a sentence
OUTPUT_LINES = 20  # of a plugin's stray output shown on stderr; the rest is counted
OUTPUT_BYTES = 8192
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # terminal escapes and carriage returns from a plugin


# --------------------------------------------------------------------------- describing


def _attempt(function: Callable[[], str], fallback: str) -> str:
    """``function()`` as an exact ``str``, or ``fallback`` if anything goes wrong (a plugin's
    ``__str__`` may raise, or return a str subclass whose own methods raise)."""
    try:
        return str.__str__(function())
    except Exception:  # whatever a hostile __str__ or __repr__ raises; the user's Ctrl-C passes
        return fallback


def _shorten(text: str) -> str:
    """The first line of ``text``, stripped, at most MESSAGE_CHARACTERS long."""
    lines = text[: 4 * MESSAGE_CHARACTERS].strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= MESSAGE_CHARACTERS else line[: MESSAGE_CHARACTERS - 3] + "..."


def error_text(error: BaseException) -> str:
    """``ValueError: first line of the message``, or ``ValueError``; never raises."""
    kind = _attempt(lambda: type(error).__name__, "an exception")
    text = _shorten(_attempt(lambda: str(error), "(its message cannot be shown)"))
    return f"{kind}: {text}" if text else kind


def shown(value: Any) -> str:
    """``repr(value)`` for a message, shortened; never raises (a plugin's ``__repr__`` may)."""
    kind = _attempt(lambda: type(value).__name__, "object")
    return _shorten(_attempt(lambda: repr(value), f"<a {kind} that cannot be shown>"))


def message_of(error: BaseException) -> str:
    """``str(error)`` as an exact str, or '' where its ``__str__`` fails."""
    return _attempt(lambda: str(error), "")


def plugin_cips_error(error: CipsError, label: str) -> CipsError:
    """A plugin's own CipsError, passed on if its sentence can be shown; else one naming it."""
    text = message_of(error)
    if text and len(text) <= PLUGIN_SENTENCE_CHARACTERS:
        return error
    return CipsError(f"{label} failed ({error_text(error)}).")


# --------------------------------------------------------------------------- calling


def call(entry: Registered, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, a plugin's failure named after ``entry``."""
    try:
        return function(*args, **kwargs)
    except CipsError as error:
        raise plugin_cips_error(error, entry.label) from error
    except (Exception, SystemExit) as error:  # a plugin's sys.exit() is its failure, not the user's exit
        raise CipsError(f"{entry.label} failed in {what} ({error_text(error)}).") from error


def guarded_iter(items: Any, entry: Registered, what: str = "spans") -> Iterator[Any]:
    """Iterate a plugin's iterable (often a generator: its code runs here), naming it on failure.

    ``SystemExit`` and ``GeneratorExit`` raised by the plugin's iteration are its failures too:
    let through, a ``SystemExit(0)`` in a chunker's spans ended a render with status 0 and no file.
    """
    iterator = call(entry, what, iter, items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except CipsError as error:
            raise plugin_cips_error(error, entry.label) from error
        except (Exception, SystemExit, GeneratorExit) as error:
            raise CipsError(f"{entry.label} failed in {what} ({error_text(error)}).") from error
        yield item


# --------------------------------------------------------------------------- the user's Ctrl-C


class UserInterrupt(KeyboardInterrupt):
    """Ctrl-C while plugin code ran."""


def _user_interrupt(signum: int, frame: Any) -> None:
    raise UserInterrupt()


def reraise_user_interrupt(error: BaseException) -> None:
    """Re-raise ``error`` if it is the user's Ctrl-C: only a plugin's own failures are contained."""
    if isinstance(error, UserInterrupt):
        raise error


@contextlib.contextmanager
def _sigint_as_user_interrupt() -> Iterator[None]:
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, _user_interrupt)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- stdout


def _flush_stdout() -> None:
    """Push Python's buffered stdout to file descriptor 1 (whatever that is now)."""
    for stream in {id(s): s for s in (sys.stdout, sys.__stdout__) if s is not None}.values():
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing to keep apart then
            pass


class _HeldStdout(io.TextIOBase):
    """``sys.stdout`` while plugin code runs: text goes to the capture file's descriptor, in
    order with what reaches fd 1 directly. A plugin may keep it (a logging handler made at
    import); once the capture is over it writes to stderr, never to a descriptor number that
    something else may have been given since."""

    def __init__(self, fd: int | None) -> None:
        super().__init__()
        self._fd = fd

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text = str(text)
        if self._fd is not None:
            try:
                data = text.encode("utf-8", errors="replace")
                while data:
                    data = data[os.write(self._fd, data):]
                return len(text)
            except OSError:  # the temporary file's disk is full: better unnamed on stderr than lost
                pass
        if sys.stderr is not None:
            sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        if self._fd is None and sys.stderr is not None:
            sys.stderr.flush()

    def fileno(self) -> int:
        if self._fd is None:
            raise io.UnsupportedOperation("fileno")
        return 1  # fd 1 points at the capture file meanwhile: a child process's output is held too

    def release(self) -> None:
        self._fd = None


class _StdoutCapture:
    """Holds what is written to stdout meanwhile, at both levels, in one unlinked temporary file.

    File descriptor 1 is pointed at the file (``dup2``) and ``sys.stdout`` at a
    :class:`_HeldStdout` writing to the same open file, so Python prints and raw writes keep
    their order. Without a temporary file, or with fd 1 closed, Python prints go to stderr as
    they come (unnamed) and nothing is held.
    """

    def __enter__(self) -> _StdoutCapture:
        _flush_stdout()  # what was printed before belongs on stdout, not to the plugin
        self.file = self.saved = None
        try:
            self.file = tempfile.TemporaryFile(buffering=0)
            self.saved = os.dup(1)
            os.dup2(self.file.fileno(), 1)
        except OSError:  # no temporary file, or no fd 1 to point elsewhere
            if self.saved is not None:
                os.close(self.saved)
            if self.file is not None:
                self.file.close()
            self.file = self.saved = None
        self.stream = _HeldStdout(self.file.fileno() if self.file is not None else None)
        self.redirect = contextlib.redirect_stdout(self.stream)
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.redirect.__exit__(*exc_info)
        self.stream.release()
        _flush_stdout()  # a plugin's writes to sys.__stdout__ are buffered: into the file before fd 1 returns
        if self.saved is not None:
            os.dup2(self.saved, 1)
            os.close(self.saved)

    def text(self) -> tuple[str, int]:
        """What was captured (at most OUTPUT_BYTES of it) and how many bytes were left out."""
        if self.file is None:
            return "", 0
        try:
            size = os.fstat(self.file.fileno()).st_size
            head = os.pread(self.file.fileno(), OUTPUT_BYTES, 0)
        except OSError:
            return "", 0
        finally:
            self.file.close()
        return head.decode("utf-8", errors="replace"), max(0, size - len(head))


def _show_output(plugin: str, what: str, text: str, left_out: int) -> None:
    """Each line a plugin wrote to stdout, on stderr under its name (one line per line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines[:OUTPUT_LINES]:
        click.echo(f"Plugin {plugin!r} printed {what}: {_CONTROL.sub('?', line)}", err=True)
    if len(lines) > OUTPUT_LINES or left_out:
        hidden = max(0, len(lines) - OUTPUT_LINES)
        click.echo(f"Plugin {plugin!r} printed more {what}: {hidden} line(s) and {left_out} byte(s) not shown.", err=True)


@contextlib.contextmanager
def plugin_code(plugin: str, what: str) -> Iterator[None]:
    """Run plugin code (an import, a hook, a property) with its stdout shown on stderr under
    its name, and the user's Ctrl-C raised as :class:`UserInterrupt`.

    ``what`` completes "Plugin 'x' printed ...": ``at import``, ``in register_topologies``.
    """
    with _sigint_as_user_interrupt():
        capture = _StdoutCapture()
        capture.__enter__()
        try:
            yield
        finally:
            capture.__exit__(*sys.exc_info())
            with contextlib.suppress(OSError, ValueError):  # stderr gone: nowhere left to show it
                _show_output(plugin, what, *capture.text())
