"""Turns the JSON files of :mod:`benchmarks.run` and :mod:`benchmarks.memory` into tables and plots.

    PYTHONPATH=. python benchmarks/report.py            # prints the tables, writes benchmarks/*.png
    PYTHONPATH=. python benchmarks/report.py --md tables.md
    PYTHONPATH=. python benchmarks/report.py --results benchmarks/results/gpu   # the GPU runs

The prose of ``benchmarks/RESULTS.md`` is written by hand around these tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLORS = {
    "jaxrnn-fast": "tab:red", "jaxrnn-fast-xla": "tab:pink", "jaxrnn": "tab:orange",
    "keras-jax": "tab:blue",
    "keras-fit": "tab:cyan", "flax": "tab:green", "torch": "tab:brown",
    "torch-1thread": "tab:purple", "numpy": "tab:gray", "jaxrnn-fast-u10": "tab:olive",
    "jaxrnn-fast-w8": "darkred", "torch-unpacked": "tan", "jaxrnn-fast-kern": "salmon",
    "jaxrnn-fast-hoist": "crimson", "jaxrnn-fast-hoist-w16": "maroon", "jaxrnn-fast-s2": "coral",
}  # fmt: skip
HOST_ENV = {  # run.py --host-env
    "tuned": "`--host-env tuned`: every worker with GLIBC_TUNABLES={}{}",
    "jaxrnn": "`--host-env jaxrnn`: the jaxrnn workers with GLIBC_TUNABLES={}{}, the peers without",
    "default": "`--host-env default`: no worker with jaxrnn's tunables (GLIBC_TUNABLES={}){}",
    None: "workers in the default environment (a run from before `--host-env`)",
}
REF = "jaxrnn-fast"  # ratios are "peer time / jaxrnn-fast time" (> 1: jaxrnn-fast is faster)


def stats(times: list[float]) -> tuple[float, float, float]:
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


def percentile_ratios(c: dict, qs: tuple[int, ...] = (0, 10, 25, 50)) -> str | None:
    """The fastest peer (by median; every framework not named ``jaxrnn*``) against jaxrnn-fast at
    the same percentiles of each one's step times: does the ratio hold in the quiet steps too?"""
    res = c["results"]
    ref = res.get(REF, {}).get("times")
    peers = {
        fw: r["times"] for fw, r in res.items() if r.get("times") and not fw.startswith("jaxrnn")
    }
    if not ref or not peers:
        return None
    best = min(peers, key=lambda fw: np.median(peers[fw]))
    ratios = np.percentile(peers[best], qs) / np.percentile(ref, qs)
    names = " / ".join("min" if q == 0 else f"p{q}" for q in qs)
    return (f"{best} / {REF} at the {names} of each one's step times: "
            + " / ".join(f"{r:.2f}x" for r in ratios))  # fmt: skip


