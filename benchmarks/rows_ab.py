"""A/B of how the fast path projects the input rows of a batch with fewer tokens than the
vocabulary (B = 1): ``fast.project_rows`` (native calls: gather and product,
``jaxrnn.native.rows_projection``, and in training its gradient,
``jaxrnn.native.rows_projection_backward``) against XLA's gather, product and bias add, and
autodiff's scatter, products and sum for the gradient (what the fast path ran before; still
its path off AVX-512 CPUs).

    PYTHONPATH=. python benchmarks/rows_ab.py --cells simple,lstm,gru --rounds 3000
    PYTHONPATH=. python benchmarks/rows_ab.py --mode train --rounds 1000

Work: the seed classifier (Embedding(5000, 32) -> cell(100) -> Dense(1)) on ``--batch``
reviews of T = 250 words: ``--mode infer``, ``fast.classifier_logits``; ``--mode train``, the
seed training step (``fast.classifier_loss``, its gradient and an Adam update, parameters and
optimiser state donated, as ``benchmarks/run.py`` runs it); jitted with jaxrnn's compile
options. Both variants in one process, call by call in turn (the order swapped every round), so
both see the same state of this shared machine. Report: medians, the median over rounds of
new / XLA, and how far the variants' first outputs differ (logits, or the parameters after one
step: Adam's first step divides each gradient element by its magnitude, so float32 rounding
of a near-zero element can move its update by up to the learning rate, 1e-3). Restarts itself with jaxrnn's malloc settings and uses inline CPU dispatch, as
``train.py`` and the benchmark workers do. A benchmark: no test asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jaxrnn import runtime  # noqa: E402


def measure(
    cells: list[str], rounds: int, B: int = 1, T: int = 250, mode: str = "infer"
) -> dict[str, dict]:
    """Per cell: ``{"native": [s], "xla": [s], "diff": largest |difference| of the first
    outputs}`` (``mode``: ``"infer"`` or ``"train"``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxrnn import fast, models

    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train'; got {mode!r}")

    def xla_rows(E, ids, W_x, b):
        return fast.project(jnp.take(E, ids, axis=0), W_x, b)

    options = runtime.compiler_options("cpu")
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, 5000)
    labels = jax.random.bernoulli(jax.random.key(2), 0.5, (B,)).astype(jnp.float32)
    opt = optax.adam(1e-3)
    out = {}
    shipped = fast.project_rows
    try:
        for cell in cells:
            cfg = models.ClassifierConfig(vocab_size=5000, embed_dim=32, hidden_size=100, cell=cell)
            if B * T >= cfg.vocab_size:
                raise ValueError(f"B T = {B * T} must be below the vocabulary (5000)")
            params = models.init_classifier(jax.random.key(0), cfg)
            calls, first = {}, {}
            for name, rows in (("native", shipped), ("xla", xla_rows)):
                fast.project_rows = rows  # read when the function is traced (just below)
                if mode == "infer":
                    f = jax.jit(
                        lambda p, x, cfg=cfg: fast.classifier_logits(cfg, p, x),
                        compiler_options=options,
                    )
                    first[name] = np.asarray(f(params, tokens))
                    calls[name] = lambda f=f, p=params: f(p, tokens).block_until_ready()
                    continue

                def step(p, s, x, y, cfg=cfg):
                    grads = jax.grad(lambda p: fast.classifier_loss(cfg, p, x, y))(p)
                    updates, s = opt.update(grads, s, p)
                    return optax.apply_updates(p, updates), s

                f = jax.jit(step, donate_argnums=(0, 1), compiler_options=options)
                own = jax.tree.map(jnp.copy, params)  # donated: a copy per variant
                state = list(f(own, opt.init(own), tokens, labels))
                first[name] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state[0])])

                def call(f=f, state=state):
                    state[:] = f(*state, tokens, labels)
                    jax.block_until_ready(state)

                calls[name] = call
            fast.project_rows = shipped
            times = {name: [] for name in calls}
            for r in range(rounds):
                for name in ("native", "xla") if r % 2 else ("xla", "native"):
                    t0 = time.perf_counter()
                    calls[name]()
                    times[name].append(time.perf_counter() - t0)
            diff = float(np.abs(first["native"] - first["xla"]).max())
            out[cell] = {**times, "diff": diff}
    finally:
        fast.project_rows = shipped
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="simple,lstm,gru")
    ap.add_argument("--rounds", type=int, default=2000, help="calls of each variant, in turn")
    ap.add_argument("--batch", type=int, default=1, help="B (B x 250 below 5000)")
    ap.add_argument("--mode", default="infer", choices=("infer", "train"))
    args = ap.parse_args()
    res = measure(args.cells.split(","), args.rounds, args.batch, mode=args.mode)
    print(f"{args.mode}, B = {args.batch}, T = 250, {args.rounds} rounds; ratio = median over "
          f"rounds of native / xla")  # fmt: skip
    what = "logits" if args.mode == "infer" else "parameters after a step"
    for cell, r in res.items():
        ratio = statistics.median(a / b for a, b in zip(r["native"], r["xla"], strict=True))
        print(
            f"{cell:7s} native {statistics.median(r['native']) * 1e6:8.1f} us  xla "
            f"{statistics.median(r['xla']) * 1e6:8.1f} us  ratio {ratio:5.3f}  "
            f"({what} differ by {r['diff']:.1e})"
        )


if __name__ == "__main__":
    runtime.restart_with_tunables()
    runtime.inline_cpu_dispatch()
    main()
