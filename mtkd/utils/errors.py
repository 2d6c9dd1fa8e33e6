"""The base class of every error whose message is written for the user (a leaf module: it imports nothing).

mtkd raises these where a file, an option or a state cannot be used, with a message that names the thing and
says how to fix it. The entry points (``mtkd/train.py``, ``mtkd/test.py``) and the scripts print such a
message alone, without a traceback (:func:`exit_on_user_error`); any other exception is a bug and keeps its
traceback. ``MTKD_TRACEBACK=1`` (or BasicSR's ``--debug``) shows the traceback of user errors too.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

#: Set to 1 to see the traceback of user errors as well (for reporting a bug in a message).
TRACEBACK_VARIABLE = 'MTKD_TRACEBACK'
#: Exit status of a run stopped by a user error (2, as argparse uses for bad command lines).
EXIT_USER_ERROR = 2
_WORKER_TRACEBACK = 'Original Traceback (most recent call last):'


class MtkdError(Exception):
    """An error the user can fix; its message names the file, option or state and how to fix it.

    Subclasses also derive from the built-in type callers used to catch (``ValueError``, ``RuntimeError``,
    ``FileNotFoundError``), so existing ``except`` clauses keep working. ``exit_code`` is the status the
    entry points exit with.
    """
    exit_code = EXIT_USER_ERROR


def user_message(error: BaseException) -> str:
    """The message of ``error`` for the user. PyTorch re-raises a data-loader worker's error with the worker's
    traceback in front of its message; that text is dropped, keeping the error's own message."""
    text = str(error)
    if _WORKER_TRACEBACK in text:
        worker_text = text.split(_WORKER_TRACEBACK, 1)[1]
        name = re.escape(type(error).__name__)
        starts = list(re.finditer(rf'^(?:[\w.]+\.)?{name}: ', worker_text, flags=re.MULTILINE))
        if starts:
            text = worker_text[starts[-1].end():].strip()
    return text


def show_tracebacks(argv: list[str] | None = None) -> bool:
    """Whether user errors should keep their traceback: ``MTKD_TRACEBACK=1``, or ``--debug`` on the command line."""
    argv = sys.argv if argv is None else argv
    return os.environ.get(TRACEBACK_VARIABLE, '') not in ('', '0') or '--debug' in argv


def report_user_error(error: MtkdError, prefix: str = 'mtkd') -> int:
    """Print ``<prefix>: <message>`` on stderr and return the exit status, for a script's ``main() -> int``
    (``except MtkdError as error: return report_user_error(error, 'infer')``). With :func:`show_tracebacks`, the
    error is re-raised instead (traceback shown)."""
    if show_tracebacks():
        raise error
    print(f'{prefix}: {user_message(error)}', file=sys.stderr)
    return error.exit_code


@contextlib.contextmanager
def exit_on_user_error(prefix: str = 'mtkd') -> Iterator[None]:
    """Turn an :class:`MtkdError` raised in the body into one message on stderr and ``SystemExit(exit_code)``
    (:func:`report_user_error`)."""
    try:
        yield
    except MtkdError as error:
        raise SystemExit(report_user_error(error, prefix)) from None


__all__ = ['MtkdError', 'exit_on_user_error', 'report_user_error', 'show_tracebacks', 'user_message',
           'TRACEBACK_VARIABLE', 'EXIT_USER_ERROR']
