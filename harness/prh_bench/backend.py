"""What a plugin hands the engine: model backends that build feature extractors, and dataset loaders."""

from __future__ import annotations

import difflib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from .errors import BadInput
from .lazy import torch
from .manifest import DatasetManifest, ModelManifest
from .samples import Sample, SampleSet

L = TypeVar("L", bound=Callable[..., Any])


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a manifest's `dtype` names (float32, bfloat16, float16; 'auto' is resolved first)."""
    if name == "auto":
        raise BadInput("dtype 'auto' is resolved for a device before a model is loaded (see resolve_dtype)")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_dtype(m: ModelManifest, device: torch.device) -> ModelManifest:
    """`dtype: auto` made concrete for a device as the PRH code chooses: bfloat16 on a CUDA device of compute
    capability 7 or more, else float32. Runs key and extract the concrete one, so the cache never mixes them."""
    if m.dtype != "auto":
        return m
    bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7
    return m.model_copy(update={"dtype": "bfloat16" if bf16 else "float32"})


def preprocess_options(m: ModelManifest, known: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's `preprocess` over a backend's defaults; a key the backend does not know is bad input."""
    if problems := option_problems(f"model '{m.id}'", "preprocess", m.preprocess, known, f"backend '{m.backend}'"):
        raise BadInput("; ".join(problems))
    return {**known, **m.preprocess}


class FeatureExtractor(ABC):
    """A loaded model that maps a batch of samples to one pooled vector per sample and layer."""

    #: layer names in network order; fixed once the extractor is built
    layer_names: list[str]
    #: per-sample scores computed on the way (e.g. bits per byte of a language model)
    sample_score_names: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        """Features of one batch: one B x D float tensor per layer, then one B-vector per extra name."""

    def prepare(self, samples: SampleSet) -> None:  # noqa: B027 (a hook: most extractors need nothing here)
        """Called with every sample before the first batch (the PRH code pads each text to the longest of all)."""


class ModelBackend(ABC):
    """Builds extractors for model manifests whose `backend` names it. Subclass it: `load` is required, the
    rest has defaults that `prh-bench plan` and `show` read."""

    #: distributions whose versions change features: they enter the feature-cache key
    libraries: tuple[str, ...] = ()
    #: per-sample scores its extractors compute (a task that needs one is run on these models only); a suite
    #: may correlate alignment with their means (`scores: [NAME]`)
    sample_score_names: tuple[str, ...] = ()
    #: those of them where lower is better (bits per byte): leaderboards report correlations' direction from it
    lower_is_better: tuple[str, ...] = ()
    #: whether the manifest's `options` mean something to it (validate refuses them otherwise)
    takes_options: bool = False
    #: whether its models have no parameters (a fixed colour space): their manifests say `weights: none`, and
    #: validate refuses `weights: none` for a backend whose models have weights
    parameter_free: bool = False

    @abstractmethod
    def load(self, manifest: ModelManifest, device: torch.device) -> FeatureExtractor:
        """Load the model (raising WeightsUnavailable with a how-to when weights are missing)."""

    def weights_status(self, manifest: ModelManifest) -> str:
        """'local', 'download' (hub or URL, not fetched yet) or 'unavailable: why', without loading weights."""
        return "unknown"

    def preprocess_keys(self, manifest: ModelManifest) -> Collection[str] | None:
        """The `preprocess` keys this backend reads for the manifest: validate refuses any other (None: not
        declared, unchecked)."""
        return None

    def feature_widths(self, manifest: ModelManifest) -> list[int] | None:
        """The width of every layer without loading weights (None: unknown), for feature storage and pair-work
        estimates."""
        return None


def option_problems(
    where: str, fieldname: str, given: Mapping[str, Any], known: Iterable[str] | None, owner: str
) -> list[str]:
    """The keys of `given` that its plugin does not declare (none when it declares nothing), each with the
    closest declared one: "WHERE: field 'options.colour': not an option of loader 'x'; did you mean ...?"."""
    if known is None:
        return []
    known = sorted(known)
    out = []
    for key in sorted(set(given) - set(known)):
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        out.append(
            f"{where}: field '{fieldname}.{key}': not an option of {owner}{hint} (known: {', '.join(known) or 'none'})"
        )
    return out


def takes_options(*names: str) -> Callable[[L], L]:
    """Declares the `options` a dataset loader reads. Any other key is refused, by validate and when the loader is
    called: a misspelling is an error naming the closest key, not a default silently used. A loader without the
    declaration has its options unchecked."""

    def declare(loader: L) -> L:
        @functools.wraps(loader)
        def checked(m: DatasetManifest) -> SampleSet:
            if problems := option_problems(f"dataset '{m.id}'", "options", m.options, names, f"loader '{m.loader}'"):
                raise BadInput("; ".join(problems))
            return loader(m)

        checked.option_names = frozenset(names)  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return declare


class DatasetLoader(Protocol):
    """Builds the sample set of a dataset manifest whose `loader` names it."""

    def __call__(self, manifest: DatasetManifest) -> SampleSet:
        """All samples, in a stable order, each with a stable id."""
        ...
