"""User errors: bad input that the person running encnet can fix.

``python -m encnet`` prints a :class:`UserError` as one line and exits with status 2::

    encnet: error: <what was wrong, what was expected, what to do>

(``--debug`` shows its traceback instead). Any other exception is a bug of
encnet, or of a library under it, and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: a setting, a file or a folder the user gave.

    Its message is one line that says what was wrong, what was expected and
    what to do. A ValueError, so that code catching the ValueErrors encnet
    raised for bad settings before this class existed still catches them.
    """


def one_line(error: BaseException) -> str:
    """The message of ``error``, as one line.

    A DataLoader worker that raises re-raises the error in the main process
    with a message that embeds the worker's traceback ("Caught UserError in
    DataLoader worker process 0. Original Traceback ..."); the original
    message is its last line, after ``module.ClassName: ``.
    """
    text = str(error)
    if "\nOriginal Traceback" not in text:
        return text
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith((name, f"{type(error).__qualname__}: "))]
    return lines[-1].split(": ", 1)[1] if lines else text.splitlines()[0]
