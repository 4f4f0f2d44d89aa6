"""The tutorials in ``notebooks/`` run top to bottom (``make test-notebooks``; CI runs it after the MONAI Label
target, whose environment notebook 04 uses to start a real server).

Each notebook is executed by a Jupyter kernel of this environment (nbclient), from the ``notebooks/`` folder as a
user would open it; any cell's error fails the test and names the cell. The executed copies, with their pictures,
are kept under ``runs/notebooks/executed/`` (``scripts/notebook_pictures.py`` takes the README's pictures from them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED = ROOT / "runs" / "notebooks" / "executed"


def test_the_four_tutorials_are_there():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_proxy_task_transforms", "02_train_and_detect_2d", "03_volumes_3d", "04_bundle_and_serving"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    """Outputs belong to the executed copies, not to the repository (they would grow it by every picture)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), f"{path.name} holds outputs"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        EXECUTED.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, EXECUTED / path.name)
    pictures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert pictures, f"{path.name} drew nothing"
