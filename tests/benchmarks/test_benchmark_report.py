"""benchmarks/report.py: the tables it makes from a run's raw step times, on hand-made runs,
and RESULTS.md's tables against the committed results files."""

import copy
import json
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]
PLAIN = {"glibc_tunables": None, "inline_dispatch": False, "compiler_options": {},
         "flush_denormal": False}  # fmt: skip
HOST = {"glibc_tunables": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0",
        "inline_dispatch": True, "compiler_options": {"xla_cpu_prefer_vector_width": 512},
        "flush_denormal": False}  # fmt: skip


def _case(name="train-simple-B64-T250-H100", spec=None, **times_ms):
    spec = spec or dict(mode="train", cell="simple", B=64, T=250, H=100)
    return {
        "name": name,
        "spec": spec,
        "flop": 1.27e9,
        "results": {fw: {"times": [t * 1e-3 for t in ts]} for fw, ts in times_ms.items()},
    }


def _run(cases, workers):
    machine = {"date": "2026-12-06 10:00:00 UTC", "cpu": "AMD EPYC", "cores": 2, "gpu": None,
               "versions": {"jax": "0.10.2", "torch": "2.13.0"}, "kind": "cpu-amd-zen3"}  # fmt: skip
    return {"command": "python benchmarks/run.py", "machine": machine, "host_env": "default",
            "workers": workers, "cases": cases}  # fmt: skip


def test_percentile_ratios_take_the_fastest_peer_by_median():
    """Peer a is twice jaxrnn at every step, peer b one ms slower (smaller median, so the
    fastest peer); the XLA loops (a jaxrnn row) are faster still but are not a peer, nor is
    PyTorch on the unpacked batch. jaxrnn 1..10 ms: min 1, 10th percentile 1.9, lower
    quartile 3.25, median 5.5 (linear interpolation), b's the same plus 1."""
    ref = list(range(1, 11))
    c = _case(**{
        "jaxrnn": ref,
        "jaxrnn-xla": [t / 2 for t in ref],
        "torch-unpacked": [t / 3 for t in ref],
        "a": [2 * t for t in ref],
        "b": [t + 1 for t in ref],
    })  # fmt: skip
    got = report.percentile_ratios(c)
    want = " / ".join(f"{(x + 1) / x:.2f}x" for x in (1.0, 1.9, 3.25, 5.5))
    assert got == f"b / jaxrnn at the min / p10 / p25 / p50 of each one's step times: {want}"
    assert want == "2.00x / 1.53x / 1.31x / 1.18x"
    table = report.case_table(c, peak=200.0)
    assert table.rstrip().endswith(got)
    # the median column: b / jaxrnn = 6.5 / 5.5
    assert "| b | 6.50 | 4.25–8.75 | 10 | 1.18x |" in table


@pytest.mark.parametrize("times", [{"a": [1.0, 2.0]}, {"jaxrnn": [1.0], "jaxrnn-scan": [2.0]},
                                   {"jaxrnn": []}])  # fmt: skip
def test_percentile_ratios_need_jaxrnn_and_a_peer(times):
    assert report.percentile_ratios(_case(**times)) is None


def test_summary_table_shows_the_plain_script_row_beside_the_host_row():
    """One row per framework with its process settings (jaxrnn: none, a plain script;
    jaxrnn-host: jaxrnn's host settings; PyTorch: denormals flushed), a column per case with
    the median ms and the ratio to jaxrnn, blank where a framework did not run a case, and
    the fastest peer per case."""
    train = _case(jaxrnn=[10.0, 12.0, 14.0], **{"jaxrnn-host": [10.0, 11.0, 12.0]},
                  torch=[20.0, 24.0, 28.0], numpy=[40.0])  # fmt: skip
    lstm = _case("train-lstm-B64-T250-H100", dict(mode="train", cell="lstm", B=64, T=250, H=100),
                 jaxrnn=[30.0], **{"jaxrnn-host": [27.0]}, torch=[45.0])  # fmt: skip
    infer = _case("infer-simple-B1-T250-H100", dict(mode="infer", cell="simple", B=1, T=250, H=100),
                  jaxrnn=[0.2], torch=[0.5])  # fmt: skip
    torch = dict(PLAIN, flush_denormal=True)
    rec = _run([train, lstm, infer], {"jaxrnn": PLAIN, "jaxrnn-host": HOST, "torch": torch,
                                      "numpy": PLAIN})  # fmt: skip
    lines = report.summary_table(rec).splitlines()
    assert lines[0] == "| framework | settings | train simple | train LSTM | infer simple B=1 |"
    assert lines[2] == "| jaxrnn | none | 12.00 | 30.00 | 0.20 |"
    assert lines[3] == (
        "| jaxrnn-host | malloc tunables, inline dispatch, XLA options | 11.00 (0.92x) | "
        "27.00 (0.90x) |  |"
    )
    assert (
        lines[4] == "| torch | denormals flushed | 24.00 (2.00x) | 45.00 (1.50x) | 0.50 (2.50x) |"
    )
    assert lines[5] == "| numpy | none | 40.00 (3.33x) |  |  |"
    assert lines[6] == "| **fastest peer / jaxrnn** | | 2.00x torch | 1.50x torch | 2.50x torch |"


