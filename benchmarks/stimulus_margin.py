"""Which stimulus set tells trained vision models from random ones: from a run of `real-vision-stimuli`, each
condition's alignment to the reference (max over layer pairs) of the trained models and of the random controls,
the margin between their means, and the gap between the worst trained and the best random model.

    prh-bench run --suite real-vision-stimuli && python benchmarks/stimulus_margin.py
    python benchmarks/stimulus_margin.py --run prh-runs/real-vision-stimuli/<folder>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from prh_bench.manager import load_plugins
from prh_bench.registry import Registry
from prh_bench.results.results import Results
from prh_bench.results.run_folder import latest_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="real-vision-stimuli")
    ap.add_argument("--run", type=Path, help="a run folder (default: the newest of the suite under prh-runs)")
    args = ap.parse_args()
    reg = Registry.load(load_plugins())
    suite = reg.get(args.suite)
    run = args.run or latest_run(Path("prh-runs"), suite.id)
    scores = Results.read(run).scores
    ref = suite.reference
    with_ref = scores[(scores.model_x == ref) | (scores.model_y == ref)].copy()
    with_ref["model"] = with_ref.model_x.where(with_ref.model_y == ref, with_ref.model_y)
    best = with_ref[with_ref.model != ref].groupby(["condition", "model"]).score.max().unstack(0)
    random = [m for m in best.index if "random" in reg.get(m).tags]
    trained = [m for m in best.index if m not in random]
    print(f"{run}: alignment to {ref} (mutual k-NN, max over layer pairs)\n")
    print(best.round(3).to_string(), "\n")
    rows = []
    for cond in best.columns:
        t, r = best.loc[trained, cond], best.loc[random, cond]
        rows.append(
            {
                "condition": cond,
                "trained (mean)": t.mean(),
                "random (mean)": r.mean(),
                "margin": t.mean() - r.mean(),
                "worst trained - best random": t.min() - r.max(),
            }
        )
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
