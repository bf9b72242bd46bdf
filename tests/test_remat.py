"""rnn / fast.rnn / recurrent / bidirectional / stack (..., remat=k | "sqrt"): the same
values and gradients as without remat (float64), and less memory for BPTT (XLA's compiled
buffer sizes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, fast, rnn
from jaxrnn.bidirectional import BiParams, bidirectional
from jaxrnn.layer import remat_segment
from jaxrnn.recurrent import recurrent
from jaxrnn.stack import stack


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


# ---------------------------------------------------------------- recurrent, bidirectional, stack


def _close(a_tree, b_tree, rtol, atol):
    for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _weighted(tree):
    """A scalar that weights every element of every leaf differently."""
    return sum(
        jnp.sum(a * jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape))
        for a in jax.tree.leaves(tree)
    )


@pytest.mark.parametrize(
    "cell_name,remat,option,on_fast",
    [
        ("simple", 4, "mask", False),  # an arbitrary mask: the masked loop, in segments
        ("lstm", "sqrt", "lengths", True),
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in [
                ("simple", 4, "mask", True),  # fast=True with a mask: the masked loop too
                ("lstm", "sqrt", "lengths", False),
                ("gru", 5, "lengths_backwards", False),
                ("gru", 5, "lengths_backwards", True),
                ("lstm", 3, "backwards", False),
                ("lstm", 3, "backwards", True),
            ]
        ),
    ],
)
def test_recurrent_remat_equals_full(cell_name, remat, option, on_fast, key):
    """recurrent(..., remat=) (Keras semantics: masks, go_backwards, the masked steps' outputs)
    against the same call without remat, float64, values and gradients."""
    mod, p, xs, h0 = _case(cell_name, key)
    B, T = xs.shape[:2]
    kw = dict(go_backwards="backwards" in option, fast=on_fast, return_state=True)
    if option == "mask":
        kw["mask"] = jax.random.bernoulli(jax.random.key(3), 0.7, (B, T))
    elif "lengths" in option:
        kw["lengths"] = jnp.array([13, 6, 0])
    if on_fast:
        kw["unroll"] = 2

    def loss(p, xs, h0, remat):
        return _weighted(recurrent(mod.cell, p, xs, h0, remat=remat, **kw))

    _close(
        recurrent(mod.cell, p, xs, h0, **kw),
        recurrent(mod.cell, p, xs, h0, remat=remat, **kw),
        1e-12,
        1e-13,
    )
    g = [jax.grad(loss, argnums=(0, 1, 2))(p, xs, h0, r) for r in (None, remat)]
    _close(g[0], g[1], 1e-10, 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("on_fast", [False, True])
def test_stack_remat_equals_full(on_fast, key):
    """A GRU layer under a bidirectional LSTM with lengths and dropout between the layers
    (PyTorch's packed multi-layer model), every layer in sqrt(T) segments: the same final
    states, outputs and gradients as without remat (float64)."""
    D, H, B, T = 4, 5, 3, 13
    ks = jax.random.split(key, 3)
    params = [
        cells.gru.init(ks[0], D, H, dtype=jnp.float64),
        BiParams(
            cells.lstm.init(ks[1], H, H, dtype=jnp.float64),
            cells.lstm.init(ks[2], H, H, dtype=jnp.float64),
        ),
    ]
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    kw = dict(
        lengths=jnp.array([13, 7, 1]), dropout=0.3, key=jax.random.key(4), deterministic=False,
        fast=on_fast,
    )  # fmt: skip
    cell = [cells.gru.cell, cells.lstm.cell]

    def loss(params, xs, remat):
        return _weighted(stack(cell, params, xs, remat=remat, **kw))

    _close(stack(cell, params, xs, **kw), stack(cell, params, xs, remat="sqrt", **kw), 1e-12, 1e-13)
    g = [jax.grad(loss, argnums=(0, 1))(params, xs, r) for r in (None, "sqrt")]
    _close(g[0], g[1], 1e-10, 1e-12)


@pytest.mark.parametrize(
    "option,on_fast",
    [
        ("lengths", True),
        ("dropout", True),
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in [("lengths", False), ("mask", False), ("mask", True), ("carries", False),
                         ("carries", True), ("dropout", False)]
        ),
    ],
)  # fmt: skip
def test_unidirectional_stack_remat_equals_full(on_fast, option, key):
    """simple -> LSTM -> GRU, run in time segments through all three layers (4 steps each,
    13 = 3 * 4 + 1): the same finals, outputs and gradients as the layer-by-layer run
    without remat (float64); with lengths (segments past a sequence's end), an explicit
    mask (the masked loop), given initial carries, or dropout between the layers with
    lengths (each segment redraws its steps' masks)."""
    D, H, B, T = 4, 5, 3, 13
    mods = [cells.simple, cells.lstm, cells.gru]
    ks = jax.random.split(key, 3)
    params = [
        m.init(k, d, H, dtype=jnp.float64) for m, k, d in zip(mods, ks, (D, H, H), strict=True)
    ]
    cell = [m.cell for m in mods]
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    kw = dict(fast=on_fast)
    if option == "lengths":
        kw["lengths"] = jnp.array([13, 6, 0])
    elif option == "mask":
        kw["mask"] = jax.random.bernoulli(jax.random.key(3), 0.7, (B, T))
    elif option == "dropout":
        kw.update(lengths=jnp.array([13, 6, 0]), dropout=0.4, key=jax.random.key(5),
                  deterministic=False)  # fmt: skip
    carries = None
    if option == "carries":
        carries = [
            jax.tree.map(lambda a: jnp.full_like(a, 0.3), m.initial_carry(p, (B,)))
            for m, p in zip(mods, params, strict=True)
        ]

    def loss(params, xs, carries, remat):
        return _weighted(stack(cell, params, xs, carries, remat=remat, **kw))

    _close(
        stack(cell, params, xs, carries, **kw),
        stack(cell, params, xs, carries, remat=4, **kw),
        1e-12,
        1e-13,
    )
    g = [jax.grad(loss, argnums=(0, 1, 2))(params, xs, carries, r) for r in (None, 4)]
    _close(g[0], g[1], 1e-10, 1e-12)


def test_stack_remat_reduces_bptt_memory(key):
    """Two LSTM layers on the fast path, T = 2048: per-layer remat (a bidirectional layer
    on top: the outputs between layers kept) and time segments through both layers (no
    [B, T, H] activation or dropout mask of the inner layer kept) shrink the gradient's
    temporaries."""
    B, T, D, H = 4, 2048, 8, 64
    ks = jax.random.split(key, 3)
    uni = [cells.lstm.init(ks[0], D, H), cells.lstm.init(ks[1], H, H)]
    bi = [uni[0], BiParams(uni[1], cells.lstm.init(ks[2], H, H))]
    xs = jnp.ones((B, T, D), jnp.float32)

    def temp_bytes(params, remat, **kw):
        def loss(p):
            finals, _ = stack(cells.lstm.cell, p, xs, fast=True, remat=remat, **kw)
            return sum(jnp.sum(a) for a in jax.tree.leaves(finals))

        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    full, layers = temp_bytes(bi, None), temp_bytes(bi, "sqrt")
    assert full >= 3 * T * B * H * 4  # at least every h_t of the three loops
    assert layers < full / 2.5, (full, layers)
    full, segments = temp_bytes(uni, None), temp_bytes(uni, "sqrt")
    assert full >= 2 * T * B * H * 4
    assert segments < full / 16, (full, segments)
    assert segments < T * B * H * 4  # not even one layer's [T, B, H] outputs kept
    drop = dict(dropout=0.5, key=jax.random.key(1), deterministic=False)
    segments_drop = temp_bytes(uni, "sqrt", **drop)  # the masks redrawn per segment, not kept
    assert segments_drop < T * B * H * 4 < temp_bytes(uni, None, **drop), segments_drop


def test_stack_remat_errors_name_the_whole_sequence(key):
    """The segmented stack reports bad input with the shapes the caller gave."""
    p = [cells.simple.init(key, 3, 4), cells.simple.init(key, 4, 4)]
    xs = jnp.ones((2, 10, 5), jnp.float32)  # D = 5, the cell expects 3
    with pytest.raises((ValueError, TypeError), match=r"\(2, 10, 5\)"):
        stack(cells.simple.cell, p, xs, remat=3)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=10\]"):
        stack(cells.simple.cell, p, jnp.ones((2, 10, 3)), lengths=jnp.array([3, 11]), remat=3)


@pytest.mark.parametrize("fn", ["recurrent", "bidirectional", "stack"])
def test_layer_bad_remat_is_a_clear_error(fn, key):
    p = cells.simple.init(key, 2, 3)
    xs = jnp.ones((1, 4, 2), jnp.float32)
    calls = {
        "recurrent": lambda: recurrent(cells.simple.cell, p, xs, remat="log"),
        "bidirectional": lambda: bidirectional(cells.simple.cell, BiParams(p, p), xs, remat=0),
        "stack": lambda: stack(cells.simple.cell, [p], xs, remat=2.5),
    }
    with pytest.raises(ValueError, match=f"^{fn}: remat must be None, 'sqrt' or a positive int"):
        calls[fn]()
