"""benchmarks/memory.py: its training step, compiled and run, on the scan reference and on
backend auto."""

import pytest

from benchmarks import memory


@pytest.mark.slow  # compiles and measures real steps
def test_memory_benchmark_measures_scan_and_auto_alike():
    """The same loss on both backends (remat in segments, a remainder segment: T = 50 in
    segments of 8), finite gradients, XLA's buffer sizes and the process's memory reported."""
    got = {
        b: memory.measure(T=50, remat="sqrt", cell="lstm", B=2, H=8, run=True, backend=b)
        for b in ("scan", "auto")
    }
    assert got["auto"]["loss"] == pytest.approx(got["scan"]["loss"], rel=1e-5)
    for r in got.values():
        assert r["grad_finite"] and r["xla_peak_bytes"] > 0 and r["rss_peak_bytes"] > 0
        assert r["T"] == 50 and r["remat"] == "sqrt" and r["layers"] == 1
