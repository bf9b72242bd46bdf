"""Do the native kernels' two threads run as fast as one thread does on half the batch?

    PYTHONPATH=. python benchmarks/threads_ab.py                       # seed LSTM, 30 rounds
    PYTHONPATH=. python benchmarks/threads_ab.py --cells simple,lstm,gru --shape 64,250,100,5000

The kernels of :mod:`jaxrnn.native` split the batch rows over XLA's intra-op threads, each
thread running all ``T`` steps on its rows (no synchronisation per step), so a call on ``B``
rows with ``n`` threads would ideally take as long as one thread takes on ``B / n`` rows. This
measures both in one process (jitted calls of the forward and of the backward with the table
gradient, as the seed step makes them): round by round, a few calls of each, interleaved, and
reports per-round medians and the ratio ``n threads on B rows / one thread on B / n rows``
(1.0: perfect scaling). A benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def calls(cell: str, B: int, T: int, H: int, V: int, threads: int) -> dict[str, Callable[[], Any]]:
    """``{"forward": f, "backward": f}``: the cell's native forward and backward (on a
    projected table, ids uniform in ``[0, V)``, the gradient of ``h_T`` only) for ``B`` rows
    with ``threads`` (0: XLA's pool), on fixed random data (the same for any ``threads``),
    compiled and run once; ``f()`` runs the call again and returns its outputs."""
    import jax
    import jax.numpy as jnp

    from jaxrnn import native

    G = {"simple": 1, "lstm": 4, "gru": 3}[cell]
    rng = np.random.default_rng(0)
    f32 = jnp.float32
    idx = jnp.asarray(rng.integers(0, V, (T, B)), jnp.int32)
    U = jnp.asarray(rng.normal(0, 0.3, (V, G * H)), f32)  # a projected table [V, G H]
    W = jnp.asarray(rng.normal(0, 0.1, (H, G * H)), f32)
    h0 = jnp.zeros((B, H), f32)
    g = jnp.full((B, H), 0.01, f32)
    if cell == "simple":
        fwd = jax.jit(lambda: native.simple_forward(U, idx, W, h0, "tanh", threads=threads))
        S = fwd()
        bwd = jax.jit(
            lambda: native.simple_backward(S, W, g, "tanh", idx, V, threads=threads, rows="first")
        )
    elif cell == "lstm":
        fwd = jax.jit(lambda: native.lstm_forward(U, idx, W, h0, h0, threads=threads))
        Sh, Sc, Gs = fwd()
        bwd = jax.jit(
            lambda: native.lstm_backward(
                Sh, Sc, Gs, W, None, g, g * 0, idx, V, threads=threads, rows="first"
            )
        )
    else:
        b = jnp.zeros((G * H,), f32)
        fwd = jax.jit(lambda: native.gru_forward(U, idx, W, b, h0, threads=threads))
        S, Sv = fwd()
        bwd = jax.jit(
            lambda: native.gru_backward(
                S, Sv, W, g, idx, V, threads=threads, rows="first", d_rows="first"
            )
        )
    out = {}
    for name, f in (("forward", fwd), ("backward", bwd)):
        jax.block_until_ready(f())
        out[name] = lambda f=f: jax.block_until_ready(f())
    return out


def measure(
    cells: list[str], shape: tuple[int, int, int, int], threads: int, rounds: int, reps: int
) -> dict[str, dict[str, list[float]]]:
    """``{f"{cell} {kernel}": {"one": [...], "all": [...]}}``: per-round median ms of one
    thread on ``B // threads`` rows and of ``threads`` threads on ``B`` rows."""
    B, T, H, V = shape
    fns = {}
    for cell in cells:
        one, all_ = calls(cell, B // threads, T, H, V, 1), calls(cell, B, T, H, V, threads)
        for k in one:
            fns[f"{cell} {k}"] = {"one": one[k], "all": all_[k]}
    res = {k: {"one": [], "all": []} for k in fns}
    for _ in range(rounds):
        for k, pair in fns.items():
            for which, f in pair.items():
                f()  # one untimed call per turn
                ts = []
                for _ in range(reps):
                    t = time.perf_counter()
                    f()
                    ts.append((time.perf_counter() - t) * 1e3)
                res[k][which].append(float(np.median(ts)))
    return res


def main() -> None:
    from jaxrnn import native, runtime

    runtime.restart_with_tunables()  # as the benchmark workers and train.py run
    runtime.inline_cpu_dispatch()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="lstm")
    ap.add_argument("--shape", default="64,250,100,5000", help="B,T,H,V")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per turn")
    args = ap.parse_args()
    if not native.available():
        raise SystemExit(
            f"threads_ab: the native kernels are unavailable: {native.unavailable_reason()}"
        )
    shape = tuple(int(v) for v in args.shape.split(","))
    res = measure(args.cells.split(","), shape, args.threads, args.rounds, args.reps)
    B = shape[0]
    print(f"B, T, H, V = {args.shape}; {args.rounds} rounds x {args.reps} calls; per-round medians")
    for k, v in res.items():
        one, all_ = np.asarray(v["one"]), np.asarray(v["all"])
        r = all_ / one
        print(
            f"{k:16s} 1 thread on {B // args.threads} rows {np.median(one):7.2f} ms (min {one.min():.2f}) | "
            f"{args.threads} threads on {B} rows {np.median(all_):7.2f} ms (min {all_.min():.2f}) | "
            f"ratio median {np.median(r):.3f}, quartiles {np.percentile(r, 25):.3f}-{np.percentile(r, 75):.3f}"
        )


if __name__ == "__main__":
    main()
