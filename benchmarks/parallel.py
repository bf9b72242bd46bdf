"""Parallel-in-time evaluation against the sequential scan: timings, iterations, deviations.

    PYTHONPATH=. python benchmarks/parallel.py grad  [--T 1000,10000]
    PYTHONPATH=. python benchmarks/parallel.py rnn   [--cells gru,simple --T 1000,10000,100000 --H 1,16,64]
    PYTHONPATH=. python benchmarks/parallel.py cells [--cells lru,mingru,minlstm --T 512,4096]

``grad``: the gradient of :func:`jaxrnn.parallel.linear_scan` (its rule: one reversed scan
with the transposed coefficients) against autodiff through a plain
``jax.lax.associative_scan`` of the same recurrence, for diagonal and dense coefficients.

``rnn``: :func:`jaxrnn.rnn` (one step after another, on the backend ``"auto"`` picks, named
in the table) against :func:`jaxrnn.parallel.rnn` with each method, for ``xs [B, T, D]``
(B = 16, D = H), a GRU or a tanh RNN; forward alone and forward + ``jax.grad`` of ``sum(ys ** 2)`` w.r.t. the parameters,
each jitted. Reported: median wall time, Newton iterations, the largest deviation of ``ys``
from the sequential result, and XLA's buffer sizes of the compiled forward + gradient
(``memory_analysis``: temporaries + arguments + outputs; a bound on the peak).

``cells``: the linear cells' ``scan`` (:func:`jaxrnn.parallel.linear_scan`) against
``rnn(cells.X.cell, ..., backend="scan")`` (step by step), forward and one
training step's gradient.

Every variant is compiled first, then timed ``--reps`` times; medians are printed as Markdown
tables (``--out FILE`` also writes them as JSON). All in float32 unless ``--float64``. In
``rnn``, a variant whose ``--reps`` runs would take more than ``--budget`` seconds is timed
once (the ``runs`` column), and one that would need more than ``--max-gib`` of buffers or
``--max-seconds`` a run is not run: its row says why, with the figure (the limit measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxrnn import backends, cells, parallel, rnn  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def timed(fns: dict, *args, reps: int) -> dict:
    """Median seconds of each ``fns[name](*args)`` (compiled first), over ``reps`` rounds that
    call every function once, in turn, so that a shared machine's load falls on all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _mib(compiled) -> float:
    """XLA's temporaries + arguments + outputs of a compiled function, in MiB."""
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20


def buffer_mib(fn, *args) -> float:
    """XLA's temporaries + arguments + outputs of the jitted ``fn`` compiled for ``args``, in MiB."""
    return _mib(fn.lower(*args).compile())


def table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)
    return head + body


# --- grad: linear_scan's rule against autodiff of the plain scan ---------------------------


def plain_linear_scan(a, b, h0, dense: bool):
    """``h_t = a_t h_{t-1} + b_t`` by ``associative_scan`` alone ([B, T, H]; autodiff's gradient)."""

    def combine(e1, e2):
        a1, b1 = e1
        a2, b2 = e2
        if dense:
            return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2
        return a2 * a1, a2 * b1 + b2

    first = jnp.einsum("...ij,...j->...i", a[:, 0], h0) if dense else a[:, 0] * h0
    b = b.at[:, 0].add(first)
    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


