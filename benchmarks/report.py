"""Turns the JSON files of :mod:`benchmarks.run` and :mod:`benchmarks.memory` into tables and plots.

    PYTHONPATH=. python benchmarks/report.py                    # every file in benchmarks/results
    PYTHONPATH=. python benchmarks/report.py --full /tmp/run.json   # one run, every case in detail
    PYTHONPATH=. python benchmarks/report.py --update-md benchmarks/RESULTS.md

For each run: a summary table (frameworks x cases: median ms per step, and the ratio to the
``jaxrnn`` row of the same run), with ``--full`` a table per case (IQR, GFLOP/s, share of the
run's matmul peak, the fastest peer's ratio at several percentiles), and a plot written next to
the JSON file (``<name>.png``). ``--update-md`` rewrites the summary tables of a Markdown file
between the markers ``<!-- report.py: NAME -->`` and ``<!-- /report.py -->`` from
``benchmarks/results/NAME.json``, so RESULTS.md's tables are always the committed runs'.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REF = "jaxrnn"  # ratios are "row time / jaxrnn time" (> 1: jaxrnn is faster)
COLORS = {
    "jaxrnn": "tab:red", "jaxrnn-host": "darkred", "jaxrnn-xla": "tab:pink",
    "jaxrnn-scan": "tab:orange", "keras-jax": "tab:blue", "keras-fit": "tab:cyan",
    "flax": "tab:green", "torch": "tab:brown", "torch-1thread": "tab:purple",
    "torch-unpacked": "tan", "numpy": "tab:gray",
}  # fmt: skip
# Rows of results files written before jaxrnn.rnn took backend=: the "fast" path there is
# today's backend "auto", the plain path today's "scan".
LEGACY_NAMES = {"jaxrnn-fast": "jaxrnn", "jaxrnn-fast-xla": "jaxrnn-xla", "jaxrnn": "jaxrnn-scan"}
MARKER = re.compile(r"(<!-- report\.py: (?P<name>[\w.\-]+) -->\n).*?(<!-- /report\.py -->)", re.S)


def legacy_name(fw: str) -> str:
    """Today's name of a row of an old results file (``jaxrnn-fast-reread`` -> ``jaxrnn-reread``)."""
    if fw in LEGACY_NAMES:
        return LEGACY_NAMES[fw]
    return "jaxrnn-" + fw.removeprefix("jaxrnn-fast-") if fw.startswith("jaxrnn-fast-") else fw


def legacy_settings(rec: dict[str, Any], fw: str) -> dict[str, Any]:
    """The settings of worker ``fw`` (its old name) as an old record states them: run-wide
    ``host_env`` fields, and the old harness's rule that its ``jaxrnn-fast*`` rows got
    jaxrnn's compiler options (512-bit vectors: every CPU it ran on had AVX-512)."""
    env = rec.get("host_env")
    host = env == "tuned" or (env == "jaxrnn" and fw.startswith("jaxrnn"))
    torch = fw.startswith("torch")
    on_cpu = not rec["machine"].get("gpu") or rec.get("device") == "cpu"
    fast = fw.startswith("jaxrnn-fast") and on_cpu
    return {
        "glibc_tunables": rec.get("glibc_tunables") if host else None,
        "inline_dispatch": bool(host and rec.get("inline_dispatch") and not torch),
        "compiler_options": {"xla_cpu_prefer_vector_width": 512} if fast else {},
        "flush_denormal": bool(torch and rec.get("torch_flush_denormal")),
    }


def load(path: Path) -> dict[str, Any]:
    """A results file; an old run (no per-worker settings) gets today's row names, its
    workers' settings from :func:`legacy_settings`, and ``"legacy": True``."""
    rec = json.loads(Path(path).read_text())
    if "cases" not in rec or "workers" in rec:
        return rec
    rec["legacy"] = True
    rec["workers"] = {}
    for c in rec["cases"]:
        renamed = {}
        for fw, r in c["results"].items():
            r.setdefault("settings", legacy_settings(rec, fw))
            renamed[legacy_name(fw)] = r
            rec["workers"].setdefault(legacy_name(fw), r["settings"])
        c["results"] = renamed
    return rec


