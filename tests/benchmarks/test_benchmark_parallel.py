"""benchmarks/parallel.py: each table, on tiny sizes, measures what it says."""

import pytest

from benchmarks import parallel as bench


@pytest.mark.slow
def test_parallel_benchmark_tables_run_and_agree_with_the_sequential_scan():
    """Each of the three tables on tiny sizes: the parallel results equal the sequential ones."""
    grad = bench.main(["grad", "--T", "16", "--B", "2", "--reps", "1"])["rows"]
    assert len(grad) == 2 and all(float(r["rel. deviation"]) < 1e-4 for r in grad)
    rows = bench.main(
        ["rnn", "--cells", "gru", "--T", "32", "--H", "2", "--B", "2", "--reps", "1",
         "--methods", "newton,quasi"]
    )["rows"]  # fmt: skip
    assert [r["method"].split(" ")[0] for r in rows] == ["sequential", "newton", "quasi"]
    assert all(r["converged"] and float(r["max dev ys"]) < 1e-4 for r in rows[1:])
    cells = bench.main(["cells", "--T", "16", "--H", "4", "--B", "2", "--reps", "1"])["rows"]
    assert [r["cell"] for r in cells] == ["lru", "mingru", "minlstm"]
    assert all(float(r["max dev"]) < 1e-4 for r in cells)
