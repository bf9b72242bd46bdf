"""Peak memory of one training step against T, with and without ``rnn(..., remat=...)``.

    PYTHONPATH=. python benchmarks/memory.py --out /tmp/memory.json
    PYTHONPATH=. python benchmarks/memory.py --cell lstm --backend scan --out /tmp/memory_scan.json
    PYTHONPATH=. python benchmarks/memory.py --cell lstm --layers 2 --dropout 0.5 \
        --Ts 1000,10000,100000 --out /tmp/memory_lstm2.json
    PYTHONPATH=. python benchmarks/report.py /tmp/memory.json       # table and plot

Model: tokens ``[B, T]`` -> Embedding(5000, 32) -> RNN(H) (``jaxrnn.rnn`` with ``--backend``,
default ``auto``; with ``--layers L``, ``jaxrnn.stack`` of L such layers, its remat in time
segments through all of them; ``--dropout p``: PyTorch's dropout between the layers, in
training) -> Dense(1), BCE, Adam (optax), one jitted step; B = 16, H = 256 (the issue's
long-sequence goal: T = 100,000 within 2 GiB).

Two measurements, each in its own subprocess:

* ``xla``: XLA's buffer assignment of the compiled step
  (``jit(step).lower(...).compile().memory_analysis()``): arguments + outputs +
  temporaries, i.e. the peak of live device buffers. Compile-only, so it is
  cheap for any T, even where running would not fit;
* ``rss``: the process's peak resident set size (``ru_maxrss``) after actually
  running the step, minus the peak after building everything but before the
  first step (the JAX runtime and compiler themselves take a few hundred MiB).
  Run for the cases marked ``run``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(
    T: int,
    remat: str | None,
    cell: str,
    B: int,
    H: int,
    run: bool,
    backend: str = "auto",
    layers: int = 1,
    dropout: float = 0.0,
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxrnn import cells, rnn, stack

    V, E = 5000, 32
    mod = cells.get(cell)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {
        "embedding": jax.random.uniform(k1, (V, E), jnp.float32, -0.05, 0.05),
        "rnn": mod.init(k2, E, H)
        if layers == 1
        else [mod.init(jax.random.fold_in(k2, i), E if i == 0 else H, H) for i in range(layers)],
        "W_o": jax.nn.initializers.glorot_uniform()(k3, (H, 1), jnp.float32),
        "b_o": jnp.zeros((1,), jnp.float32),
    }
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, V, size=(B, T), dtype=np.int32))
    labels = jnp.asarray(rng.integers(0, 2, size=(B,)).astype(np.float32))
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    remat_arg = None if remat in (None, "none") else (remat if remat == "sqrt" else int(remat))

    def loss_fn(params, tokens, labels):
        xs = jnp.take(params["embedding"], tokens, axis=0)  # [B, T, E]
        run = dict(remat=remat_arg, backend=backend)
        if layers == 1:
            carry, _ = rnn(mod.cell, params["rnn"], xs, **run)
        else:  # the last layer's final carry
            drop = dict(dropout=dropout, key=jax.random.key(1), deterministic=not dropout)
            carry = stack(mod.cell, params["rnn"], xs, **run, **drop)[0][-1]
        h = carry[0] if isinstance(carry, tuple) else carry  # [B, H]: an LSTM's (h, c) keeps h
        logits = (h @ params["W_o"] + params["b_o"])[:, 0]
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    def step(params, opt_state, tokens, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = jitted.lower(params, opt_state, tokens, labels).compile()
    ma = compiled.memory_analysis()
    out = {
        "T": T, "remat": remat or "none", "cell": cell, "B": B, "H": H, "backend": backend,
        "layers": layers, "dropout": dropout,
        "compile_s": time.perf_counter() - t0,
        "xla_temp_bytes": ma.temp_size_in_bytes,
        "xla_argument_bytes": ma.argument_size_in_bytes,
        "xla_output_bytes": ma.output_size_in_bytes,
        "xla_alias_bytes": ma.alias_size_in_bytes,
    }  # fmt: skip
    # donated arguments alias outputs: count them once
    out["xla_peak_bytes"] = (
        ma.temp_size_in_bytes
        + ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        - ma.alias_size_in_bytes
    )
    if run:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        _, _, loss, grads = compiled(params, opt_state, tokens, labels)
        loss.block_until_ready()
        out["step_s"] = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out.update(rss_base_bytes=base, rss_peak_bytes=peak, rss_step_bytes=peak - base)
        out["loss"] = float(loss)
        out["grad_finite"] = bool(all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="JSON file of the results (default: none)")
    ap.add_argument("--Ts", default="1000,3000,10000,30000,100000")
    ap.add_argument(
        "--run-max-T",
        type=int,
        default=100_000,
        help="actually run (RSS) remat cases up to this T; full-memory ones up to 10k",
    )
    ap.add_argument("--cell", default="simple")
    ap.add_argument(
        "--backend", default="auto", choices=["auto", "scan", "xla", "native", "pallas"],
        help="what runs the recurrence (jaxrnn.rnn's backend=)",
    )  # fmt: skip
    ap.add_argument("--remats", default="none,sqrt", help="the remat settings to measure")
    ap.add_argument("--layers", type=int, default=1,
                    help="> 1: a unidirectional jaxrnn.stack of that many layers")  # fmt: skip
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="with --layers > 1: the dropout rate between layers")  # fmt: skip
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one case as JSON
    args = ap.parse_args()  # fmt: skip
    if args.one:
        c = json.loads(args.one)
        print("@@" + json.dumps(measure(**c)), flush=True)
        return
    results = []
    for T in [int(t) for t in args.Ts.split(",")]:
        for remat in args.remats.split(","):
            run = T <= (args.run_max_T if remat != "none" else 10_000)
            c = dict(T=T, remat=remat, cell=args.cell, B=args.B, H=args.H, run=run, backend=args.backend,
                     layers=args.layers, dropout=args.dropout)  # fmt: skip
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            p = subprocess.run([sys.executable, __file__, "--one", json.dumps(c)],
                               capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
            line = [x for x in p.stdout.splitlines() if x.startswith("@@")]
            if not line:
                print(f"T={T} remat={remat}: failed\n{p.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(line[0][2:])
            results.append(r)
            msg = f"T={T:6d} remat={remat:4s} xla peak {r['xla_peak_bytes'] / 2**20:9.1f} MiB"
            if "rss_step_bytes" in r:
                msg += f"  rss +{r['rss_step_bytes'] / 2**20:8.1f} MiB (peak {r['rss_peak_bytes'] / 2**20:.0f}), "
                msg += f"step {r['step_s']:.2f} s"
            print(msg, flush=True)
            if args.out:  # rewritten after every case: a cut-off run keeps what it measured
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                record = {"command": " ".join(["python"] + sys.argv), "results": results}
                Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
