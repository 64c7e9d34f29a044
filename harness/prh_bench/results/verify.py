"""Verifying a submission (submission.py) without recomputing all of it.

Every record is checked against the registry: its suite's conditions, metrics, parameters and preparation, the
manifest versions of both models, and the feature checksums it names: those of the claimed models against the
submitted feature files (read back through their own checksums, their cache keys naming the registry's manifest
and this machine's samples), those of every other model against this machine's own features. A seeded random
sample of the records is then recomputed from those features and compared with the claimed scores within
tolerance. A submission with t edited records among M passes a sample of s with probability
C(M-t, s) / C(M, s) (`pass_probability`); the report gives it for several t.

A verified submission is merged into a results store together with one line of the store's ledger
(verifications.jsonl: what was checked, by which sample); leaderboards built from the store mark the models
it verified, as long as the store's records of them name the features it verified.
"""

from __future__ import annotations

import json
import math
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..cache_files import CorruptEntry
from ..errors import BadInput
from ..file_hash import sha256_of
from ..manifest import ModelManifest, SuiteManifest
from ..registry import Registry
from .ledger import read_ledger
from .pair_records import PairRecord, describe, scan, suite_metrics
from .submission import Submission, fields_digest, manifest_digest, submitted_records, unpack

DEFAULT_SAMPLE = 20
MAX_SHOWN = 10


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str


