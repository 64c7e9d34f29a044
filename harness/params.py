"""Named parameters with defaults, shared by metrics and tasks."""

from __future__ import annotations

from typing import Any


class Parametrized:
    name: str
    defaults: dict[str, Any] = {}

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The defaults updated by `overrides`; an unknown name is an error, not silently ignored."""
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        return {**self.defaults, **overrides}
