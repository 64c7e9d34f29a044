"""Reading the JSON documents results are stored in: bad input that names the file, and schema errors said
as "field 'a.b': what is wrong"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from ..errors import BadInput
from ..textfile import read_text

#: a finite number in a stored record (a NaN tolerance would pass every comparison, an infinite score rank first)
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def read_json(path: Path, what: str) -> Any:
    """A JSON file's document; bad input naming the file when it cannot be read or parsed."""
    try:
        text = read_text(path, what)
    except OSError as exc:
        raise BadInput(f"{path}: not a {what} ({type(exc).__name__}: {exc})") from None
    return parse_json(path, what, text)


def parse_json(path: Path, what: str, text: str) -> Any:
    """The document of a JSON file's text; bad input naming the file when it cannot be parsed."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"{path}: not a {what} ({type(exc).__name__}: {exc})") from None


def first_problem(exc: ValidationError) -> str:
    """The first schema error, as "field 'a.b': what is wrong"."""
    err = exc.errors()[0]
    return f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}"
