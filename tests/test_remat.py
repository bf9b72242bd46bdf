"""rnn(..., remat=k | "sqrt"): the same values and gradients as without remat (float64),
and less memory for BPTT (XLA's compiled buffer sizes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, fast, rnn
from jaxrnn.layer import remat_segment


def _loss(cell, p, xs, h0, run=rnn, **kw):
    carry, ys = run(cell, p, xs, h0, **kw)
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)  # weights every output
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))


def _case(cell_name, key):
    """A cell (float64), ``xs [3, 13, 4]`` and a random initial carry."""
    mod = cells.get(cell_name)
    B, T, D, H = 3, 13, 4, 5
    p = mod.init(key, D, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    h0 = jax.tree.map(
        lambda a: 0.3 * jax.random.normal(jax.random.key(2), a.shape, a.dtype),
        mod.initial_carry(p, (B,)),
    )
    return mod, p, xs, h0


@pytest.mark.parametrize(
    "cell_name,remat,reverse,with_lengths",
    [
        ("simple", 1, False, False),
        ("simple", 4, False, False),  # 13 = 3 * 4 + 1: a remainder segment
        ("simple", 4, True, False),
        ("simple", "sqrt", False, True),
        ("simple", 13, True, True),  # one segment
        ("lstm", 5, False, False),
        ("gru", "sqrt", True, False),
    ],
)
def test_remat_values_and_grads_equal_full(cell_name, remat, reverse, with_lengths, key):
    mod, p, xs, h0 = _case(cell_name, key)
    kw = dict(reverse=reverse, lengths=jnp.array([13, 6, 0]) if with_lengths else None)
    full = rnn(mod.cell, p, xs, h0, **kw)
    rem = rnn(mod.cell, p, xs, h0, remat=remat, **kw)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(rem), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-14)
    g_full = jax.grad(lambda *a: _loss(mod.cell, *a, **kw), argnums=(0, 1, 2))(p, xs, h0)
    g_rem = jax.grad(lambda *a: _loss(mod.cell, *a, remat=remat, **kw), argnums=(0, 1, 2))(
        p, xs, h0
    )
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_rem), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-13)


def test_remat_reduces_bptt_memory(key):
    """XLA's buffer assignment: temporaries of the gradient shrink with sqrt(T) segments."""
    B, T, D, H = 4, 2048, 8, 64
    p = cells.simple.init(key, D, H)
    xs = jnp.ones((B, T, D), jnp.float32)

    def temp_bytes(remat):
        f = jax.jit(jax.grad(lambda p: jnp.sum(rnn(cells.simple.cell, p, xs, remat=remat)[0])))
        return f.lower(p).compile().memory_analysis().temp_size_in_bytes

    full, sqrt = temp_bytes(None), temp_bytes("sqrt")
    per_step = B * H * 4  # one float32 carry
    assert full >= T * per_step  # at least every h_t is kept
    assert sqrt < full / 4, (full, sqrt)


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize(
    "remat,reverse,with_lengths",
    [(4, False, False), ("sqrt", True, False), (4, False, True), (13, True, True)],
)
def test_fast_remat_values_and_grads_equal_plain(cell_name, remat, reverse, with_lengths, key):
    """fast.rnn(..., remat=...) (segments projected and run on the fast path) against the
    plain path without remat, float64 (the XLA loops; the kernels in float32:
    tests/test_native.py)."""
    mod, p, xs, h0 = _case(cell_name, key)
    kw = dict(reverse=reverse, lengths=jnp.array([13, 6, 0]) if with_lengths else None)
    run = functools.partial(fast.rnn, kernels=fast.ALL_KERNELS, remat=remat)
    for a, b in zip(
        jax.tree.leaves(rnn(mod.cell, p, xs, h0, **kw)),
        jax.tree.leaves(run(mod.cell, p, xs, h0, **kw)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-13)
    g_plain = jax.grad(lambda *a: _loss(mod.cell, *a, **kw), argnums=(0, 1, 2))(p, xs, h0)
    g_fast = jax.grad(lambda *a: _loss(mod.cell, *a, run=run, **kw), argnums=(0, 1, 2))(p, xs, h0)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_fast), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell_name", ["simple", "lstm"])
def test_fast_remat_reduces_bptt_memory(cell_name, key):
    """The fast path (float32: the native kernels where the CPU has them) in sqrt(T)
    segments: neither the projections [T, B, G H] nor the loops' buffers kept for all T."""
    mod = cells.get(cell_name)
    B, T, D, H = 4, 2048, 8, 64
    p = mod.init(key, D, H)
    xs = jnp.ones((B, T, D), jnp.float32)

    def temp_bytes(remat):
        loss = lambda p: jnp.sum(jax.tree.leaves(fast.rnn(mod.cell, p, xs, remat=remat)[0])[0])  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(p).compile().memory_analysis().temp_size_in_bytes

    full, sqrt = temp_bytes(None), temp_bytes("sqrt")
    assert full >= T * B * H * 4  # at least every h_t is kept
    assert sqrt < full / 4, (full, sqrt)


def test_fast_rnn_bad_remat_is_a_clear_error(key):
    p = cells.simple.init(key, 2, 3)
    with pytest.raises(ValueError, match="remat must be None, 'sqrt' or a positive int"):
        fast.rnn(cells.simple.cell, p, jnp.ones((1, 4, 2), jnp.float32), remat="log")


@pytest.mark.parametrize("bad", [0, -2, 1.5, "log", True])
def test_bad_remat_is_a_clear_error(bad, key):
    p = cells.simple.init(key, 2, 3)
    with pytest.raises(ValueError, match="remat must be None, 'sqrt' or a positive int"):
        rnn(cells.simple.cell, p, jnp.ones((1, 4, 2), jnp.float32), remat=bad)


def test_remat_segment():
    assert remat_segment("sqrt", 100) == 10
    assert remat_segment(500, 100) == 100


def test_memory_benchmark_measures_both_paths():
    """benchmarks/memory.py's step (compiled and run) on the plain and the fast path: the same
    loss, finite gradients, XLA's buffer sizes reported."""
    from benchmarks import memory

    got = {
        path: memory.measure(T=50, remat="sqrt", cell="lstm", B=2, H=8, run=True, path=path)
        for path in ("plain", "fast")
    }
    assert got["fast"]["loss"] == pytest.approx(got["plain"]["loss"], rel=1e-5)
    for r in got.values():
        assert r["grad_finite"] and r["xla_peak_bytes"] > 0 and r["rss_peak_bytes"] > 0