@dataclass
class Verification:
    """What `verify` checked and found; passed when every finding is ok."""

    submission: str  # the file's path
    submission_sha256: str
    suite: str
    models: list[str]
    seed: int = 0  # of the sample of records recomputed
    records: int = 0
    recomputed: int = 0
    max_deviation: float = 0.0
    tolerance: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    pass_probability: list[dict[str, float]] = field(default_factory=list)
    features: dict[str, list[str]] = field(default_factory=dict)  # claimed model -> the checksums verified

    @property
    def passed(self) -> bool:
        return bool(self.findings) and all(f.ok for f in self.findings)

    def add(self, check: str, problems: list[str], ok_detail: str) -> None:
        more = f"; ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        self.findings.append(
            Finding(check, not problems, "; ".join(problems[:MAX_SHOWN]) + more if problems else ok_detail)
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def ledger_entry(self) -> dict[str, Any]:
        return {
            "submission_sha256": self.submission_sha256,
            "suite": self.suite,
            "models": self.models,
            "features": self.features,
            "records": self.records,
            "recomputed": self.recomputed,
            "seed": self.seed,
            "max_deviation": self.max_deviation,
            "tolerance": self.tolerance,
            "prh_bench": __version__,
            "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def pass_probability(records: int, sampled: int, tampered: int) -> float:
    """The probability that a sample of `sampled` of `records` records, drawn without replacement, misses all
    `tampered` ones: C(records - tampered, sampled) / C(records, sampled)."""
    if tampered + sampled > records:
        return 0.0
    return math.comb(records - tampered, sampled) / math.comb(records, sampled)


def pass_table(records: int, sampled: int) -> list[dict[str, float]]:
    counts = sorted(
        {
            t
            for t in (1, math.ceil(records * 0.01), math.ceil(records * 0.05), math.ceil(records * 0.1))
            if 1 <= t <= records
        }
    )
    return [{"tampered": t, "pass_probability": pass_probability(records, sampled, t)} for t in counts]


def verify(
    registry: Registry,
    path: Path,
    cache_root: Path,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int | None = None,
    atol: float = 2e-3,
    rtol: float = 0.0,
    device: str = "cpu",
    registry_dirs: tuple[Path, ...] = (),
    reextract: bool = False,
    progress: bool = False,
) -> tuple[Verification, Path]:
    """Check the submission at `path` (see the module's text). The sample's seed is drawn at random unless
    given: a submitter who knew it could edit only the records it leaves out; the report names it, so the same
    sample can be drawn again. Returns the verification and the scratch folder the submission was unpacked
    into (the caller removes it)."""
    seed = secrets.randbelow(2**63) if seed is None else seed
    scratch = Path(tempfile.mkdtemp(prefix="prh-verify-"))
    claim, problems = unpack(path, scratch)
    v = Verification(
        str(path),
        sha256_of(path),
        claim.suite,
        [m.id for m in claim.models],
        seed=seed,
        tolerance={"atol": atol, "rtol": rtol},
    )
    v.add("files", problems, f"{len(claim.files)} files match the sha256 their claim lists")
    if problems:
        return v, scratch
    suite = registry.get(claim.suite, SuiteManifest)
    v.add(
        "suite",
        []
        if suite.version == claim.suite_version
        else [f"'{suite.id}' is at version {suite.version} here, the submission ran version {claim.suite_version}"],
        f"'{suite.id}' version {suite.version}",
    )
    v.add(
        "manifests",
        manifest_problems(registry, claim),
        f"{len(claim.models)} claimed model manifests are the registry's (version and the fields that change features)",
    )
    if not v.passed:
        return v, scratch
    records = submitted_records(scratch)
    v.records = len(records)
    Checker(registry, suite, claim, records, scratch, cache_root, registry_dirs, device, reextract, progress).run(
        v, sample
    )
    return v, scratch


def manifest_problems(registry: Registry, claim: Submission) -> list[str]:
    out = []
    for c in claim.models:
        m = registry.entries.get(c.id.partition("@")[0])
        if not isinstance(m, ModelManifest):
            out.append(
                f"model '{c.id}' is not in the registry: add its manifest (manifests/{c.id}.yaml in the "
                "submission) to a folder given with --registry"
            )
        elif m.version != c.manifest_version:
            out.append(
                f"model '{c.id}': the submission ran manifest version {c.manifest_version}, the registry's "
                f"is {m.version}"
            )
        elif manifest_digest(m) != c.manifest_sha256:
            out.append(
                f"model '{c.id}': the submission's manifest differs from the registry's in fields that change "
                "features (backend, source, weights, layers, preprocessing, dtype), at the same version"
            )
    return out


class Checker:
    """The record checks of one submission, against this machine's registry, samples and features."""

    def __init__(
        self,
        registry: Registry,
        suite: SuiteManifest,
        claim: Submission,
        records: list[PairRecord],
        folder: Path,
        cache_root: Path,
        registry_dirs: tuple[Path, ...],
        device: str,
        reextract: bool,
        progress: bool,
    ):
        from ..context import RunContext, RunSpec

        self.registry, self.suite, self.claim, self.records, self.folder = registry, suite, claim, records, folder
        self.claimed = {m.id for m in claim.models}
        self.ctx = RunContext(
            RunSpec(
                suite.id,
                str(cache_root),
                tuple(str(d) for d in registry_dirs),
                device,
                max_samples=claim.max_samples,
                extra_models=tuple(sorted({c.partition("@")[0] for c in self.claimed})),
            ),
            registry,
        )
        self.conditions = {c.label: i for i, c in enumerate(self.ctx.conditions)}
        self.suite_metrics = {
            label: suite_metrics(self.registry, self.suite, self.ctx.conditions[i])
            for label, i in self.conditions.items()
        }
        self.reextract, self.progress = reextract, progress
        self.features: dict[tuple[str, str], Any] = {}  # (model, condition) -> Features used to recompute

    def run(self, v: Verification, sample: int) -> None:
        v.add(
            "records",
            self.record_problems(),
            f"{len(self.records)} records name the suite's conditions, metrics, "
            "parameters, preparation and the registry's manifest versions",
        )
        if not v.passed:
            return
        v.add(
            "features",
            self.feature_problems(),
            "every feature checksum the records name is the submitted file's or this machine's",
        )
        if not v.passed:
            return
        for c in self.claim.models:
            v.features[c.id] = sorted(
                {ref.features_sha256 for r in self.records for ref in (r.model_x, r.model_y) if ref.id == c.id}
            )
        order = sorted(self.records, key=lambda r: r.identity())
        rng = np.random.default_rng(v.seed)
        picked = [order[i] for i in sorted(rng.choice(len(order), size=min(sample, len(order)), replace=False))]
        problems, worst = [], 0.0
        for rec in picked:
            why, deviation = self.recompute(rec, v.tolerance)
            if math.isfinite(deviation):  # a record that could not be compared at all is listed by its reason
                worst = max(worst, deviation)
            if why:
                problems.append(f"{describe(rec)}: {why}")
        v.recomputed, v.max_deviation = len(picked), worst
        v.add(
            "scores",
            problems,
            f"{len(picked)} of {len(order)} records recomputed (seed {v.seed}): every score within "
            f"atol {v.tolerance['atol']:g} + rtol {v.tolerance['rtol']:g} x |score| (largest difference {worst:.3g})",
        )
        v.pass_probability = pass_table(len(order), len(picked))

    def record_problems(self) -> list[str]:
        out = [] if self.records else ["the submission holds no pair records"]
        prepare = self.suite.prepare.model_dump(mode="json")
        for rec in self.records:
            where = describe(rec)
            if not {rec.model_x.id, rec.model_y.id} & self.claimed:
                out.append(f"{where}: involves none of the claimed models {sorted(self.claimed)}")
            if (index := self.conditions.get(rec.condition.label)) is None:
                out.append(f"{where}: no condition '{rec.condition.label}' in suite '{self.suite.id}'")
                continue
            ds = self.ctx.conditions[index].dataset
            if (rec.condition.dataset, rec.condition.dataset_version) != (ds.id, ds.version):
                out.append(
                    f"{where}: data set {rec.condition.dataset} version {rec.condition.dataset_version}, the "
                    f"registry's is {ds.id} version {ds.version}"
                )
            found = self.suite_metrics[rec.condition.label].get(rec.metric_key())
            if found is None:
                out.append(f"{where}: not a metric with parameters of suite '{self.suite.id}'")
            elif found[2] != rec.metric_version:
                out.append(f"{where}: metric version {rec.metric_version}, the registry's is {found[2]}")
            if rec.prepare != prepare:
                out.append(f"{where}: preparation {rec.prepare}, the suite's is {prepare}")
            for ref in (rec.model_x, rec.model_y):
                m = self.ctx.models.get(ref.id)
                if m is None:
                    out.append(f"{where}: '{ref.id}' is not a model of suite '{self.suite.id}' nor a claimed one")
                elif m.version != ref.manifest_version:
                    out.append(
                        f"{where}: '{ref.id}' manifest version {ref.manifest_version}, the registry's is {m.version}"
                    )
            if rec.calibration is not None and not math.isclose(rec.calibration.observed, best(rec), abs_tol=1e-9):
                out.append(
                    f"{where}: its null's observed score {rec.calibration.observed} is not its best score {best(rec)}"
                )
        return out

    def feature_problems(self) -> list[str]:
        """Checks every checksum the records name, and loads the features the recomputation reads."""
        from ..context import Target
        from ..executors import LocalExecutor
        from ..features import read_features

        named: dict[tuple[str, str], set[str]] = {}
        for rec in self.records:
            for ref in (rec.model_x, rec.model_y):
                named.setdefault((ref.id, rec.condition.label), set()).add(ref.features_sha256)
        out = [
            f"'{m}' under '{c}': the records name {len(s)} different feature checksums"
            for (m, c), s in named.items()
            if len(s) > 1
        ]
        submitted = {(f.model, f.condition): f for f in self.claim.features}
        for (mid, label), f in submitted.items():
            if mid not in self.claimed:  # another model's features are checked against this machine's, never taken
                out.append(f"{f.path}: features of '{mid}', which the submission does not claim")
                continue
            if (mid, label) not in named:
                out.append(f"{f.path}: features of '{mid}' under '{label}', which no record names")
                continue
            try:
                feats, meta = read_features(self.folder / f.path)
            except CorruptEntry as exc:
                out.append(f"{f.path}: not a valid feature file ({exc})")
                continue
            if meta["sha256"] not in named[(mid, label)] or meta["sha256"] != f.features_sha256:
                out.append(
                    f"{f.path}: its checksum {meta['sha256'][:12]}... is not the {next(iter(named[(mid, label)]))[:12]}"
                    f"... the records of '{mid}' under '{label}' name (swapped or re-extracted features)"
                )
                continue
            try:
                doc = json.loads(meta.get("key_doc", "{}"))
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                out.append(f"{f.path}: its cache key document is not a JSON object")
                continue
            out += self.key_problems(f.path, doc, mid, label)
            self.features[(mid, label)] = feats
        by_condition: dict[str, list[str]] = {}
        for mid, label in named:
            if (mid, label) not in self.features or (self.reextract and mid in self.claimed):
                by_condition.setdefault(label, []).append(mid)
        for label, mids in by_condition.items():
            index = self.conditions[label]
            for o in LocalExecutor().extract(self.ctx, mids, Target(condition=index), self.progress):
                if o.status == "failed":
                    out.append(f"'{o.model}' under '{label}': no features here to check against ({o.error})")
                    continue
                feats, digest = self.ctx.features(o.model, o.key), self.ctx.cache.info(o.model, o.key).digest
                if digest in named[(o.model, label)]:
                    self.features[(o.model, label)] = feats
                elif o.model in self.claimed and (o.model, label) in self.features:
                    out += self.reextracted_problems(o.model, label, feats)
                else:
                    out.append(
                        f"'{o.model}' under '{label}': the records name features {min(named[(o.model, label)])[:12]}"
                        f"..., this machine's are {digest[:12]}... (other weights, code or library versions: run "
                        "both sides with the same prh-bench and constraints.txt)"
                    )
        return out

    def key_problems(self, where: str, doc: dict[str, Any], mid: str, label: str) -> list[str]:
        """A feature file's cache key must name the registry's manifest and this machine's samples."""
        from ..context import Target

        out = []
        if not isinstance(doc.get("model"), dict) or fields_digest(doc["model"]) != manifest_digest(
            self.ctx.models[mid]
        ):
            out.append(f"{where}: extracted from another manifest of '{mid}' than the registry's (or at another dtype)")
        _, samples, _ = self.ctx.samples(Target(condition=self.conditions[label]))
        if (doc.get("n_samples"), doc.get("sample_content")) != (len(samples), samples.digest):
            out.append(
                f"{where}: extracted from other samples than '{label}' has here ({doc.get('n_samples')} vs "
                f"{len(samples)} samples, or other content)"
            )
        return out

    def reextracted_problems(self, mid: str, label: str, feats: Any) -> list[str]:
        """The submitted features of a claimed model against its features extracted here (float noise allowed)."""
        import torch

        sent = self.features[(mid, label)]
        if sent.layer_names != feats.layer_names:
            return [f"'{mid}' under '{label}': the submitted layers {sent.layer_names} are not {feats.layer_names}"]
        for name, a, b in zip(feats.layer_names, sent.tensors, feats.tensors, strict=True):
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max())):
                return [f"'{mid}' under '{label}': layer {name} extracted here differs from the submitted features"]
        self.features[(mid, label)] = feats
        return []

    def recompute(self, rec: PairRecord, tolerance: dict[str, float]) -> tuple[str, float]:
        """Why the record's scores are not what its features give (empty when they are), and the largest difference."""
        from ..align import prepare, score_layers
        from ..align.prepare import CONCAT

        metric, params, _ = self.suite_metrics[rec.condition.label][rec.metric_key()]
        p = self.suite.prepare
        sides = []
        for ref in (rec.model_x, rec.model_y):
            feats = self.features[(ref.id, rec.condition.label)]
            if ref.layers != feats.layer_names + ([CONCAT] if p.concat_layers else []):
                return f"'{ref.id}' layers {ref.layers} are not its features' {feats.layer_names}", math.inf
            sides.append(
                prepare(feats.tensors, p.clamp_quantile, p.l2_normalize, p.concat_layers, p.clamp, p.precision)
            )
        try:
            got = score_layers(metric, sides[0], sides[1], **params).matrix.double().numpy()
        except BadInput as exc:  # features that do not fit together (another N): a failed check, not a crash
            return f"its features cannot be scored together ({exc})", math.inf
        claimed = np.array(rec.scores, dtype=float)
        if (np.isnan(got) != np.isnan(claimed)).any():
            return "a NaN on one side only", math.inf
        diff = np.abs(np.nan_to_num(got - claimed))
        worst = float(diff.max(initial=0.0))
        bad = diff > tolerance["atol"] + tolerance["rtol"] * np.abs(np.nan_to_num(claimed))
        if bad.any():
            i, j = np.unravel_index(int(np.argmax(np.where(bad, diff, -1))), diff.shape)
            return (
                f"layer pair ({rec.model_x.layers[i]}, {rec.model_y.layers[j]}) claims {claimed[i, j]:.6g}, its "
                f"features give {got[i, j]:.6g}"
            ), worst
        return "", worst


def best(rec: PairRecord) -> float:
    values = [x for row in rec.scores for x in row if not math.isnan(x)]
    return max(values) if values else math.nan


def verification_labels(store: Path, models: Iterable[str]) -> dict[str, str]:
    """Per model, how a leaderboard row built from the store is marked: 'verified (s of M records recomputed)' when
    a verification covers the features the store's records of it name, else 'unverified'."""
    named: dict[str, set[str]] = {}
    for rec, _ in scan(store).values():
        for ref in (rec.model_x, rec.model_y):
            named.setdefault(ref.id, set()).add(ref.features_sha256)
    ledger = read_ledger(store)
    labels = {}
    for mid in models:
        label = "unverified"
        for entry in ledger:
            if mid in entry["models"] and named.get(mid) and named[mid] <= set(entry["features"].get(mid, [])):
                label = f"verified ({entry['recomputed']} of {entry['records']} records recomputed)"
        labels[mid] = label
    return labels
