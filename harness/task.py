"""Downstream tasks scored on a model's cached features of a labelled data set (e.g. a linear probe)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .features import Features
from .samples import SampleSet


class Task(ABC):
    name: str
    defaults: dict[str, Any] = {}

    def params(self, **overrides: Any) -> dict[str, Any]:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        return {**self.defaults, **overrides}

    @abstractmethod
    def evaluate(self, feats: Features, samples: SampleSet, **params: Any) -> float:
        """The model's score on the task (higher is better) from its features of `samples`."""
