"""A submission: what a contributor ran for the models they add, packed as one zip file that claims what it holds.

    submission.json                            # the claim: suite, models, and every file with its sha256
    results/CONDITION/MODEL_X/MODEL_Y.json     # the run's pair records (pair_records.py) of every pair with a claimed model
    features/MODEL/KEY.safetensors             # optional: the claimed models' cache entries the records name
    manifests/MODEL.yaml                       # the claimed models' manifests, as the run read them

`prh-bench submit` packs a run folder; `prh-bench verify` (verify.py) unpacks one into a scratch folder, refusing
members outside the layout above, files the claim does not list, and more bytes than the claim declares.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..cache_files import CorruptEntry, atomic_file, read_header
from ..errors import BadInput
from ..file_hash import sha256_of
from ..manifest import ModelManifest
from ..registry import Registry
from .documents import first_problem
from .pair_records import PairRecord, record_path, scan
from .run_record import read_run_record

SUBMISSION_FORMAT: Literal[1] = 1
CLAIM = "submission.json"
SUBMISSION_FILE = ("submission", "write it elsewhere (--out)")
MAX_CLAIM_BYTES = 16 << 20
CHUNK = 1 << 20
#: a member's path: one of the three folders, then names of letters, digits and ._@=- (no '..', no root)
MEMBER = r"^(results|features|manifests)(/[A-Za-z0-9_@=.-]*[A-Za-z0-9_@=-][A-Za-z0-9_@=.-]*)+$"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MemberFile(_Strict):
    path: str = Field(pattern=MEMBER, max_length=500)
    sha256: Sha256
    bytes: int = Field(ge=0)


class ClaimedModel(_Strict):
    """A model the submission adds: what the registry must hold for its records to mean what they say."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", max_length=201)
    manifest_version: int = Field(ge=1)
    manifest_sha256: Sha256  # manifest_digest: the fields that change features


class FeatureFile(_Strict):
    model: str
    condition: str
    features_sha256: Sha256  # the checksum stored in the entry, which the records name
    path: str = Field(pattern=MEMBER, max_length=500)


class Submission(_Strict):
    format: Literal[1]
    suite: str
    suite_version: int
    created: str
    prh_bench: str
    max_samples: int | None  # the run's --max-samples: the verifier draws the same samples with it
    models: list[ClaimedModel] = Field(min_length=1)
    features: list[FeatureFile]
    files: list[MemberFile] = Field(min_length=1)


def manifest_digest(m: ModelManifest) -> str:
    """sha256 of the fields that change a model's features (`fields_digest`)."""
    return fields_digest(m.feature_fields())


def fields_digest(fields: dict[str, Any]) -> str:
    """sha256 of a model's feature fields, a local checkpoint's path cut to its file name (the contributor's
    folders are not the verifier's; its sha256, when pinned, stays)."""
    if isinstance(fields.get("weights"), dict) and "path" in fields["weights"]:
        fields["weights"] = {**fields["weights"], "path": Path(fields["weights"]["path"]).name}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def pack(
    registry: Registry, run_dir: Path, models: list[str], out: Path, cache_root: Path, with_features: bool
) -> Submission:
    """Pack the records of `run_dir` that involve `models` (and, with_features, those models' cache entries
    under `cache_root`) into the zip file `out`."""
    from ..features import FeatureCache

    run = read_run_record(run_dir)
    if unknown := [m for m in models if m not in run.models]:
        raise BadInput(f"{run_dir} has no model {', '.join(map(repr, unknown))}; its models: {', '.join(run.models)}")
    records = [rec for rec, _ in scan(run_dir).values() if {rec.model_x.id, rec.model_y.id} & set(models)]
    if not records:
        raise BadInput(f"{run_dir} holds no pair records of {', '.join(models)} (did the run score them?)")
    digests = {
        (ref.id, rec.condition.label): ref.features_sha256 for rec in records for ref in (rec.model_x, rec.model_y)
    }
    members: dict[str, bytes | Path] = {}
    claimed, features = [], []
    for mid in models:
        entry = run.models[mid]
        manifest = registry.get(entry.manifest_id or mid, ModelManifest)
        if manifest.version != entry.manifest_version:
            raise BadInput(
                f"'{mid}' ran at manifest version {entry.manifest_version}; the registry's is now "
                f"{manifest.version}: run it again"
            )
        claimed.append(
            ClaimedModel(id=mid, manifest_version=entry.manifest_version, manifest_sha256=manifest_digest(manifest))
        )
        members[f"manifests/{mid}.yaml"] = registry.paths[manifest.id]
        for r in entry.runs if with_features else []:
            if (want := digests.get((mid, r.condition))) is None:
                continue
            path = FeatureCache(cache_root).path(mid, r.cache_key)
            try:
                got = read_header(path)["sha256"] if path.exists() else None
            except CorruptEntry as exc:
                raise BadInput(f"the cache entry {path} of '{mid}' is damaged ({exc}); run the suite again") from None
            if got != want:
                raise BadInput(
                    f"the features of '{mid}' under '{r.condition}' in the cache ({path}) are not the ones "
                    "its records name (extracted again since, or another cache: set PRH_BENCH_CACHE)"
                )
            member = f"features/{mid}/{path.name}"
            members[member] = path
            features.append(FeatureFile(model=mid, condition=r.condition, features_sha256=want, path=member))
    by_file: dict[str, list[dict[str, Any]]] = {}  # as a run folder's results/ lays them out
    for rec in records:
        name = record_path(Path("results"), rec.condition.label, rec.model_x.id, rec.model_y.id).as_posix()
        by_file.setdefault(name, []).append(rec.model_dump(mode="json"))
    members |= {name: json.dumps(recs, indent=1).encode() for name, recs in by_file.items()}
    files = [MemberFile(path=name, sha256=_sha256(data), bytes=_size(data)) for name, data in sorted(members.items())]
    claim = Submission(
        format=SUBMISSION_FORMAT,
        suite=run.suite_id,
        suite_version=run.suite.version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        prh_bench=__version__,
        max_samples=run.max_samples,
        models=claimed,
        features=features,
        files=files,
    )
    with atomic_file(out, ".zip", SUBMISSION_FILE) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CLAIM, claim.model_dump_json(indent=1))
        for name, data in sorted(members.items()):
            if isinstance(data, Path):
                zf.write(data, name)
            else:
                zf.writestr(name, data)
    return claim


