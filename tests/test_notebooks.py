"""The notebooks run top to bottom without error (executed with nbclient, as a reader would), and
their figures are really drawn: the executed notebook has an image for every figure the committed
one shows (and the tour at least four)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _outputs(notebook, kind):
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if kind(o)]  # fmt: skip


def _is_image(output):
    return "image/png" in output.get("data", {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_and_draws(path, tmp_path):
    committed = nbformat.read(path, as_version=4)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    assert not _outputs(notebook, lambda o: o.output_type == "error")
    images = _outputs(notebook, _is_image)
    assert len(images) == len(_outputs(committed, _is_image)), (
        "run python notebooks/execute.py and commit the outputs"
    )
    assert all(len(o["data"]["image/png"]) > 1000 for o in images)  # base64 of a real PNG


def test_tour_is_committed_with_its_figures():
    tour = nbformat.read(Path(__file__).parent.parent / "notebooks" / "divergences.ipynb", as_version=4)  # fmt: skip
    assert len(_outputs(tour, _is_image)) >= 4
    code = [c for c in tour.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "committed without executing every cell"
