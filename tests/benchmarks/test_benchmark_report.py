"""benchmarks/report.py: the ratios it prints from a run's raw step times, on hand-made runs."""

import pytest

from benchmarks import report


def _case(**times_ms):
    return {
        "name": "train-simple-B64-T250-H100",
        "flop": 1.27e9,
        "results": {fw: {"times": [t * 1e-3 for t in ts]} for fw, ts in times_ms.items()},
    }


def test_percentile_ratios_take_the_fastest_peer_by_median():
    """Peer a is twice jaxrnn-fast at every step, peer b one ms slower (smaller median, so the
    fastest peer); the XLA loops (a jaxrnn variant) are faster still but are not a peer. jaxrnn-fast
    1..10 ms: min 1, 10th percentile 1.9, lower quartile 3.25, median 5.5 (linear interpolation),
    b's the same plus 1."""
    ref = list(range(1, 11))
    c = _case(**{
        "jaxrnn-fast": ref,
        "jaxrnn-fast-xla": [t / 2 for t in ref],
        "a": [2 * t for t in ref],
        "b": [t + 1 for t in ref],
    })  # fmt: skip
    got = report.percentile_ratios(c)
    want = " / ".join(f"{(x + 1) / x:.2f}x" for x in (1.0, 1.9, 3.25, 5.5))
    assert got == f"b / jaxrnn-fast at the min / p10 / p25 / p50 of each one's step times: {want}"
    assert want == "2.00x / 1.53x / 1.31x / 1.18x"
    table = report.case_table(c, peak=200.0)
    assert table.rstrip().endswith(got)
    # the median column: b / jaxrnn-fast = 6.5 / 5.5
    assert "| b | 6.50 | 4.25–8.75 | 10 | 1.18x |" in table


@pytest.mark.parametrize(
    "times", [{"a": [1.0, 2.0]}, {"jaxrnn-fast": [1.0], "jaxrnn": [2.0]}, {"jaxrnn-fast": []}]
)
def test_percentile_ratios_need_jaxrnn_fast_and_a_peer(times):
    assert report.percentile_ratios(_case(**times)) is None
