"""Helpers of the notebook tests: read a notebook, check its committed outputs, execute it.

The notebooks are committed with the outputs of one clean run (top to bottom, in a fresh
kernel, at full size) so that readers see them where they browse; the tests execute them
again at small sizes (``JAXRNN_NOTEBOOK_SMALL=1``).
"""

import os
import pathlib

import pytest

NOTEBOOKS = pathlib.Path(__file__).parents[1] / "notebooks"


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def output_text(nb) -> str:
    """The text of every stream and plain-text result of ``nb``'s code cells, in order."""
    parts = []
    for cell in code_cells(nb):
        for out in cell.outputs:
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def read(name: str):
    """The notebook ``notebooks/<name>`` as committed."""
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def assert_clean_run(nb, name: str) -> None:
    """``nb`` holds the outputs of one uninterrupted run: every code cell executed once, in
    order, in one kernel (execution counts 1, 2, ...), none raised, and its figures are there."""
    counts = [c.execution_count for c in code_cells(nb)]
    expected = list(range(1, len(counts) + 1))
    assert counts == expected, (
        f"{name}: execution counts {counts}, expected {expected} (a clean run: "
        ".venv/bin/python tests/notebook_run.py notebooks/NAME.ipynb)"
    )
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: a committed cell raised {errors[0].get('ename')}"


def has_image(nb) -> bool:
    return any("image/png" in o.get("data", {}) for c in code_cells(nb) for o in c.outputs)


def execute(name: str, monkeypatch, small: bool = True):
    """Runs ``notebooks/<name>`` top to bottom in a fresh kernel and returns it with outputs;
    raises ``CellExecutionError`` (with the cell's traceback) on failure."""
    nbclient = pytest.importorskip("nbclient")
    nb = read(name)
    if small:
        monkeypatch.setenv("JAXRNN_NOTEBOOK_SMALL", "1")
    root = str(NOTEBOOKS.parent)
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(
        nb,
        timeout=1800,
        kernel_name="python3",
        record_timing=False,  # no timestamps in the committed file
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return nb


if __name__ == "__main__":  # rewrites a notebook with the outputs of a clean full-size run
    import sys
    import time

    import nbformat

    class _Env:  # execute() sets environment variables through a monkeypatch-like object
        def setenv(self, key, value):
            os.environ[key] = value

    for path in sys.argv[1:]:
        start = time.perf_counter()
        nb = execute(pathlib.Path(path).name, _Env(), small=False)
        nbformat.write(nb, NOTEBOOKS / pathlib.Path(path).name)
        print(f"{path}: executed in {time.perf_counter() - start:.0f} s")
