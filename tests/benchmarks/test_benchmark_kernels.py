"""benchmarks/kernels.py and kernels.cc: the kernels' one-thread A/B driver (AVX-512 or AVX2 + FMA CPUs)."""

import numpy as np
import pytest

from benchmarks import kernels as kb
from jaxrnn.backends.cpu import _build


@pytest.mark.slow  # three builds of the driver side by side: ~20 s
@pytest.mark.skipif(_build.isa() is None, reason="the kernels need AVX-512 or AVX2 + FMA")
def test_kernel_benchmark_driver_builds_and_blocking_does_not_change_results():
    """The driver builds against the shipped rnn_cpu.cc and runs every kernel; other register
    blockings (macros) give bitwise the same states and gradients: each output element sums
    its products in the same order whatever the tile."""
    builds = [
        ("shipped", kb.SOURCE, []),  # with this CPU's tuning_defines()
        ("blocks4x4", kb.SOURCE, ["JAXRNN_BLOCK_ROWS=4", "JAXRNN_BLOCK_VECS=4", "JAXRNN_LSTM_ROWS=4",
                                  "JAXRNN_OUTER_ROWS=4", "JAXRNN_OUTER_VECS=5"]),
        ("blocks5x8", kb.SOURCE, ["JAXRNN_LSTM_ROWS=5", "JAXRNN_OUTER_ROWS=8", "JAXRNN_OUTER_VECS=3"]),
    ]  # fmt: skip
    res = kb.measure(builds, list(kb.KERNELS), rounds=1, reps=1, shape=["12", "7", "40", "50"])
    for k in kb.KERNELS:
        a = res["shipped", k]
        assert len(a["ms"]) == 1 and a["ms"][0] > 0, k
        assert np.isfinite(float(a["checksum"])) and float(a["checksum"]) != 0.0, k
        for other in ("blocks4x4", "blocks5x8"):
            b = res[other, k]
            assert a["checksum"] == b["checksum"], (k, other, a["checksum"], b["checksum"])


def test_unknown_kernels_are_an_error():
    with pytest.raises(
        ValueError,
        match=r"unknown kernels \['lstm-sideways'\]; expected some of \['lstm-forward', ",
    ):
        kb.measure([("shipped", kb.SOURCE, [])], ["lstm-sideways"])
