"""``fast.rnn`` against ``rnn`` with ``lengths`` / ``reverse``, and ``stack(fast=True)``
against ``stack``: one training step's gradient.

    PYTHONPATH=. python benchmarks/options.py --out benchmarks/results/options.json

Work: ``xs [B, T, D]`` (B = 64, T = 250, D = 32; float32) -> ``rnn_fn(cell, params, xs,
lengths=..., reverse=...)`` with H units -> ``mean(ys ** 2) + sum(final carry)``, and
``jax.grad`` of that with respect to the cell's parameters, jitted. ``lengths`` are drawn in
``[T / 4, T]`` (post-padded sequences). Variant ``stack``: :func:`jaxrnn.stack.stack` with two
bidirectional layers (H units per direction; PyTorch's ``nn.LSTM(num_layers=2,
bidirectional=True)`` on packed sequences) with ``lengths``, ``fast=False`` against
``fast=True``. Both paths compute the same numbers (``tests/test_fast.py``,
``tests/test_layers.py``); this measures their time.

The process runs with jaxrnn's host settings (glibc malloc tunables, via a restart, and
inline CPU dispatch), as ``train.py`` does. Every variant is compiled first; then rounds of
``--steps`` calls per variant, in a shuffled order each round, are timed and the medians
reported, with the ratio plain / fast of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import machine_info  # noqa: E402
from jaxrnn import runtime  # noqa: E402

VARIANTS = ("-", "lengths", "reverse", "lengths+reverse", "stack")
# "stack": jaxrnn.stack.stack with two bidirectional layers (PyTorch's nn.LSTM(num_layers=2,
# bidirectional=True) on packed sequences), lengths; plain: fast=False, fast: fast=True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="simple,lstm,gru")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps-t", dest="T", type=int, default=250, help="sequence length T")
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="timed calls per variant per round")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    runtime.inline_cpu_dispatch()
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrnn import cells, fast, rnn
    from jaxrnn.bidirectional import BiParams
    from jaxrnn.stack import stack

    B, T, D, H = args.batch, args.T, args.input, args.hidden
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    lengths = jnp.asarray(rng.integers(T // 4, T + 1, size=B), jnp.int32)
    paths = {"plain": rnn, "fast": functools.partial(fast.rnn, kernels=fast.ALL_KERNELS)}
    steps = {}
    for name in args.cells.split(","):
        mod = cells.get(name)
        ks = jax.random.split(jax.random.key(0), 4)
        layers = [
            BiParams(mod.init(ks[0], D, H), mod.init(ks[1], D, H)),
            BiParams(mod.init(ks[2], 2 * H, H), mod.init(ks[3], 2 * H, H)),
        ]
        for path, run in paths.items():
            for variant in VARIANTS:
                if variant == "stack":
                    params = layers

                    def loss(p, xs, n, cell=mod.cell, on_fast=path == "fast"):
                        finals, ys = stack(cell, p, xs, lengths=n, fast=on_fast)
                        return jnp.mean(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(finals))
                else:
                    params = layers[0].forward

                    def loss(p, xs, n, run=run, cell=mod.cell, reverse="reverse" in variant):
                        carry, ys = run(cell, p, xs, lengths=n, reverse=reverse)
                        return jnp.mean(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

                f = jax.jit(jax.grad(loss), compiler_options=runtime.compiler_options())
                n = lengths if variant in ("lengths", "lengths+reverse", "stack") else None
                jax.block_until_ready(f(params, xs, n))  # compile
                steps[(name, path, variant)] = (f, params, n)
    times: dict = {k: [] for k in steps}
    order = list(steps)
    for r in range(args.rounds):
        np.random.default_rng(r).shuffle(order)
        for k in order:
            f, params, n = steps[k]
            for _ in range(args.steps):
                t0 = time.perf_counter()
                jax.block_until_ready(f(params, xs, n))
                times[k].append(time.perf_counter() - t0)
    rows = []
    print(f"B={B} T={T} D={D} H={H}; medians of {args.rounds * args.steps} steps, ms")
    print(f"{'cell':7s} {'variant':16s} {'plain':>8s} {'fast':>8s} {'plain/fast':>10s}")
    for name in args.cells.split(","):
        for variant in VARIANTS:
            t_plain, t_fast = times[(name, "plain", variant)], times[(name, "fast", variant)]
            plain, quick = float(np.median(t_plain)) * 1e3, float(np.median(t_fast)) * 1e3
            rows.append(
                dict(
                    cell=name, variant=variant, plain_ms=plain, fast_ms=quick,
                    plain_times=t_plain, fast_times=t_fast,
                )
            )  # fmt: skip
            print(f"{name:7s} {variant:16s} {plain:8.2f} {quick:8.2f} {plain / quick:9.2f}x")
    command = "PYTHONPATH=. python benchmarks/options.py" + "".join(
        f" {a}" for a in (argv or sys.argv[1:])
    )
    result = dict(
        command=command, B=B, T=T, D=D, H=H, rounds=args.rounds, steps=args.steps, rows=rows,
        machine=machine_info(), tunables=runtime.tunables_active(),
    )  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    runtime.restart_with_tunables()
    main()
