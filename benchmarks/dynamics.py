"""Time and peak memory of jaxrnn.dynamics on one long sequence (simple cell, float32).

    python benchmarks/dynamics.py --T 100000 --H 256 --k 8

Each measurement runs in its own process, which reports its peak resident memory
(``ru_maxrss``); ``baseline`` is a process that builds the same inputs and runs nothing, so the
difference to it is what the function needed. ``compile`` is lowering and compiling,
``run`` one call of the compiled function (its result fetched).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WHAT = ("baseline", "carry_grad_norms", "lyapunov_k", "lyapunov_full")


def _measure(what: str, T: int, H: int, k: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxrnn import cells, dynamics

    params = cells.simple.init(jax.random.key(0), input_size=H, hidden_size=H)
    xs = jax.random.normal(jax.random.key(1), (1, T, H), jnp.float32)  # [B=1, T, D=H]
    fns = {
        "baseline": lambda xs: xs.sum(),
        "carry_grad_norms": lambda xs: dynamics.carry_grad_norms(
            lambda h, ys: jnp.sum(h**2), cells.simple.cell, params, xs
        ),
        "lyapunov_k": lambda xs: dynamics.lyapunov_spectrum(cells.simple.cell, params, xs, k=k),
        "lyapunov_full": lambda xs: dynamics.lyapunov_spectrum(cells.simple.cell, params, xs),
    }
    t0 = time.perf_counter()
    compiled = jax.jit(fns[what]).lower(xs).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(xs))
    t2 = time.perf_counter()
    return dict(
        what=what,
        compile_s=t1 - t0,
        run_s=t2 - t1,
        us_per_step=(t2 - t1) / T * 1e6,
        first=float(jnp.ravel(out)[0]),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=100_000)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--only", nargs="*", choices=WHAT, default=list(WHAT))
    ap.add_argument("--one", choices=WHAT, help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_measure(args.one, args.T, args.H, args.k)))
        return
    import jax

    print(f"T={args.T} H={args.H} k={args.k} B=1 simple cell float32, {jax.devices()[0]}")
    print(f"{'function':<18} {'compile s':>10} {'run s':>10} {'us/step':>10} {'peak RSS MiB':>13}")
    for what in args.only:
        cmd = [sys.executable, __file__, "--one", what, "--T", str(args.T), "--H", str(args.H)]
        cmd += ["--k", str(args.k)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{what:<18} failed: {r.stderr.strip().splitlines()[-1]}")
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f"{what:<18} {m['compile_s']:>10.2f} {m['run_s']:>10.2f} {m['us_per_step']:>10.1f} "
            f"{m['peak_rss_mib']:>13.0f}"
        )


if __name__ == "__main__":
    main()