def bench_grad(args) -> list[dict]:
    rows = []
    dtype = jnp.float64 if args.float64 else jnp.float32
    for dense, H in ((False, 64), (True, 16)):
        for T in args.T:
            k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
            B = args.B
            shape_a = (B, T, H, H) if dense else (B, T, H)
            a = jax.random.uniform(k1, shape_a, dtype, -1, 1) / (H if dense else 1)
            b = jax.random.normal(k2, (B, T, H), dtype)
            h0 = jax.random.normal(k3, (B, H), dtype)

            def loss_lib(a, b, h0):
                return jnp.sum(jnp.sin(parallel.linear_scan(a, b, h0)))

            def loss_plain(a, b, h0, dense=dense):
                return jnp.sum(jnp.sin(plain_linear_scan(a, b, h0, dense)))

            g_lib = jax.jit(jax.grad(loss_lib, argnums=(0, 1, 2)))
            g_plain = jax.jit(jax.grad(loss_plain, argnums=(0, 1, 2)))
            f_lib = jax.jit(loss_lib)
            dev = max(
                float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
                for x, y in zip(g_lib(a, b, h0), g_plain(a, b, h0), strict=True)
            )
            t = timed({"f": f_lib, "rule": g_lib, "autodiff": g_plain}, a, b, h0, reps=args.reps)
            rows.append(
                {
                    "coefficients": f"{'dense' if dense else 'diagonal'} H={H}",
                    "B x T": f"{B} x {T}",
                    "forward ms": f"{1e3 * t['f']:.2f}",
                    "grad, rule ms": f"{1e3 * t['rule']:.2f}",
                    "grad, autodiff ms": f"{1e3 * t['autodiff']:.2f}",
                    "grad buffers rule / autodiff MiB": f"{buffer_mib(g_lib, a, b, h0):.1f} / "
                    f"{buffer_mib(g_plain, a, b, h0):.1f}",
                    "rel. deviation": f"{dev:.1e}",
                }
            )
            print(rows[-1], flush=True)
    return rows


