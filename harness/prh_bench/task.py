"""Downstream tasks scored on a model's cached features of a labelled data set (e.g. a linear probe)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .features import Features
from .params import Parametrized
from .samples import SampleSet


class Task(Parametrized, ABC):
    """A downstream task; `name` and `defaults` (parameters) come with Parametrized."""

    @abstractmethod
    def evaluate(self, feats: Features, samples: SampleSet, **params: Any) -> float:
        """The model's score on the task (higher is better) from its features of `samples`."""
