"""All manifests: from plugins' folders and from --registry DIR; lookup by id; cross-reference checks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from .backend import option_problems
from .errors import BadInput, ManifestError
from .manager import Plugins
from .manifest import (
    DatasetManifest,
    Manifest,
    MetricManifest,
    ModelManifest,
    ScoresManifest,
    SuiteManifest,
    TagQuery,
)
from .manifest_reader import load_manifest, manifest_files

M = TypeVar("M")


def unknown_problem(path: Path, fieldname: str, value: str, known: Iterable[str], what: str) -> str:
    known = sorted(known)
    near = difflib.get_close_matches(value, known, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; known: {', '.join(known) or 'none'}"
    return f"{path}: field '{fieldname}': unknown {what} '{value}'{hint}"


@dataclass
class Registry:
    plugins: Plugins
    entries: dict[str, Manifest] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    #: manifests set aside, by id (by file when the id cannot be read): their kind and problems
    invalid: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, plugins: Plugins, extra_dirs: Iterable[Path] = ()) -> Registry:
        """Load every manifest. One that is invalid (its schema, what it names, an id defined twice, or a model,
        data set or metric it uses being invalid) is set aside with its problems, and the rest stays usable: one
        broken third-party manifest no longer stops every command. `problems()` lists them all (validate);
        `get` names them when a command asks for such an id."""
        self = cls(plugins)
        for path in manifest_files([*plugins.manifest_dirs, *extra_dirs]):
            try:
                m = load_manifest(path)
            except ManifestError as exc:
                data = exc.data if isinstance(exc.data, dict) else {}
                key = data["id"] if isinstance(data.get("id"), str) else str(path)
                self._set_aside(
                    key, str(data.get("kind") or "manifest"), exc.problems + self.plugin_problems(data, path)
                )
                continue
            if m.id in self.entries or m.id in self.invalid:
                first = self.paths.get(m.id)
                self._set_aside(
                    m.id, m.kind, [f"{path}: field 'id': '{m.id}' is already defined in {first or 'another file'}"]
                )
                continue
            self.entries[m.id] = m
            self.paths[m.id] = path
        while bad := {mid: found for mid in self.entries if (found := self.reference_problems(only=[mid]))}:
            for mid, found in bad.items():  # and again: a suite of a model set aside now names an invalid one
                self._set_aside(mid, self.entries[mid].kind, found)
        return self

    def _set_aside(self, key: str, kind: str, problems: list[str]) -> None:
        self.entries.pop(key, None)
        old = self.invalid.get(key, (kind, []))
        self.invalid[key] = (old[0], list(dict.fromkeys(old[1] + problems)))

    def problems(self) -> list[str]:
        """Every problem of every manifest set aside."""
        return [p for _, found in self.invalid.values() for p in found]

    def _unknown(self, path: Path, fieldname: str, value: str, known: Iterable[str], what: str) -> str:
        """unknown_problem, or, for an id set aside, that it is invalid and why."""
        if value in self.invalid:
            return f"{path}: field '{fieldname}': invalid {what} '{value}' ({self.invalid[value][1][0]})"
        return unknown_problem(path, fieldname, value, known, what)

    def plugin_problems(self, data: object, path: Path) -> list[str]:
        """The plugin a manifest names (backend, loader, metric) must exist; checked on the raw document too,
        so a file with schema errors still hears about an unknown backend."""
        if not isinstance(data, dict):
            return []
        named: dict[object, tuple[str, str, dict[str, Any]]] = {
            "model": ("backend", "backend", self.plugins.backends),
            "dataset": ("loader", "dataset loader", self.plugins.loaders),
            "metric": ("name", "metric", self.plugins.metrics),
        }
        if data.get("kind") not in named:
            return []
        fieldname, what, known = named[data.get("kind")]
        value = data.get(fieldname)
        if not isinstance(value, str) or value in known:
            return []
        return [unknown_problem(path, fieldname, value, known, what)]

    def reference_problems(self, only: Iterable[str] | None = None) -> list[str]:
        """Fields that name something unknown: a backend, loader, metric, dataset or model."""
        out = []
        ids = self.entries.keys() if only is None else only
        for mid in ids:
            m, path = self.entries[mid], self.paths[mid]

            if isinstance(m, (ModelManifest, DatasetManifest, MetricManifest)):
                out.extend(self.plugin_problems(m.model_dump(), path))
            if (
                isinstance(m, ModelManifest)
                and m.options
                and m.backend in self.plugins.backends
                and not self.plugins.backends[m.backend].takes_options
            ):
                out.append(f"{path}: field 'options': backend '{m.backend}' takes no options (remove them)")
            if isinstance(m, ModelManifest) and m.backend in self.plugins.backends:
                keys = self.plugins.backends[m.backend].preprocess_keys(m)
                out.extend(option_problems(str(path), "preprocess", m.preprocess, keys, f"backend '{m.backend}'"))
            if isinstance(m, DatasetManifest) and m.loader in self.plugins.loaders:
                keys = getattr(self.plugins.loaders[m.loader], "option_names", None)
                out.extend(option_problems(str(path), "options", m.options, keys, f"loader '{m.loader}'"))
            if (
                isinstance(m, ModelManifest)
                and m.backend in self.plugins.backends
                and (m.weights == "none") != self.plugins.backends[m.backend].parameter_free
            ):
                out.append(
                    f"{path}: field 'weights': "
                    + (
                        f"backend '{m.backend}' builds parameter-free models: set `weights: none`"
                        if m.weights != "none"
                        else f"'none' declares a parameter-free model, but backend '{m.backend}' "
                        "builds models with weights (pretrained, {random: SEED} or a checkpoint)"
                    )
                )
            if isinstance(m, MetricManifest) and m.name in self.plugins.metrics:
                metric = self.plugins.metrics[m.name]
                try:
                    metric.params(**m.params)
                except BadInput as exc:
                    out.append(f"{path}: field 'params': {exc}")
                if m.higher_is_better is not None and m.higher_is_better != metric.higher_is_better:
                    out.append(
                        f"{path}: field 'higher_is_better': {m.higher_is_better}, but metric '{m.name}' is "
                        f"{'higher' if metric.higher_is_better else 'lower'}-is-better (its direction is its "
                        "code's; omit the field or state it)"
                    )
            elif isinstance(m, ScoresManifest):
                models = self.of_kind(ModelManifest)
                out.extend(self._unknown(path, f"values.{k}", k, models, "model") for k in m.values if k not in models)
            elif isinstance(m, SuiteManifest):
                if not isinstance(self.entries.get(m.dataset), DatasetManifest):
                    out.append(self._unknown(path, "dataset", m.dataset, self.of_kind(DatasetManifest), "dataset"))
                for i, use in enumerate(m.metrics):
                    if not isinstance(self.entries.get(use.name), MetricManifest):
                        out.append(
                            self._unknown(path, f"metrics.{i}.name", use.name, self.of_kind(MetricManifest), "metric")
                        )
                        continue
                    ks = m.sweep.k if m.sweep is not None and m.sweep.k else [None]
                    least = [m.max_samples, min(m.sweep.samples) if m.sweep is not None and m.sweep.samples else None]
                    try:
                        for k in ks:  # each value of a sweep of k, at the fewest samples the suite asks for
                            metric, params = self.metric(use.name, use.params if k is None else {**use.params, "k": k})
                            for n in (n for n in least if n is not None):
                                metric.check_n(n, **params)
                    except BadInput as exc:
                        out.append(f"{path}: field 'metrics.{i}': {exc}" + (" (sweep.k)" if k is not None else ""))
                if isinstance(m.models, list):
                    for i, model_id in enumerate(m.models):
                        if not isinstance(self.entries.get(model_id), ModelManifest):
                            out.append(
                                self._unknown(path, f"models.{i}", model_id, self.of_kind(ModelManifest), "model")
                            )
                elif not self._tagged(m.models):
                    out.append(f"{path}: field 'models': no model matches {m.models.model_dump()}")
                if m.calibrate is not None and m.calibrate.pairs == "reference" and m.reference is None:
                    out.append(f"{path}: field 'calibrate.pairs': 'reference' needs the suite's 'reference'")
                if m.reference is not None and m.reference not in [x.id for x in self.suite_models(m)]:
                    out.append(f"{path}: field 'reference': '{m.reference}' is not one of the suite's models")
                for i, ds in enumerate(m.sweep.datasets or [] if m.sweep else []):
                    if not isinstance(self.entries.get(ds), DatasetManifest):
                        out.append(
                            self._unknown(path, f"sweep.datasets.{i}", ds, self.of_kind(DatasetManifest), "dataset")
                        )
                for i, probe in enumerate(m.probes):
                    if not isinstance(self.entries.get(probe.dataset), DatasetManifest):
                        out.append(
                            self._unknown(
                                path, f"probes.{i}.dataset", probe.dataset, self.of_kind(DatasetManifest), "dataset"
                            )
                        )
                    if probe.task not in self.plugins.tasks:
                        out.append(self._unknown(path, f"probes.{i}.task", probe.task, self.plugins.tasks, "task"))
                known_scores = {x.name for x in self.of_kind(ScoresManifest).values()} | set(
                    self.plugins.sample_scores()
                )
                for i, name in enumerate(m.scores):
                    if name not in known_scores:
                        out.append(self._unknown(path, f"scores.{i}", name, known_scores, "score"))
                if m.sweep and (m.sweep.transform is None) != (m.sweep.levels is None):
                    out.append(f"{path}: field 'sweep': give both 'transform' and 'levels', or neither")
        return out

    def metric(self, name: str, overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """The metric a suite or command names (a metric manifest id, else a plugin's metric name) and its
        parameters: the metric's defaults, then the manifest's, then `overrides`."""
        manifest = self.entries.get(name)
        if isinstance(manifest, MetricManifest):
            metric, base = self.plugins.metrics[manifest.name], manifest.params
        elif name in self.plugins.metrics:
            metric, base = self.plugins.metrics[name], {}
        else:
            near = difflib.get_close_matches(name, [*self.of_kind(MetricManifest), *self.plugins.metrics], n=3)
            hint = f" Did you mean: {', '.join(dict.fromkeys(near))}?" if near else " See `prh-bench ls metrics`."
            raise BadInput(f"unknown metric '{name}'.{hint}")
        return metric, metric.params(**{**base, **(overrides or {})})

    def score_table(self, name: str) -> ScoresManifest | None:
        return next((m for m in self.of_kind(ScoresManifest).values() if m.name == name), None)

    def of_kind(self, kind: type[M]) -> dict[str, M]:
        return {k: v for k, v in self.entries.items() if isinstance(v, kind)}

    @overload
    def get(self, mid: str) -> Manifest: ...

    @overload
    def get(self, mid: str, kind: type[M]) -> M: ...

    def get(self, mid: str, kind: type | None = None) -> Any:
        """The manifest with this id, of the given kind when one is named (then typed as that kind)."""
        m = self.entries.get(mid)
        if m is None and mid in self.invalid:
            what, found = self.invalid[mid]
            raise BadInput(f"invalid {what} '{mid}': " + "; ".join(found) + " (prh-bench validate lists every problem)")
        if m is None or (kind is not None and not isinstance(m, kind)):
            pool = self.entries if kind is None else self.of_kind(kind)
            what = "manifest" if kind is None else kind.__name__.removesuffix("Manifest").lower()
            near = difflib.get_close_matches(mid, list(pool), n=3)
            hint = f" Did you mean: {', '.join(near)}?" if near else f" See `prh-bench ls {what}s`."
            raise BadInput(f"no {what} with id '{mid}'.{hint}")
        return m

    def _tagged(self, query: TagQuery) -> list[ModelManifest]:
        return [m for m in self.of_kind(ModelManifest).values() if query.matches(m.tags)]

    def _resolve(self, suite: SuiteManifest) -> list[ModelManifest]:
        if isinstance(suite.models, TagQuery):
            return self._tagged(suite.models)
        return [m for mid in suite.models if isinstance(m := self.entries.get(mid), ModelManifest)]

    def suite_models(self, suite: SuiteManifest, extra: Iterable[str] = ()) -> list[ModelManifest]:
        """The suite's models, then the `extra` ones it lacks (a contributor's model run against the suite's zoo);
        with `revisions`, each model at each revision, as 'ID@REVISION'."""
        models = self._resolve(suite)
        models += [self.get(mid, ModelManifest) for mid in dict.fromkeys(extra) if mid not in {m.id for m in models}]
        if suite.revisions is None:
            return models
        return [m.at_revision(rev) for m in models for rev in suite.revisions]