def case_table(c: dict, peak: float | None) -> str:
    res = c["results"]
    ref = res.get(REF, {}).get("times")
    ref_med = stats(ref)[0] if ref else None
    lines = [
        f"**{c['name']}** ({c['flop'] / 1e9:.2f} GFLOP/step in the plain formulation)\n",
        "| framework | median ms | IQR ms | n | peer / jaxrnn-fast | GFLOP/s | % of matmul peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fw, r in res.items():
        if not r.get("times"):
            lines.append(f"| {fw} | – | – | – | – | – | {r.get('error', 'skipped')[:60]} |")
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
        ax.set_title(c["name"], fontsize=9)
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


def plot_memory(mem: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for remat, style in (("none", "o-"), ("sqrt", "s-")):
        rs = sorted((r for r in mem["results"] if r["remat"] == remat), key=lambda r: r["T"])
        ax.plot([r["T"] for r in rs], [r["xla_peak_bytes"] / 2**20 for r in rs], style,
                label=f"remat={remat}: XLA buffers")  # fmt: skip
        run = [r for r in rs if "rss_step_bytes" in r]
        if run:
            ax.plot([r["T"] for r in run], [r["rss_step_bytes"] / 2**20 for r in run], style[0] + "--",
                    label=f"remat={remat}: process RSS growth (ran)")  # fmt: skip
    ax.axhline(2048, color="k", lw=0.8, ls=":", label="2 GiB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("T (sequence length)")
    ax.set_ylabel("peak MiB (one training step)")
    r0 = mem["results"][0]
    path = "fast.rnn" if r0.get("path") == "fast" else "rnn"
    if r0.get("layers", 1) > 1:
        path = f"stack of {r0['layers']}" + (", fast" if r0.get("path") == "fast" else "")
        path += f", dropout {r0['dropout']}" if r0.get("dropout") else ""
    ax.set_title(f"BPTT memory, {path}, {r0['cell']} B={r0['B']} H={r0['H']}", fontsize=10)
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


def options_table(rec: dict) -> str:
    """benchmarks/options.py: fast.rnn / stack(fast=True) against the plain path (medians, ms)."""
    lines = [
        f"{rec['machine']['date']}; {rec['machine']['cpu']}, {rec['machine']['cores']} cores; "
        f"jax {rec['machine']['versions']['jax']}; B = {rec['B']}, T = {rec['T']}, "
        f"D = {rec['D']}, H = {rec['H']}; medians of {rec['rounds'] * rec['steps']} steps\n",
        "| cell | variant | plain, ms | fast, ms | plain / fast |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rec["rows"]:
        lines.append(
            f"| {r['cell']} | {r['variant']} | {r['plain_ms']:.2f} | {r['fast_ms']:.2f} | "
            f"{r['plain_ms'] / r['fast_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--md", default=None, help="also write the tables to this file")
    args = ap.parse_args()
    out = []
    for f in sorted(Path(args.results).glob("*.json")):
        rec = json.loads(f.read_text())
        if f.stem.startswith("memory"):
            out.append(f"### {f.name}\n\n`{rec['command']}`\n\n{memory_table(rec)}")
            plot_memory(rec, HERE / f"{f.stem}.png")
            continue
        if f.stem == "options":
            out.append(f"### {f.name}\n\n`{rec['command']}`\n\n{options_table(rec)}")
            continue
        m = rec["machine"]
        peak = matmul_peak(rec["cases"])
        out.append(
            f"### {f.name}\n\n`{rec['command']}`\n\n{m['date']}; {m['cpu']}, {m['cores']} cores, "
            f"GPU: {m['gpu'] or 'none'}; load average {m['loadavg'][0]:.1f} at start, "
            f"{m.get('loadavg_end', [float('nan')])[0]:.1f} at end; versions "
            + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
            + (f"; large-matmul peak in this run: **{peak:.0f} GFLOP/s**" if peak else "")
            + "; "
            + HOST_ENV.get(rec.get("host_env"), HOST_ENV[None]).format(
                rec.get("glibc_tunables") or "unset",
                " and inline CPU dispatch (JAX)" if rec.get("inline_dispatch") else "",
            )
            + (
                "; PyTorch with denormals flushed to zero"
                if rec.get("torch_flush_denormal")
                else ""
            )
            + "\n"
        )
        for c in rec["cases"]:
            if c["spec"]["mode"] != "matmul":
                out.append(case_table(c, peak))
            else:
                r = c["results"].get("matmul", {})
                if r.get("times"):
                    med = stats(r["times"])[0]
                    out.append(f"{c['name']}: {med:.2f} ms, {c['flop'] / med / 1e6:.0f} GFLOP/s\n")
        if any(c["workload"] == "scaling" and c["spec"]["cell"] == "simple" for c in rec["cases"]):
            device = m["gpu"].split(" (UUID")[0] if m["gpu"] else "CPU"
            plot_scaling(rec["cases"], HERE / f"{f.stem}.png", device)
        else:
            plot_bars(rec["cases"], HERE / f"{f.stem}.png", f"{f.stem}: median ms/step (log scale)")
    text = "\n".join(out)
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
