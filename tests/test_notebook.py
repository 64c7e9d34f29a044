"""The README's Python front door, as a user meets it: docs/quickstart.ipynb executed in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

NOTEBOOK = Path(__file__).parents[1] / "docs" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_shows_real_results(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = {
        i: "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in c.get("outputs", []))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
    }
    assert "('pocket', ['mutual_knn'], ['pocket-photos'])" in text[1]
    assert "efficientnet-lite2" in text[5] and "layer_x" in text[3]
    assert "best_score" in text[8] and "best_layer_of_mobilenet-v2" in text[8]
    assert any(o.get("data", {}).get("image/png") for o in nb.cells[9].outputs)  # the pair's figure
    assert "(1, 0)" in text[14]  # y's first layer is a projection of x's second: that pair aligns best
