"""The parallel-in-time notebook runs top to bottom (small sizes) and is committed clean."""

import os
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).parents[1] / "notebooks" / "02_parallel_in_time.ipynb"


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow  # a minute and a half of compiling: past the default suite's budget
def test_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAXRNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv(
        "PYTHONPATH", str(NOTEBOOK.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError (with the cell's traceback) on failure
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # the Newton iterations by hand reach the sequential trajectory, and parallel.rnn converges
    assert "newton:" in texts and "quasi:" in texts
    for method in ("newton", "quasi", "elk"):
        assert f"{method:10s} iterations" in texts
    # the expanding RNN: Newton overflows, ELK converges, the fallback gives the scan's result
    assert "newton     iterations    1  converged False  finite False" in texts
    assert "elk        iterations" in texts and "fell back True" in texts