def settings_label(s: dict[str, Any] | None) -> str:
    """A worker's process settings in a few words (``"none"``: as a user's own script)."""
    if not s:
        return "?"
    parts = []
    tunables = (s.get("glibc_tunables") or "").split(":")
    if "glibc.malloc.mmap_max=0" in tunables:  # jaxrnn's set (jaxrnn.training.host)
        parts.append("malloc tunables")
    if s.get("inline_dispatch"):
        parts.append("inline dispatch")
    if s.get("compiler_options"):
        parts.append("XLA options")
    if s.get("flush_denormal"):
        parts.append("denormals flushed")
    return ", ".join(parts) or "none"


def stats(times: list[float]) -> tuple[float, float, float]:
    """Median, lower and upper quartile in ms."""
    q1, med, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
    return med, q1, q3


def matmul_peak(cases: list[dict]) -> float | None:
    """Best median GFLOP/s of the large-matmul cases of the same run."""
    best = None
    for c in cases:
        if c["spec"]["mode"] == "matmul" and c["results"].get("matmul", {}).get("times"):
            gf = c["flop"] / (stats(c["results"]["matmul"]["times"])[0] * 1e-3) / 1e9
            best = gf if best is None else max(best, gf)
    return best


# Rows that are not a peer's answer to the same model: PyTorch on the padded batch runs the
# backward direction from the padding (a lower bound on its time, not the model).
NOT_PEERS = {"torch-unpacked", "matmul"}


def fastest_peer(c: dict) -> str | None:
    """The peer (not ``jaxrnn*``, not in :data:`NOT_PEERS`) with the smallest median, or ``None``."""
    peers = {
        fw: r["times"]
        for fw, r in c["results"].items()
        if r.get("times") and not fw.startswith("jaxrnn") and fw not in NOT_PEERS
    }
    return min(peers, key=lambda fw: np.median(peers[fw])) if peers else None


def percentile_ratios(c: dict, qs: tuple[int, ...] = (0, 10, 25, 50)) -> str | None:
    """The fastest peer (by median) against jaxrnn at the same percentiles of each one's step
    times: does the ratio hold in the quiet steps too?"""
    ref = c["results"].get(REF, {}).get("times")
    best = fastest_peer(c)
    if not ref or best is None:
        return None
    ratios = np.percentile(c["results"][best]["times"], qs) / np.percentile(ref, qs)
    names = " / ".join("min" if q == 0 else f"p{q}" for q in qs)
    return (f"{best} / {REF} at the {names} of each one's step times: "
            + " / ".join(f"{r:.2f}x" for r in ratios))  # fmt: skip


def case_label(spec: dict[str, Any]) -> str:
    """A short column title: ``train LSTM``, ``infer simple B=1``, ``train LSTM 2x bi``."""
    cell = {"simple": "simple", "lstm": "LSTM", "gru": "GRU"}[spec["cell"]]
    parts = [spec["mode"], cell]
    if spec.get("layers"):
        parts.append(f"{spec['layers']}x bi")
    parts += [
        f"{k}={spec[k]}" for k, seed in (("B", 64), ("T", 250), ("H", 100)) if spec[k] != seed
    ]
    return " ".join(parts)


def run_header(rec: dict[str, Any], name: str = "") -> str:
    m = rec["machine"]
    peak = matmul_peak(rec["cases"])
    device = m["gpu"].split(" (UUID")[0].removeprefix("GPU 0: ") if m.get("gpu") else m["cpu"]
    versions = ", ".join(
        f"{k} {v}" for k, v in m["versions"].items() if v and k in ("jax", "torch", "flax", "keras")
    )
    lines = [
        f"{name + ': ' if name else ''}{m['date']}; {device}, {m['cores']} CPU cores; {versions}"
        + (f"; matmul peak {peak:.0f} GFLOP/s" if peak else "")
        + f"; `--host-env {rec.get('host_env') or 'default'}`"
        + (" (old harness; rows under their names of today)" if rec.get("legacy") else ""),
        "",
        f"`{rec['command']}`",
    ]
    return "\n".join(lines) + "\n"


