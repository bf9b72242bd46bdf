"""A/B of how the fast path projects the input rows of a batch with fewer tokens than the
vocabulary (B = 1 inference): ``fast.project_rows`` (one native call, gather and product,
``jaxrnn.native.rows_projection``) against XLA's gather, product and bias add (what the fast
path ran before; still its gradient and its path off AVX-512 CPUs).

    PYTHONPATH=. python benchmarks/rows_ab.py --cells simple,lstm,gru --rounds 3000

Work: the seed classifier (Embedding(5000, 32) -> cell(100) -> Dense(1)) on ``--batch``
reviews of T = 250 words, ``fast.classifier_logits`` jitted with jaxrnn's compile options. Both
variants in one process, call by call in turn (the order swapped every round), so both see the
same state of this shared machine. Report: medians, and the median over rounds of new / XLA.
Restarts itself with jaxrnn's malloc settings and uses inline CPU dispatch, as ``train.py``
and the benchmark workers do. A benchmark: no test asserts a time.
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


def measure(cells: list[str], rounds: int, B: int = 1, T: int = 250) -> dict[str, dict]:
    """Per cell: ``{"native": [s], "xla": [s], "diff": largest |logit difference|}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrnn import fast, models

    def xla_rows(E, ids, W_x, b):
        return fast.project(jnp.take(E, ids, axis=0), W_x, b)

    options = runtime.compiler_options("cpu")
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, 5000)
    out = {}
    shipped = fast.project_rows
    try:
        for cell in cells:
            cfg = models.ClassifierConfig(vocab_size=5000, embed_dim=32, hidden_size=100, cell=cell)
            if B * T >= cfg.vocab_size:
                raise ValueError(f"B T = {B * T} must be below the vocabulary (5000)")
            params = models.init_classifier(jax.random.key(0), cfg)
            fns, logits = {}, {}
            for name, rows in (("native", shipped), ("xla", xla_rows)):
                fast.project_rows = rows  # read when the function is traced (just below)
                f = jax.jit(
                    lambda p, x, cfg=cfg: fast.classifier_logits(cfg, p, x),
                    compiler_options=options,
                )
                logits[name] = np.asarray(f(params, tokens))
                fns[name] = f
            fast.project_rows = shipped
            times = {name: [] for name in fns}
            for r in range(rounds):
                for name in ("native", "xla") if r % 2 else ("xla", "native"):
                    t0 = time.perf_counter()
                    fns[name](params, tokens).block_until_ready()
                    times[name].append(time.perf_counter() - t0)
            diff = float(np.abs(logits["native"] - logits["xla"]).max())
            out[cell] = {**times, "diff": diff}
    finally:
        fast.project_rows = shipped
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="simple,lstm,gru")
    ap.add_argument("--rounds", type=int, default=2000, help="calls of each variant, in turn")
    ap.add_argument("--batch", type=int, default=1, help="B (B x 250 below 5000)")
    args = ap.parse_args()
    res = measure(args.cells.split(","), args.rounds, args.batch)
    print(f"B = {args.batch}, T = 250, {args.rounds} rounds; ratio = median over rounds of "
          f"native / xla")  # fmt: skip
    for cell, r in res.items():
        ratio = statistics.median(a / b for a, b in zip(r["native"], r["xla"], strict=True))
        print(
            f"{cell:7s} native {statistics.median(r['native']) * 1e6:8.1f} us  xla "
            f"{statistics.median(r['xla']) * 1e6:8.1f} us  ratio {ratio:5.3f}  "
            f"(logits differ by {r['diff']:.1e})"
        )


if __name__ == "__main__":
    runtime.restart_with_tunables()
    runtime.inline_cpu_dispatch()
    main()