def test_old_results_files_get_todays_row_names_and_their_run_wide_settings(tmp_path):
    """A run written before rnn took backend= (no per-worker settings): jaxrnn-fast is today's
    jaxrnn (backend auto), jaxrnn-fast-xla jaxrnn-xla, the plain path jaxrnn jaxrnn-scan, a
    GPU variant jaxrnn-fast-X jaxrnn-X; with --host-env tuned every worker had the malloc
    tunables, the JAX ones inline dispatch, PyTorch flushed denormals; the fast rows had
    jaxrnn's compiler options on a CPU."""
    old = _run([_case(**{"jaxrnn-fast": [5.0], "jaxrnn-fast-xla": [8.0], "jaxrnn": [12.0],
                         "jaxrnn-fast-reread": [6.0], "torch": [20.0]})], {})  # fmt: skip
    del old["workers"]
    old.update(host_env="tuned", glibc_tunables="glibc.malloc.mmap_max=0", inline_dispatch=True,
               torch_flush_denormal=True)  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    rec = report.load(path)
    assert rec["legacy"]
    assert list(rec["cases"][0]["results"]) == [
        "jaxrnn", "jaxrnn-xla", "jaxrnn-scan", "jaxrnn-reread", "torch"
    ]  # fmt: skip
    labels = {fw: report.settings_label(s) for fw, s in rec["workers"].items()}
    assert (
        labels["jaxrnn"] == labels["jaxrnn-xla"] == "malloc tunables, inline dispatch, XLA options"
    )
    assert labels["jaxrnn-scan"] == "malloc tunables, inline dispatch"
    assert labels["torch"] == "malloc tunables, denormals flushed"
    assert "| jaxrnn-scan | malloc tunables, inline dispatch | 12.00 (2.40x) |" in (
        report.summary_table(rec)
    )


def test_update_markdown_rewrites_only_the_marked_blocks(tmp_path):
    rec = _run([_case(jaxrnn=[10.0], torch=[20.0])], {"jaxrnn": PLAIN, "torch": PLAIN})
    (tmp_path / "cpu-x-2026-12-06.json").write_text(json.dumps(rec))
    text = ("intro\n<!-- report.py: cpu-x-2026-12-06 -->\nstale table\n<!-- /report.py -->\n"
            "outro\n")  # fmt: skip
    got = report.update_markdown(text, tmp_path)
    assert got.startswith("intro\n<!-- report.py: cpu-x-2026-12-06 -->\n2026-12-06 10:00:00 UTC")
    assert "stale table" not in got and got.endswith("<!-- /report.py -->\noutro\n")
    assert "| torch | none | 20.00 (2.00x) |" in got
    assert report.update_markdown(got, tmp_path) == got


def test_results_md_tables_are_the_committed_runs():
    """Every results file has its block in RESULTS.md, and each block is what report.py makes
    of the file (``report.py --update-md benchmarks/RESULTS.md`` rewrites them)."""
    md = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    names = {m.group("name") for m in report.MARKER.finditer(md)}
    assert names == {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert report.update_markdown(md) == md


def test_load_leaves_new_records_alone(tmp_path):
    rec = _run([_case(jaxrnn=[1.0])], {"jaxrnn": PLAIN})
    path = tmp_path / "new.json"
    path.write_text(json.dumps(rec))
    assert report.load(path) == copy.deepcopy(rec)
