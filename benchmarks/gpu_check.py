"""Correctness on an accelerator: jaxrnn's paths there against float64 on the CPU.

    PYTHONPATH=. python benchmarks/gpu_check.py [CELL ...]   # on a GPU machine (benchmarks/gpu.sh)

The test suite runs on the CPU (where :mod:`jaxrnn.fast` uses its native kernels and the GPU
kernels only through Pallas's interpreter); on a GPU the fast path runs the Pallas kernels of
:mod:`jaxrnn.gpu` (compiled by Triton) or its XLA loops, and the plain path ``lax.scan`` with
autodiff. This script computes, on the default device, the seed classifier's loss and
gradients (``models.classifier_loss`` / ``fast.classifier_loss``, with lengths) and
``fast.rnn`` with lengths and ``reverse``, for every cell (or those named: ``gpu_check.py
gru``), on four paths (plain; fast with every cell's GPU kernels, holding the weights where
they fit and, ``fast-reread``, reading them at each step; fast with its XLA loops,
``JAXRNN_GPU_KERNELS=0``), in float32 at ``"highest"`` matmul precision
and (plain and fast) at the default, and compares them with the plain path in
float64 on the CPU: ``max |a - b| / max |b|`` over every leaf. H = 100 and B = 20 (padded
to 128 and two batch tiles in the kernels), T = 60.
Fresh random inputs (seed per cell). It prints one line per check and exits 1 if any
check at ``"highest"`` precision exceeds 1e-4 (float32 rounding over T = 60 steps) or any
result is not finite; at the default precision (TF32 matmuls on recent NVIDIA GPUs) the
error is reported, not judged.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # the float64 reference on the CPU

from jaxrnn import cells, fast, gpu, models, rnn  # noqa: E402

B, T, E, H, V = 20, 60, 16, 100, 50  # H 100 -> 128 and B 20 -> 2 tiles in the GPU kernels
TOL_HIGHEST = 1e-4


def rel_err(a, b) -> float:
    errs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if not np.all(np.isfinite(x)):
            return float("inf")
        errs.append(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))
    return max(errs)


def seed_grads(loss, cfg):
    """Jitted ``(loss, grads)`` of the seed classifier's ``loss(cfg, params, tokens, labels, lengths)``."""
    return jax.jit(jax.value_and_grad(lambda p, x, y, n: loss(cfg, p, x, y, n)))


def rnn_out(fn, cell):
    """Jitted ``fn(cell, ...)`` with lengths and ``reverse``: final carry, outputs, and the
    gradient of ``sum(ys ** 2)`` (forward direction) with respect to the parameters."""

    def f(p, x, n):
        carry, ys = fn(cell, p, x, lengths=n, reverse=True)
        grads = jax.grad(lambda p: jnp.sum(fn(cell, p, x, lengths=n)[1] ** 2))(p)
        return carry, ys, grads

    return jax.jit(f)


def to(tree, dtype, device):
    return jax.device_put(jax.tree.map(lambda a: a.astype(dtype), tree), device)


def main() -> int:
    dev, cpu = jax.devices()[0], jax.devices("cpu")[0]
    gpu.CELLS = gpu.ALL_CELLS  # every cell's kernels (the LSTM's too where few blocks fit)
    print(f"device: {dev.platform} {dev.device_kind}; jax {jax.__version__}")
    bad = []
    for i, cell in enumerate(("simple", "lstm", "gru")):
        if cell not in (sys.argv[1:] or [cell]):  # cells named on the command line, or all
            continue
        cfg = models.ClassifierConfig(vocab_size=V, embed_dim=E, hidden_size=H, cell=cell)
        rng = np.random.default_rng(i)
        params = models.init_classifier(jax.random.key(i), cfg)
        tokens = jnp.asarray(rng.integers(1, V, (B, T)), jnp.int32)
        labels = jnp.asarray(rng.integers(0, 2, (B,)), jnp.float32)
        lengths = jnp.asarray(rng.integers(0, T + 1, (B,)), jnp.int32)
        mod = cells.get(cell)
        p_rnn = mod.init(jax.random.key(10 + i), E, H)
        xs = jnp.asarray(rng.standard_normal((B, T, E)), jnp.float32)

        ref = {
            "seed loss+grads": seed_grads(models.classifier_loss, cfg)(
                to(params, jnp.float64, cpu), *jax.device_put((tokens, labels, lengths), cpu)
            ),
            "rnn lengths+reverse": rnn_out(rnn, mod.cell)(
                to(p_rnn, jnp.float64, cpu), *jax.device_put((xs.astype(jnp.float64), lengths), cpu)
            ),
        }
        paths = (  # (name, loss, rnn, $JAXRNN_GPU_KERNELS, gpu.HOIST_WEIGHTS)
            ("plain", models.classifier_loss, rnn, "1", None),
            ("fast", fast.classifier_loss, fast.rnn, "1", None),  # every cell's GPU kernels
            ("fast-reread", fast.classifier_loss, fast.rnn, "1", False),  # weights every step
            ("fast-xla", fast.classifier_loss, fast.rnn, "0", None),  # its XLA loops
        )
        for precision in ("default", "highest"):
            with jax.default_matmul_precision(None if precision == "default" else "highest"):
                for path, loss, fn, kernels, hoist in paths:
                    if precision == "default" and path in ("fast-reread", "fast-xla"):
                        continue  # the same TF32 products as "fast"
                    os.environ[gpu.SWITCH] = kernels  # read when the step is traced
                    gpu.HOIST_WEIGHTS = hoist
                    for what in ref:
                        try:
                            if what == "seed loss+grads":
                                value = seed_grads(loss, cfg)(
                                    to(params, jnp.float32, dev),
                                    *jax.device_put((tokens, labels, lengths), dev),
                                )
                            else:
                                value = rnn_out(fn, mod.cell)(
                                    to(p_rnn, jnp.float32, dev), *jax.device_put((xs, lengths), dev)
                                )
                            err = rel_err(value, ref[what])
                        except Exception as e:  # a kernel that does not compile: say so, go on
                            print(f"{cell:6s} {path:8s} {what:20s} ERROR {type(e).__name__}: {e}")
                            err = float("nan")
                        judged = precision == "highest"
                        ok = np.isfinite(err) and (err <= TOL_HIGHEST or not judged)
                        print(f"{cell:6s} {path:8s} {what:20s} precision={precision:8s} "
                              f"rel err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)  # fmt: skip
                        if not ok:
                            bad.append((cell, path, what, precision, err))
        os.environ.pop(gpu.SWITCH)
        gpu.HOIST_WEIGHTS = None
    print("all checks passed" if not bad else f"{len(bad)} checks FAILED: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
