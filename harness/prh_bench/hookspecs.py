# mypy: disable-error-code="empty-body"
# (a hook specification is a signature and a docstring; the plugins' implementations have the bodies)
"""Every pluggy hook of prh-bench. Built-in plugins implement them exactly as third-party ones do."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .align.metric import Metric
    from .backend import DatasetLoader, ModelBackend
    from .task import Task

PROJECT = "prh_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def prh_manifest_dirs() -> list[Path]:
    """Folders of YAML manifests (models/, datasets/, metrics/, suites/ or flat) that this plugin ships."""


@hookspec
def prh_model_backends() -> dict[str, ModelBackend]:
    """Model backends this plugin serves, by the name a model manifest's `backend` field uses."""


@hookspec
def prh_dataset_loaders() -> dict[str, DatasetLoader]:
    """Dataset loaders this plugin serves, by the name a dataset manifest's `loader` field uses."""


@hookspec
def prh_metrics() -> dict[str, Metric]:
    """Alignment metrics this plugin provides, by the name a metric manifest's `name` field uses."""


@hookspec
def prh_tasks() -> dict[str, Task]:
    """Downstream tasks (scored on cached features of a labelled data set) this plugin provides, by name."""