# --- rnn: the sequential scan against parallel.rnn -----------------------------------------


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def _time(compiled, *args, reps: int, budget: float) -> tuple:
    """``compiled(*args)``'s output, its median seconds and how many runs that is over: ``reps``
    runs after a warm-up, or only the warm-up's time where ``reps`` runs would exceed ``budget``."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first = time.perf_counter() - t0
    if first * reps > budget:
        return out, first, 1
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        ts.append(time.perf_counter() - t0)
    return out, statistics.median(ts), reps


def _write(args, rows: list[dict]) -> dict:
    """The run's record; written to ``--out`` too (called after every row, so a long run that
    stops keeps what it measured)."""
    record = {"what": args.what, "machine": _machine(), "argv": args.argv, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:160]


def _measure(args, f, g, params, xs) -> dict:
    """Compiles ``g`` (forward + gradient) and, if its buffers fit ``--max-gib``, times ``f`` and
    ``g``: ``{"row": columns, "out": f's output, "tf": s, "tg": s}`` or ``{"row": {"not run"}}``."""
    cg = _compile(g, params, xs)
    need = _mib(cg)
    row = {"buffers MiB": f"{need:.1f}"}
    if need > 1024 * args.max_gib:
        row["not run"] = f"XLA's buffers {need / 1024:.1f} GiB > --max-gib {args.max_gib:.1f}"
        return {"row": row}
    cf = _compile(f, params, xs)
    out, tf, nf = _time(cf, params, xs, reps=args.reps, budget=args.budget)
    _, tg, ng = _time(cg, params, xs, reps=args.reps, budget=args.budget)
    row.update(
        {"fwd ms": f"{1e3 * tf:.1f}", "fwd+grad ms": f"{1e3 * tg:.1f}", "runs": f"{nf} / {ng}"}
    )
    return {"row": row, "out": out, "tf": tf, "tg": tg}


def bench_rnn(args) -> list[dict]:
    """Rows of the sequential ``rnn`` and each ``parallel.rnn`` method. A variant whose compiled
    forward + gradient needs more than ``--max-gib`` of XLA buffers, or whose time extrapolated
    from the previous ``T`` (linearly: a lower bound, iterations grow with ``T``) exceeds
    ``--max-seconds``, is not run; its row says why, with the figure."""
    rows = []
    dtype = jnp.float64 if args.float64 else jnp.float32
    methods = args.methods.split(",")
    for name in args.cells.split(","):
        mod = cells.get(name)
        for H in args.H:
            params = mod.init(jax.random.key(0), H, H, dtype=dtype)
            last: dict[str, tuple[int, float]] = {}  # method -> (T, seconds of fwd + grad)
            for T in args.T:
                xs = jax.random.normal(jax.random.key(1), (args.B, T, H), dtype)

                def seq_f(p, xs, mod=mod):
                    return rnn(mod.cell, p, xs)[1]

                def seq_g(p, xs, mod=mod):
                    return jax.grad(lambda p: jnp.sum(rnn(mod.cell, p, xs)[1] ** 2))(p)

                variants = [("sequential", seq_f, seq_g)]
                for method in methods:

                    def par_f(p, xs, mod=mod, method=method):
                        c, ys, info = parallel.rnn(mod.cell, p, xs, method=method, return_info=True)
                        return ys, info

                    def par_g(p, xs, mod=mod, method=method):
                        def loss(p):
                            return jnp.sum(parallel.rnn(mod.cell, p, xs, method=method)[1] ** 2)

                        return jax.grad(loss)(p)

                    variants.append((method, par_f, par_g))
                ys_ref = t_f = t_g = None
                for method, f, g in variants:
                    row = {"cell": name, "H": H, "T": T, "method": method}
                    if method == "sequential":
                        row["method"] = f"sequential ({backends.select(mod.cell, params, xs).name})"
                    rows.append(row)
                    if method in last and method != "sequential":  # the reference always runs
                        T0, s0 = last[method]
                        guess = s0 * T / T0
                        if guess > args.max_seconds:
                            row["not run"] = (
                                f"fwd+grad took {s0:.3g} s at T={T0}: >= {guess:.3g} s expected "
                                f"> --max-seconds {args.max_seconds:g}"
                            )
                            print(row, flush=True)
                            _write(args, rows)
                            continue
                    try:
                        measured = _measure(args, f, g, params, xs)
                    except Exception as e:  # e.g. out of device memory: the row says so
                        measured = {
                            "row": {"not run": f"failed: {type(e).__name__}: {_first_line(e)}"}
                        }
                    row.update(measured.pop("row"))
                    if "not run" in row:
                        print(row, flush=True)
                        _write(args, rows)
                        continue
                    out, tf, tg = measured["out"], measured["tf"], measured["tg"]
                    last[method] = (T, tg)
                    if method == "sequential":
                        ys_ref, t_f, t_g = out, tf, tg
                    else:
                        ys, info = out
                        row["iterations"] = int(info.iterations)
                        row["converged"] = bool(info.converged)
                        if ys_ref is not None:
                            row["speed-up fwd / fwd+grad"] = f"{t_f / tf:.2f}x / {t_g / tg:.2f}x"
                            row["max dev ys"] = f"{float(jnp.max(jnp.abs(ys - ys_ref))):.1e}"
                    del measured, out
                    print(row, flush=True)
                    _write(args, rows)
    return rows


# --- cells: the linear cells' scan against the step-by-step rnn ----------------------------


def bench_cells(args) -> list[dict]:
    rows = []
    dtype = jnp.float64 if args.float64 else jnp.float32
    for name in args.cells.split(","):
        mod = cells.get(name)
        H = args.H[0]
        params = mod.init(jax.random.key(0), H, H, dtype=dtype)
        for T in args.T:
            xs = jax.random.normal(jax.random.key(1), (args.B, T, H), dtype)

            def out(carry_ys):
                carry, ys = carry_ys
                return ys

            def step_f(p, xs, mod=mod):
                return out(rnn(mod.cell, p, xs, backend="scan"))  # step by step

            def scan_f(p, xs, mod=mod):
                return out(mod.scan(p, xs))

            def grad_of(f):
                return jax.jit(jax.grad(lambda p, x: jnp.mean(f(p, x) ** 2)))

            dev = float(jnp.max(jnp.abs(jax.jit(step_f)(params, xs) - jax.jit(scan_f)(params, xs))))
            fns = {
                "rnn fwd": jax.jit(step_f),
                "scan fwd": jax.jit(scan_f),
                "rnn grad": grad_of(step_f),
                "scan grad": grad_of(scan_f),
            }
            t = timed(fns, params, xs, reps=args.reps)
            rows.append(
                {
                    "cell": name,
                    "B x T x H": f"{args.B} x {T} x {H}",
                    "rnn fwd ms": f"{1e3 * t['rnn fwd']:.2f}",
                    "scan fwd ms": f"{1e3 * t['scan fwd']:.2f}",
                    "rnn train ms": f"{1e3 * t['rnn grad']:.2f}",
                    "scan train ms": f"{1e3 * t['scan grad']:.2f}",
                    "speed-up fwd / train": f"{t['rnn fwd'] / t['scan fwd']:.2f}x / "
                    f"{t['rnn grad'] / t['scan grad']:.2f}x",
                    "max dev": f"{dev:.1e}",
                }
            )
            print(rows[-1], flush=True)
    return rows


def _default_max_gib() -> float:
    """90% of an accelerator's memory, else 60% of the host's RAM."""
    try:
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # a backend without memory statistics
        limit = None
    if limit:
        return 0.9 * limit / 2**30
    try:
        return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def rnn_summary(rows: list[dict]) -> str:
    """The ``rnn`` rows as one Markdown line per cell, H and T: the sequential time, and per
    method its speed-up (forward / forward + gradient) and iterations, or why it did not run."""
    methods = list(dict.fromkeys(r["method"] for r in rows if not r["method"].startswith("seq")))
    cols = ["cell", "H", "T", "sequential: fwd / fwd+grad ms", *methods]
    lines = []
    for r in rows:
        if r["method"].startswith("seq"):
            seq = f"{r['fwd ms']} / {r['fwd+grad ms']}" if "fwd ms" in r else "not run"
            lines.append({"cell": r["cell"], "H": r["H"], "T": f"{r['T']:,}", cols[3]: seq})
        elif "not run" in r:
            why = r["not run"]
            mem = re.search(r"buffers (\S+ GiB)", why)
            secs = re.search(r">= (\S+) s expected", why)
            lines[-1][r["method"]] = (
                f"not run: needs {mem.group(1)}"
                if mem
                else f"not run: >= {secs.group(1)} s a run"
                if secs
                else "failed (see the results file)"
            )
        else:
            flag = "" if r["converged"] else ", not converged"
            lines[-1][r["method"]] = f"{r['speed-up fwd / fwd+grad']} ({r['iterations']} it{flag})"
    return table(lines, cols)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("grad", "rnn", "cells"))
    ap.add_argument("--cells", default=None, help="comma-separated registered cell names")
    ap.add_argument("--methods", default=",".join(parallel.METHODS))
    ap.add_argument("--T", type=_ints, default=None, help="comma-separated sequence lengths")
    ap.add_argument("--H", type=_ints, default=None, help="comma-separated hidden sizes")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="rnn: seconds of timed runs per variant; a slower one is timed once",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="rnn: skip a variant expected to take longer than this per run",
    )
    ap.add_argument(
        "--max-gib",
        type=float,
        default=_default_max_gib(),
        help="rnn: skip a variant whose XLA buffers exceed this (default: 90%% of an "
        "accelerator's memory, else 60%% of RAM)",
    )
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    defaults = {
        "grad": ("", [1000, 10000], [64]),
        "rnn": ("gru,simple", [1000, 10000, 100000], [1, 16, 64]),
        "cells": ("lru,mingru,minlstm", [512, 4096], [64]),
    }[args.what]
    args.cells = args.cells or defaults[0]
    args.T = args.T or defaults[1]
    args.H = args.H or defaults[2]
    rows = {"grad": bench_grad, "rnn": bench_rnn, "cells": bench_cells}[args.what](args)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    machine = _machine()
    print(f"\n{args.what} on {machine} (jax {jax.__version__}):\n")
    print(table(rows, cols))
    if args.what == "rnn":
        print(rnn_summary(rows))
    return _write(args, rows)


if __name__ == "__main__":
    main()
