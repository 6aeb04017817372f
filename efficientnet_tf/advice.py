"""Error messages whose way out names something the caller can pass or call.

The library is called from Python and from the command line (main.py), and each says "what to do
next" in its own words: `on_bad_image='skip'` in Python is `--on_bad_image=skip` at the command
line, and a function to call there is a command to run. Such a message is built from plain text
and `Arg` / `Call` parts with `advised`: `str(error)` is the Python wording, and `worded(error,
word)` rewords it for another caller, `word` turning each part into that caller's terms.
"""

from __future__ import annotations

import dataclasses

_NO_VALUE = object()


@dataclasses.dataclass(frozen=True)
class Arg:
    """An argument, by its setting's flat name (what the command line makes a flag of), with the
    value to give; without one, the argument itself ("pass that folder as data_dir").
    `placeholder`: the value stands for what the user fills in (DIR), so it is not quoted."""

    name: str
    value: object = _NO_VALUE
    placeholder: bool = False

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def python(self) -> str:
        if not self.has_value:
            return self.name
        return f"{self.name}={self.value if self.placeholder else repr(self.value)}"


@dataclasses.dataclass(frozen=True)
class Call:
    """A library function to call, by its import path."""

    function: str

    def python(self) -> str:
        return self.function


def advised(error_type: type[BaseException], *parts) -> BaseException:
    """`error_type` whose message is `parts` (strings, `Arg`s and `Call`s) joined, each part in
    Python's words; the parts are kept for `worded`."""
    error = error_type("".join(part if isinstance(part, str) else part.python() for part in parts))
    error.advice = parts
    return error


def worded(error: BaseException, word) -> str:
    """The message of `error` with each `Arg` and `Call` as `word(part)` says it (None: as
    Python says it); an error built without `advised` as it is."""
    parts = getattr(error, "advice", None)
    if parts is None:
        return str(error)
    return "".join(part if isinstance(part, str) else (word(part) or part.python()) for part in parts)
