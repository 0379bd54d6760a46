"""Errors in what the user gave us (a file, a field, an argument), as opposed to bugs.

Every expected failure of the command line derives from `InputError`: `python -m tutorial`
prints its message on one line, `error: <message>`, and exits with status 2 (`--debug` shows the
traceback instead). A message names the file, field or argument that is wrong and what was
expected, so that it can be fixed without reading the code. Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import json


class InputError(Exception):
    """Bad input from the user; the message names what is wrong and the fix."""


class UnknownModelError(InputError, KeyError):
    """A model name that is not in `list_models()` (a `KeyError`, as for any unknown key)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(InputError, TypeError):
    """A config override naming a field the config does not have."""


def one_line(error: BaseException) -> str:
    """The error's message on a single line (some wrapped library messages span several)."""
    return " ".join(str(error).split())


def json_object(text: str, where: str, expected: str, fix: str, error: type[InputError] = InputError) -> dict:
    """`text` parsed as a JSON object, or `error` saying so in one line: `where` (a file or an option)
    was not valid JSON (line, column, reason) or not an object; `expected` describes the object,
    `fix` how to mend a malformed one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}; {fix}") from e
    if not isinstance(value, dict):
        raise error(f"{where}: expected {expected}, got {text[:60]!r}")
    return value
