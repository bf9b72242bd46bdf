"""benchmarks/parallel.py: each table, on tiny sizes, measures what it says."""

import json
from pathlib import Path

import pytest

from benchmarks import parallel as bench

ROOT = Path(__file__).resolve().parents[2]


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
    # the limits: a variant past --max-seconds (from the previous T) or --max-gib is not run,
    # and its row says why; the sequential reference always runs for the time limit
    rows = bench.main(
        ["rnn", "--cells", "simple", "--T", "8,16", "--H", "2", "--B", "2", "--reps", "1",
         "--methods", "quasi", "--max-seconds", "0"]
    )["rows"]  # fmt: skip
    assert [("not run" in r) for r in rows] == [False, False, False, True]
    assert "at T=8" in rows[3]["not run"] and "--max-seconds 0" in rows[3]["not run"]
    rows = bench.main(
        ["rnn", "--cells", "simple", "--T", "8", "--H", "2", "--B", "2", "--reps", "1",
         "--methods", "newton", "--max-gib", "0"]
    )["rows"]  # fmt: skip
    assert len(rows) == 2 and all("GiB > --max-gib 0.0" in r["not run"] for r in rows)
    cells = bench.main(["cells", "--T", "16", "--H", "4", "--B", "2", "--reps", "1"])["rows"]
    assert [r["cell"] for r in cells] == ["lru", "mingru", "minlstm"]
    assert all(float(r["max dev"]) < 1e-4 for r in cells)


def test_the_guides_table_is_the_committed_run():
    """docs/guide/parallel.md's linear-cell table states the committed results file's numbers."""
    results = ROOT / "benchmarks" / "results" / "parallel" / "cells-cpu-amd-zen3-2026-12-07.json"
    guide = (ROOT / "docs" / "guide" / "parallel.md").read_text(encoding="utf-8")
    record = json.loads(results.read_text())
    assert record["what"] == "cells" and results.relative_to(ROOT).as_posix() in " ".join(
        record["argv"]
    )
    assert " ".join(record["argv"][:-2]) in " ".join(guide.split())  # the command, as run
    for r in record["rows"]:
        ms = [
            f"{float(r[k]):.1f}"
            for k in ("rnn fwd ms", "rnn train ms", "scan fwd ms", "scan train ms")
        ]
        row = f"| {r['cell']} | {r['B x T x H']} | {ms[0]} / {ms[1]} | {ms[2]} / {ms[3]} | {r['speed-up fwd / train']} |"
        assert row in guide, row


def test_the_guides_parallel_rnn_table_is_the_committed_run():
    """docs/guide/parallel.md's parallel.rnn table is rnn_summary of the committed results file."""
    results = ROOT / "benchmarks" / "results" / "parallel" / "rnn-cpu-amd-zen3-2026-12-07.json"
    guide = (ROOT / "docs" / "guide" / "parallel.md").read_text(encoding="utf-8")
    record = json.loads(results.read_text())
    assert record["what"] == "rnn"
    assert " ".join(record["argv"][:-2]) in " ".join(guide.split())  # the command, as run
    assert bench.rnn_summary(record["rows"]) in guide


def test_a_variant_that_fails_is_a_row_that_says_so(monkeypatch):
    """An error while compiling or running one variant (a device out of memory) ends neither the
    run nor the table: its row keeps the error's first line."""

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 68 GiB\nmore detail")

    monkeypatch.setattr(bench, "_measure", out_of_memory)
    rows = bench.main(
        ["rnn", "--cells", "gru", "--T", "8", "--H", "2", "--B", "2", "--methods", "newton"]
    )["rows"]
    assert [r["not run"] for r in rows] == [
        "failed: RuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 68 GiB"
    ] * 2
    assert "| not run | failed (see the results file) |" in bench.rnn_summary(rows)
