"""Correctness on an accelerator: jaxrnn's backends there against float64 on the CPU.

    PYTHONPATH=. python benchmarks/gpu_check.py [CELL ...]   # on a GPU machine (benchmarks/gpu.sh)
    PYTHONPATH=. python benchmarks/gpu_check.py --interpret simple   # anywhere: Pallas interpreted

The test suite runs on the CPU, where the Pallas kernels run only through Pallas's interpreter;
on a GPU they are compiled by Triton. This script computes, on the default device, the seed
classifier's loss and gradients (``models.classifier_loss`` with lengths) and ``rnn`` with
lengths and ``reverse``, for every cell (or those named), on five backends: ``scan`` (the
reference), ``auto`` (what runs by default), ``pallas`` (every cell's kernels, holding the
weights on chip where they fit), ``pallas-reread`` (the same reading them at each step) and
``xla`` (the hoisted XLA loops), in float32 at ``"highest"`` matmul precision and (``scan``,
``auto``) at the default, and compares them with ``scan`` in float64 on the CPU:
``max |a - b| / max |b|`` over every leaf. H = 100 and B = 20 (padded to 128 and two batch
tiles in the kernels), T = 60. Fresh random inputs (seed per cell). It prints one line per
check and exits 1 if any check at ``"highest"`` precision exceeds 1e-4 (float32 rounding over
T = 60 steps) or any result is not finite; at the default precision (TF32 matmuls on recent
NVIDIA GPUs) the error is reported, not judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # the float64 reference on the CPU

from jaxrnn import backends, cells, models, rnn  # noqa: E402

B, T, E, H, V = 20, 60, 16, 100, 50  # H 100 -> 128 and B 20 -> 2 tiles in the GPU kernels
TOL_HIGHEST = 1e-4
ALL_CELLS = frozenset({"simple", "lstm", "gru"})


def backends_checked(interpret: bool = False) -> dict[str, backends.Backend]:
    """``{name: Backend}`` of the backends compared with the float64 reference."""
    config = backends.gpu.Config(cells=ALL_CELLS, interpret=interpret)
    return {
        "scan": backends.Backend("scan"),
        "auto": backends.Backend("auto", gpu=config),
        "pallas": backends.Backend("pallas", gpu=config),
        "pallas-reread": backends.Backend("pallas", gpu=config._replace(hold=False)),
        "xla": backends.Backend("xla"),
    }


def rel_err(a, b) -> float:
    errs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if not np.all(np.isfinite(x)):
            return float("inf")
        errs.append(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))
    return max(errs)


def seed_grads(cfg):
    """Jitted ``(loss, grads)`` of the seed classifier's loss with lengths."""
    loss = lambda p, x, y, n: models.classifier_loss(cfg, p, x, y, n)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))


def rnn_out(cell, backend):
    """Jitted ``rnn`` with lengths and ``reverse``: final carry, outputs, and the gradient of
    ``sum(ys ** 2)`` (forward direction) with respect to the parameters."""

    def f(p, x, n):
        carry, ys = rnn(cell, p, x, lengths=n, reverse=True, backend=backend)
        grads = jax.grad(lambda p: jnp.sum(rnn(cell, p, x, lengths=n, backend=backend)[1] ** 2))(p)
        return carry, ys, grads

    return jax.jit(f)


def to(tree, dtype, device):
    return jax.device_put(jax.tree.map(lambda a: a.astype(dtype), tree), device)


def check(cell: str, seed: int, paths: dict[str, backends.Backend]) -> list[tuple]:
    """Prints one line per check of ``cell``; returns the failed ones."""
    dev, cpu = jax.devices()[0], jax.devices("cpu")[0]
    rng = np.random.default_rng(seed)
    base = models.ClassifierConfig(vocab_size=V, embed_dim=E, hidden_size=H, cell=cell)
    params = models.init_classifier(jax.random.key(seed), base)
    tokens = jnp.asarray(rng.integers(1, V, (B, T)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 2, (B,)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, T + 1, (B,)), jnp.int32)
    mod = cells.get(cell)
    p_rnn = mod.init(jax.random.key(10 + seed), E, H)
    xs = jnp.asarray(rng.standard_normal((B, T, E)), jnp.float32)
    scan = backends.Backend("scan")
    ref = {
        "seed loss+grads": seed_grads(dataclasses.replace(base, backend=scan))(
            to(params, jnp.float64, cpu), *jax.device_put((tokens, labels, lengths), cpu)
        ),
        "rnn lengths+reverse": rnn_out(mod.cell, scan)(
            to(p_rnn, jnp.float64, cpu), *jax.device_put((xs.astype(jnp.float64), lengths), cpu)
        ),
    }
    bad = []
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(None if precision == "default" else "highest"):
            for path, backend in paths.items():
                if precision == "default" and path not in ("scan", "auto"):
                    continue  # the same TF32 products as "auto"
                cfg = dataclasses.replace(base, backend=backend)
                for what in ref:
                    try:
                        if what == "seed loss+grads":
                            value = seed_grads(cfg)(
                                to(params, jnp.float32, dev),
                                *jax.device_put((tokens, labels, lengths), dev),
                            )
                        else:
                            value = rnn_out(mod.cell, backend)(
                                to(p_rnn, jnp.float32, dev), *jax.device_put((xs, lengths), dev)
                            )
                        err = rel_err(value, ref[what])
                    except Exception as e:  # a kernel that does not compile: say so, go on
                        print(f"{cell:6s} {path:13s} {what:20s} ERROR {type(e).__name__}: {e}")
                        err = float("nan")
                    judged = precision == "highest"
                    ok = np.isfinite(err) and (err <= TOL_HIGHEST or not judged)
                    print(f"{cell:6s} {path:13s} {what:20s} precision={precision:8s} "
                          f"rel err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)  # fmt: skip
                    if not ok:
                        bad.append((cell, path, what, precision, err))
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="*", default=["simple", "lstm", "gru"])
    ap.add_argument(
        "--interpret", action="store_true",
        help="run the Pallas kernels through Pallas's interpreter (a check of this script)",
    )  # fmt: skip
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind}; jax {jax.__version__}")
    paths = backends_checked(args.interpret)
    bad = []
    for i, cell in enumerate(("simple", "lstm", "gru")):
        if cell in args.cells:
            bad += check(cell, i, paths)
    print("all checks passed" if not bad else f"{len(bad)} checks FAILED: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
