"""Downstream tasks scored on a model's cached features of a labelled data set (e.g. a linear probe)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .features import Features
from .params import Parametrized
from .samples import SampleSet


class Task(Parametrized, ABC):
    """A downstream task; `name` and `defaults` (parameters) come with Parametrized."""

    #: the score's direction (bits per byte: lower is better); the paper's tasks-solved count takes only
    #: higher-is-better tasks
    higher_is_better: bool = True
    #: a per-sample score the task reads from the features (run only on models whose backend computes it)
    sample_score: str | None = None

    @abstractmethod
    def evaluate(self, feats: Features, samples: SampleSet, **params: Any) -> float:
        """The model's score on the task from its features of `samples`."""
