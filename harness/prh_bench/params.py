"""Named parameters with defaults, shared by metrics and tasks, checked when they are resolved: an unknown name,
a value of the wrong type or out of range is bad input (in `validate` as in `run`), never a traceback later."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from .errors import BadInput

#: a test a parameter's value must pass, and what it expects (for the message)
Rule = tuple[Callable[[Any], bool], str]
#: seeds, counts and sizes beyond this are mistakes (and overflow int64 inside torch)
MAX_INT = 2**31 - 1


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def int_in(lo: int, hi: int = MAX_INT) -> Rule:
    return (lambda v: is_int(v) and lo <= v <= hi), f"an integer in [{lo}, {hi}]"


def number_in(lo: float, hi: float = math.inf, lo_open: bool = False) -> Rule:
    what = f"a number {'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
    return (lambda v: is_number(v) and (v > lo if lo_open else v >= lo) and v <= hi), what


def one_of(*choices: str) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _by_type(default: Any) -> Rule:
    """The rule a parameter has when its class gives none: the type of its default."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if is_int(default):
        return int_in(-MAX_INT)
    if isinstance(default, float):
        return (lambda v: is_number(v)), "a finite number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    return (lambda v: True), "anything"


class Parametrized:
    name: str
    defaults: dict[str, Any] = {}
    #: per parameter, the test its value must pass; parameters without one must have their default's type
    rules: dict[str, Rule] = {}
    #: parameters without a default, present only when given (their rules here): an option added later leaves
    #: the parameters of every run without it, and so their stored scores' keys, as they were
    optional: dict[str, Rule] = {}

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The defaults updated by `overrides`, each checked; an unknown name is an error, not silently ignored."""
        for key, value in overrides.items():
            if key not in self.defaults and key not in self.optional:
                names = [*self.defaults, *self.optional]
                near = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                known = ", ".join(sorted(names)) or "none"
                raise BadInput(f"{self.name}: unknown parameter '{key}'{hint}; known: {known}")
            test, what = self.optional.get(key) or self.rules.get(key) or _by_type(self.defaults[key])
            if not test(value):
                raise BadInput(f"{self.name}: parameter '{key}' must be {what}, got {value!r}")
        return {**self.defaults, **overrides}
