"""prh-bench: representational alignment across model zoos (the Platonic Representation Hypothesis).

    import prh_bench
    res = prh_bench.run("pocket")                 # a suite, run (or read from the cache) as `prh-bench run` does
    res = prh_bench.load("prh-runs/pocket/<time>")  # or a run folder already written
    res.matrix(), res.layers("efficientnet-lite2", "mobilenet-v2"), res.scores  # pandas DataFrames

See prh_bench.results.results.Results (prh_bench.results.front_door: load, run). The metric kernels are prh_bench.align (prepare, score_layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .results.front_door import load, run
    from .results.results import Results

__all__ = ["Results", "__version__", "load", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import prh_bench` (and the CLI's light commands) stays free of torch and pandas.
    if name in ("Results", "load", "run"):
        from .results import front_door, results

        return getattr(results if name == "Results" else front_door, name)
    raise AttributeError(f"module 'prh_bench' has no attribute {name!r}")
