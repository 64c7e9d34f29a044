"""The plugin API: everything a plugin may import from prh-bench, in one module.

    from prh_bench.plugin import FeatureExtractor, ModelBackend, hookimpl

A plugin (a module registered under the `prh_bench` entry-point group, or one of the built-ins in
prh_bench.plugins) subclasses the bases here, reads the manifest and sample types, raises the errors, and may use
the helpers for weights and cached files. The rest of prh_bench is the engine's and may change without notice.
The built-in plugins import only this module (tests/test_layout.py checks it), as CONTRIBUTING asks of others.
"""

from .align import METRICS, Metric, get_metric
from .backend import FeatureExtractor, ModelBackend, preprocess_options, takes_options, torch_dtype
from .derived_folders import derived_folder
from .errors import BadInput, ExtractionFailed, WeightsUnavailable
from .features import Features, cache_root
from .file_hash import sha256_of
from .hookspecs import hookimpl
from .lazy import np, torch
from .manifest import DatasetManifest, DistFile, ModelManifest, PartsWeights, PathWeights, RandomWeights
from .packaged import dist_file, dist_folder, extracted_folder
from .samples import Sample, SampleSet
from .task import Task
from .weights import (
    PKG_SCHEME,
    build_with_weights,
    checkpoint_path,
    checkpoint_status,
    is_local,
    offline,
    refused_pickle,
    resolve_path,
    verify_sha256,
)

__all__ = [
    "METRICS",
    "PKG_SCHEME",
    "BadInput",
    "DatasetManifest",
    "DistFile",
    "ExtractionFailed",
    "FeatureExtractor",
    "Features",
    "Metric",
    "ModelBackend",
    "ModelManifest",
    "PartsWeights",
    "PathWeights",
    "RandomWeights",
    "Sample",
    "SampleSet",
    "Task",
    "WeightsUnavailable",
    "build_with_weights",
    "cache_root",
    "checkpoint_path",
    "checkpoint_status",
    "derived_folder",
    "dist_file",
    "dist_folder",
    "extracted_folder",
    "get_metric",
    "hookimpl",
    "is_local",
    "np",
    "offline",
    "preprocess_options",
    "refused_pickle",
    "resolve_path",
    "sha256_of",
    "takes_options",
    "torch",
    "torch_dtype",
    "verify_sha256",
]