def _sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else sha256_of(data)


def _size(data: bytes | Path) -> int:
    return len(data) if isinstance(data, bytes) else data.stat().st_size


def unpack(path: Path, dest: Path) -> tuple[Submission, list[str]]:
    """The claim of the submission at `path`, its listed files written under `dest`, and what is wrong with
    them (a file whose sha256 is not the claimed one, one missing or unlisted). An archive that is no
    submission (not a zip, no valid claim, a member outside the layout) is bad input."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInput(f"{path}: not a submission (a zip file written by `prh-bench submit`): {exc}") from None
    with zf:
        names = [i.filename for i in zf.infolist()]
        if CLAIM not in names:
            raise BadInput(f"{path}: no {CLAIM} in the archive: not a submission written by `prh-bench submit`")
        if len(set(names)) != len(names):
            raise BadInput(f"{path}: a member appears twice ({sorted({n for n in names if names.count(n) > 1})[0]})")
        try:
            claim = Submission.model_validate_json(_read(zf, CLAIM, MAX_CLAIM_BYTES))
        except ValidationError as exc:
            raise BadInput(f"{path}: {CLAIM}: {first_problem(exc)}") from None
        listed = {f.path: f for f in claim.files}
        if (need := sum(f.bytes for f in claim.files)) > (free := shutil.disk_usage(dest).free):
            raise BadInput(
                f"{path}: its files take {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free under {dest}"
            )
        problems = [
            f"{name}: in the archive but not in {CLAIM}'s file list"
            for name in names
            if name != CLAIM and name not in listed
        ]
        for name, f in listed.items():
            if name not in names:
                problems.append(f"{name}: listed in {CLAIM} but not in the archive")
            elif (got := _extract(zf, name, f.bytes, dest / name)) != f.sha256:
                problems.append(f"{name}: sha256 {got[:12]}..., but {CLAIM} claims {f.sha256[:12]}... (altered)")
    return claim, problems


def _read(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member's bytes, refused past `limit` whatever its header says."""
    with zf.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"{zf.filename}: member {name} holds more than {limit:,} bytes")
    return data


def _extract(zf: zipfile.ZipFile, name: str, limit: int, target: Path) -> str:
    """Copy a member to `target` in chunks, refused past `limit` (the size the claim declares) whatever its
    header says, so that a zip bomb stops there; its sha256."""
    h = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(name) as src, target.open("wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise BadInput(f"{zf.filename}: member {name} holds more than the {limit:,} bytes {CLAIM} declares")
            h.update(chunk)
            dst.write(chunk)
    return h.hexdigest()


def submitted_records(folder: Path) -> list[PairRecord]:
    """The records of an unpacked submission."""
    root = folder / "results"
    return [rec for rec, _ in scan(root).values()] if root.is_dir() else []