def summary_table(rec: dict[str, Any]) -> str:
    """Frameworks x cases of one run: median ms (ratio to the ``jaxrnn`` row), each row's
    process settings, and the fastest peer's ratio per case."""
    cases = [c for c in rec["cases"] if c["spec"]["mode"] != "matmul"]
    fws: list[str] = []
    for c in cases:
        fws += [fw for fw in c["results"] if fw not in fws]
    head = ["framework", "settings", *(case_label(c["spec"]) for c in cases)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(cases)]
    for fw in fws:
        row = [fw, settings_label(rec.get("workers", {}).get(fw))]
        for c in cases:
            r, ref = c["results"].get(fw), c["results"].get(REF, {}).get("times")
            if r is None:
                row.append("")
            elif not r.get("times"):
                row.append("failed" if r.get("error") else "–")
            else:
                med = stats(r["times"])[0]
                ratio = f" ({med / stats(ref)[0]:.2f}x)" if ref and fw != REF else ""
                row.append(f"{med:.2f}{ratio}")
        lines.append("| " + " | ".join(row) + " |")
    best = []
    for c in cases:
        fw, ref = fastest_peer(c), c["results"].get(REF, {}).get("times")
        ok = fw and ref
        best.append(
            f"{stats(c['results'][fw]['times'])[0] / stats(ref)[0]:.2f}x {fw}" if ok else "–"
        )
    lines.append("| **fastest peer / jaxrnn** | | " + " | ".join(best) + " |")
    return "\n".join(lines) + "\n"


