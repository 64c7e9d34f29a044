"""A results store's ledger of verifications (verifications.jsonl): one JSON line per submission `verify` checked
and merged, naming the models it added to a suite and the feature checksums it verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..textfile import read_text

LEDGER = "verifications.jsonl"


def read_ledger(store: Path) -> list[dict[str, Any]]:
    """The verifications a store holds, oldest first."""
    path = store / LEDGER
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(read_text(path, "verification ledger").splitlines(), 1):
        try:
            entry = json.loads(line)
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("models"), list)
                and isinstance(entry.get("features"), dict)
            ):
                raise ValueError("not a verification")
        except ValueError as exc:
            raise BadInput(f"{path}: line {n}: {exc}") from None
        out.append(entry)
    return out


def verified_models(store: Path, suite: str) -> list[str]:
    """The models verifications added to a suite, in the order they were verified."""
    return list(dict.fromkeys(m for e in read_ledger(store) if e.get("suite") == suite for m in e["models"]))


def ledger_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True) + "\n"
