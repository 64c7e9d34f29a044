"""The plugin manager: built-ins first, then entry points of group `prh_bench`, then check_pending().

`PRH_BENCH_PLUGINS` restricts which third-party plugins load: a comma-separated list of entry-point names
(empty: none). Built-ins always load; they are the harness's own backends, datasets and metrics.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import BadInput

BUILTINS = (
    "prh_bench.plugins.registry_dirs",
    "prh_bench.plugins.metrics",
    "prh_bench.plugins.tasks",
    "prh_bench.plugins.datasets.photos",
    "prh_bench.plugins.datasets.text",
    "prh_bench.plugins.datasets.images",
    "prh_bench.plugins.datasets.colors",
    "prh_bench.plugins.datasets.wheels",
    "prh_bench.plugins.backends.timm_backend",
    "prh_bench.plugins.backends.transformers_backend",
    "prh_bench.plugins.backends.glove_backend",
    "prh_bench.plugins.backends.torchvision_backend",
    "prh_bench.plugins.backends.open_clip_backend",
    "prh_bench.plugins.backends.causal_lm_backend",
    "prh_bench.plugins.backends.colorspace_backend",
)
ENV_ALLOW = "PRH_BENCH_PLUGINS"
log = logging.getLogger(__name__)


def allowed_external() -> set[str] | None:
    raw = os.environ.get(ENV_ALLOW)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def build_plugin_manager(extra: tuple[object, ...] = ()) -> pluggy.PluginManager:
    """A PluginManager with built-ins, allowed entry-point plugins, and `extra` plugin objects (tests)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTINS:
        pm.register(importlib.import_module(modname), name=modname)
    allowed = allowed_external()
    if allowed is None:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    else:
        available = {ep.name for ep in entry_points(group=hookspecs.PROJECT)}
        for name in sorted(allowed - available):
            log.warning(
                "%s names '%s', but no installed package has a prh_bench entry point of that name%s",
                ENV_ALLOW,
                name,
                f" (installed: {', '.join(sorted(available))})" if available else "",
            )
        for name in sorted(allowed & available):
            pm.load_setuptools_entrypoints(hookspecs.PROJECT, name=name)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass
class Plugins:
    """What the registered plugins provide, each item tagged with the plugin that provided it."""

    pm: pluggy.PluginManager
    backends: dict[str, Any] = field(default_factory=dict)
    loaders: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)
    manifest_dirs: list[Path] = field(default_factory=list)
    provider: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def collect(cls, pm: pluggy.PluginManager) -> Plugins:
        from .align.metric import Metric
        from .backend import ModelBackend
        from .task import Task

        bases = {"backend": ModelBackend, "metric": Metric, "task": Task}
        self = cls(pm)
        for kind, hook in (
            ("backend", pm.hook.prh_model_backends),
            ("loader", pm.hook.prh_dataset_loaders),
            ("metric", pm.hook.prh_metrics),
            ("task", pm.hook.prh_tasks),
        ):
            target = getattr(self, kind + "s")
            for impl in reversed(hook.get_hookimpls()):  # registration order
                provided = cast(dict[str, Any], impl.function() or {})
                for name, obj in provided.items():
                    if name in target:
                        raise BadInput(
                            f"{kind} '{name}' is provided by two plugins: "
                            f"{self.provider[(kind, name)]} and {impl.plugin_name}"
                        )
                    target[name] = obj
                    self.provider[(kind, name)] = impl.plugin_name
            base = bases.get(kind)
            for name, obj in target.items():  # after the duplicates: a name claimed twice is the clearer error
                if not (isinstance(obj, base) if base else callable(obj)):
                    want = f"a {base.__module__}.{base.__name__} (subclass it)" if base else "a function"
                    raise BadInput(
                        f"{kind} '{name}' of plugin {self.provider[(kind, name)]} is a {type(obj).__name__}, "
                        f"not {want}; see CONTRIBUTING.md"
                    )
        for impl in reversed(pm.hook.prh_manifest_dirs.get_hookimpls()):
            folders = cast(list[Path], impl.function() or [])
            self.manifest_dirs.extend(Path(p) for p in folders)
        return self

    def sample_scores(self) -> dict[str, bool]:
        """Every per-sample score a backend computes, by name: whether higher is better."""
        return {name: name not in b.lower_is_better for b in self.backends.values() for name in b.sample_score_names}

    def plugin_rows(self) -> list[dict[str, Any]]:
        """One row per registered plugin, with what it provides (for `prh-bench ls plugins`)."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            provides = sorted(f"{k}:{n}" for (k, n), p in self.provider.items() if p == name)
            dist = next((d.project_name for p, d in self.pm.list_plugin_distinfo() if p is plugin), "prh-bench")
            rows.append({"plugin": name, "distribution": dist, "provides": ", ".join(provides)})
        return rows


def load_plugins(extra: tuple[object, ...] = ()) -> Plugins:
    return Plugins.collect(build_plugin_manager(extra))