def case_table(c: dict, peak: float | None) -> str:
    res = c["results"]
    ref = res.get(REF, {}).get("times")
    ref_med = stats(ref)[0] if ref else None
    lines = [
        f"**{c['name']}** ({c['flop'] / 1e9:.2f} GFLOP/step in the plain formulation)\n",
        "| framework | median ms | IQR ms | n | row / jaxrnn | GFLOP/s | % of matmul peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fw, r in res.items():
        if not r.get("times"):
            lines.append(f"| {fw} | – | – | – | – | – | {(r.get('error') or 'skipped')[:60]} |")
            continue
        med, q1, q3 = stats(r["times"])
        ratio = f"{med / ref_med:.2f}x" if ref_med else "–"
        gf = c["flop"] / (med * 1e-3) / 1e9
        pct = f"{100 * gf / peak:.0f}%" if peak else "–"
        lines.append(
            f"| {fw} | {med:.2f} | {q1:.2f}–{q3:.2f} | {len(r['times'])} | {ratio} | {gf:.1f} | {pct} |"
        )
    pr = percentile_ratios(c)
    if pr:
        lines.append(f"\n{pr}")
    return "\n".join(lines) + "\n"


def full_report(rec: dict[str, Any], name: str = "") -> str:
    peak = matmul_peak(rec["cases"])
    out = [run_header(rec, name), summary_table(rec)]
    for c in rec["cases"]:
        if c["spec"]["mode"] != "matmul":
            out.append(case_table(c, peak))
        elif c["results"].get("matmul", {}).get("times"):
            med = stats(c["results"]["matmul"]["times"])[0]
            out.append(f"{c['name']}: {med:.2f} ms, {c['flop'] / med / 1e6:.0f} GFLOP/s\n")
    return "\n".join(out)


def plot_bars(cases: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in cases if c["spec"]["mode"] != "matmul"]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.8), squeeze=False)
    for ax, c in zip(axes[0], cases, strict=True):
        fws = [fw for fw, r in c["results"].items() if r.get("times")]
        meds = [stats(c["results"][fw]["times"]) for fw in fws]
        y = [m[0] for m in meds]
        err = [[m[0] - m[1] for m in meds], [m[2] - m[0] for m in meds]]
        colors = [COLORS.get(fw, "tab:gray") for fw in fws]
        ax.bar(range(len(fws)), y, yerr=err, color=colors, capsize=3)
        ax.set_xticks(range(len(fws)), fws, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms / step (median, IQR)")
        ax.set_title(case_label(c["spec"]), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_scaling(cases: list[dict], out: Path, device: str = "CPU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simple = [c for c in cases if c["spec"]["mode"] == "train" and c["spec"]["cell"] == "simple"]
    seed = dict(B=64, T=250, H=100)
    axes_def = [
        ("T", lambda s: s["B"] == 64 and s["H"] == 100),
        ("H", lambda s: s["B"] == 64 and (s["T"] == 250 or (s["T"] == 100 and s["H"] >= 1024))),
        ("B", lambda s: s["T"] == 250 and s["H"] == 100),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (var, keep) in zip(axes, axes_def, strict=True):
        sel = [c for c in simple if keep(c["spec"])]
        fws = sorted({fw for c in sel for fw, r in c["results"].items() if r.get("times")})
        for fw in fws:
            pts = sorted(
                (c["spec"][var], stats(c["results"][fw]["times"])[0])
                for c in sel
                if c["results"].get(fw, {}).get("times")
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=fw, lw=2.5 if fw == REF else 1.2,
                        color=COLORS.get(fw))  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        others = ", ".join(f"{k}={v}" for k, v in seed.items() if k != var)
        note = "; H=1024 at T=100" if var == "H" and device == "CPU" else ""
        ax.set_xlabel(f"{var} (others at seed {others}{note})")
        ax.set_ylabel("ms / training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Simple RNN training step: scaling ({device})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_run(rec: dict[str, Any], out: Path) -> None:
    """The run's plot: the scaling grid where it has one, else a bar chart per case."""
    m = rec["machine"]
    if any(c.get("workload") == "scaling" for c in rec["cases"]):
        device = m["gpu"].split(" (UUID")[0] if m.get("gpu") else "CPU"
        plot_scaling(rec["cases"], out, device)
    else:
        plot_bars(rec["cases"], out, f"{out.stem}: median ms/step (log scale)")


def plot_memory(mem: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for remat, style in (("none", "o-"), ("sqrt", "s-")):
        rs = sorted((r for r in mem["results"] if r["remat"] == remat), key=lambda r: r["T"])
        ax.plot([r["T"] for r in rs], [r["xla_peak_bytes"] / 2**20 for r in rs], style,
                label=f"remat={remat}: XLA buffers")  # fmt: skip
        ran = [r for r in rs if "rss_step_bytes" in r]
        if ran:
            ax.plot([r["T"] for r in ran], [r["rss_step_bytes"] / 2**20 for r in ran],
                    style[0] + "--", label=f"remat={remat}: process RSS growth (ran)")  # fmt: skip
    ax.axhline(2048, color="k", lw=0.8, ls=":", label="2 GiB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("T (sequence length)")
    ax.set_ylabel("peak MiB (one training step)")
    r0 = mem["results"][0]
    what = f"backend {r0.get('backend', r0.get('path'))}"
    if r0.get("layers", 1) > 1:
        what = f"stack of {r0['layers']}, {what}"
        what += f", dropout {r0['dropout']}" if r0.get("dropout") else ""
    ax.set_title(f"BPTT memory, {what}, {r0['cell']} B={r0['B']} H={r0['H']}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def memory_table(mem: dict) -> str:
    lines = [
        "| T | remat | XLA peak MiB (args+out+temp) | XLA temp MiB | RSS growth MiB (ran) | step s | grads finite |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(mem["results"], key=lambda r: (r["T"], r["remat"])):
        rss = f"{r['rss_step_bytes'] / 2**20:.0f}" if "rss_step_bytes" in r else "not run"
        step = f"{r['step_s']:.2f}" if "step_s" in r else "–"
        fin = str(r.get("grad_finite", "–"))
        lines.append(
            f"| {r['T']} | {r['remat']} | {r['xla_peak_bytes'] / 2**20:.1f} | "
            f"{r['xla_temp_bytes'] / 2**20:.1f} | {rss} | {step} | {fin} |"
        )
    return "\n".join(lines) + "\n"


def update_markdown(text: str, results: Path = RESULTS) -> str:
    """``text`` with each ``<!-- report.py: NAME -->`` block replaced by the header and
    summary table of ``results/NAME.json``."""

    def block(m: re.Match) -> str:
        name = m.group("name")
        rec = load(results / f"{name}.json")
        return f"{m.group(1)}{run_header(rec)}\n{summary_table(rec)}{m.group(3)}"

    return MARKER.sub(block, text)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("paths", nargs="*", help="JSON files or folders (default benchmarks/results)")
    ap.add_argument("--full", action="store_true", help="also a table per case")
    ap.add_argument("--no-plots", action="store_true", help="write no PNG files")
    ap.add_argument("--md", default=None, help="also write the tables to this file")
    ap.add_argument("--update-md", default=None, help="rewrite the marked tables of this file")
    args = ap.parse_args()
    if args.update_md:
        path = Path(args.update_md)
        path.write_text(update_markdown(path.read_text()))
        print(f"updated {path}")
        return
    files = []
    for p in map(Path, args.paths or [RESULTS]):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    out = []
    for f in files:
        rec = load(f)
        if "cases" not in rec:  # benchmarks/memory.py
            out.append(f"### {f.name}\n\n`{rec['command']}`\n\n{memory_table(rec)}")
            if not args.no_plots:
                plot_memory(rec, f.with_suffix(".png"))
            continue
        text = (
            full_report(rec, f.stem)
            if args.full
            else run_header(rec, f.stem) + "\n" + summary_table(rec)
        )
        out.append(f"### {f.stem}\n\n{text}")
        if not args.no_plots:
            plot_run(rec, f.with_suffix(".png"))
    text = "\n".join(out)
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
