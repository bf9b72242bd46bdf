"""recurrent / bidirectional / stack (..., remat=k | "sqrt"): the same values and gradients
as without remat (float64); less memory for BPTT (XLA's compiled buffer sizes) on rnn's
backends and the layers. (rnn's remat against no remat, on every backend: test_backends.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import paths_taken

from jaxrnn import BiParams, bidirectional, cells, recurrent, rnn, stack
from jaxrnn._checks import remat_segment
from jaxrnn.backends import cpu


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


@pytest.mark.parametrize("backend", ["scan", "auto"])
@pytest.mark.parametrize("cell_name", ["simple", "lstm"])
def test_remat_reduces_bptt_memory(cell_name, backend, key):
    """XLA's buffer assignment: the gradient's temporaries shrink with sqrt(T) segments, on
    the scan and on the fastest backend (neither the projections [T, B, G H] nor the loops'
    buffers kept for all T)."""
    mod = cells.get(cell_name)
    B, T, D, H = 4, 2048, 8, 64
    p = mod.init(key, D, H)
    xs = jnp.ones((B, T, D), jnp.float32)

    def temp_bytes(remat):
        def loss(p):
            return jnp.sum(
                jax.tree.leaves(rnn(mod.cell, p, xs, remat=remat, backend=backend)[0])[0]
            )

        return jax.jit(jax.grad(loss)).lower(p).compile().memory_analysis().temp_size_in_bytes

    full, sqrt = temp_bytes(None), temp_bytes("sqrt")
    for remat in (None, "sqrt"):  # auto ran the kernels (float32 on a CPU), scan none
        run = lambda p, r=remat: rnn(mod.cell, p, xs, remat=r, backend=backend)  # noqa: E731
        want = set() if backend == "scan" else cells_path()
        assert paths_taken(run, p) - {"hoisted"} == want, (remat, paths_taken(run, p))
    assert full >= T * B * H * 4  # at least every h_t is kept
    assert sqrt < full / 4, (full, sqrt)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "log", True])
def test_bad_remat_is_a_clear_error(bad, key):
    p = cells.simple.init(key, 2, 3)
    with pytest.raises(
        ValueError, match=f"rnn: remat must be None, 'sqrt' or a positive int; got {bad!r}"
    ):
        rnn(cells.simple.cell, p, jnp.ones((1, 4, 2), jnp.float32), remat=bad)


def cells_path() -> set[str]:
    """The kernels ``auto`` picks for float32 here (none where they cannot run)."""
    if jax.default_backend() == "gpu":
        return {"pallas"}
    return {"native"} if cpu.available() else set()


def test_remat_segment():
    assert remat_segment("sqrt", 100) == 10
    assert remat_segment(500, 100) == 100


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
    "cell_name,remat,option,backend",
    [
        ("simple", 4, "mask", "scan"),  # an arbitrary mask: the masked loop, in segments
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in [
                ("lstm", "sqrt", "lengths", "auto"),
                ("simple", 4, "mask", "auto"),  # auto with a mask: the masked loop too
                ("lstm", "sqrt", "lengths", "scan"),
                ("gru", 5, "lengths_backwards", "scan"),
                ("gru", 5, "lengths_backwards", "auto"),
                ("lstm", 3, "backwards", "scan"),
                ("lstm", 3, "backwards", "auto"),
            ]
        ),
    ],
)
def test_recurrent_remat_equals_full(cell_name, remat, option, backend, key):
    """recurrent(..., remat=) (Keras semantics: masks, go_backwards, the masked steps' outputs)
    against the same call without remat, float64, values and gradients."""
    mod, p, xs, h0 = _case(cell_name, key)
    B, T = xs.shape[:2]
    kw = dict(go_backwards="backwards" in option, backend=backend, return_state=True)
    if option == "mask":
        kw["mask"] = jax.random.bernoulli(jax.random.key(3), 0.7, (B, T))
    elif "lengths" in option:
        kw["lengths"] = jnp.array([13, 6, 0])
    if backend == "auto":
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
    # auto runs float64 on the hoisted XLA loops, except that a mask needs the masked scan
    hoisted = backend == "auto" and option != "mask"
    assert paths_taken(lambda p: loss(p, xs, h0, remat), p) == ({"hoisted"} if hoisted else set())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["scan", "auto"])
def test_stack_remat_equals_full(backend, key):
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
        backend=backend,
    )  # fmt: skip
    cell = [cells.gru.cell, cells.lstm.cell]

    def loss(params, xs, remat):
        return _weighted(stack(cell, params, xs, remat=remat, **kw))

    _close(stack(cell, params, xs, **kw), stack(cell, params, xs, remat="sqrt", **kw), 1e-12, 1e-13)
    g = [jax.grad(loss, argnums=(0, 1))(params, xs, r) for r in (None, "sqrt")]
    _close(g[0], g[1], 1e-10, 1e-12)


@pytest.mark.parametrize(
    "option,backend",
    [
        ("lengths", "auto"),
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in [("dropout", "auto"), ("lengths", "scan"), ("mask", "scan"), ("mask", "auto"),
                         ("carries", "scan"), ("carries", "auto"), ("dropout", "scan")]
        ),
    ],
)  # fmt: skip
def test_unidirectional_stack_remat_equals_full(backend, option, key):
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
    kw = dict(backend=backend)
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

    def run(params, xs, carries, remat):
        return stack(cell, params, xs, carries, remat=remat, **kw)

    def loss(params, xs, carries, remat):
        return _weighted(run(params, xs, carries, remat))

    fwd = jax.jit(run, static_argnums=3)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    _close(fwd(params, xs, carries, None), fwd(params, xs, carries, 4), 1e-12, 1e-13)
    _close(grad(params, xs, carries, None), grad(params, xs, carries, 4), 1e-10, 1e-12)


def test_stack_remat_reduces_bptt_memory(key):
    """Two LSTM layers on the fastest backend, T = 2048: per-layer remat (a bidirectional layer
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
            finals, _ = stack(cells.lstm.cell, p, xs, remat=remat, **kw)
            return sum(jnp.sum(a) for a in jax.tree.leaves(finals))

        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    full, layers = temp_bytes(bi, None), temp_bytes(bi, "sqrt")
    assert full >= 3 * T * B * H * 4  # at least every h_t of the three loops
    assert layers < full / 2.5, (full, layers)
    full, segments = temp_bytes(uni, None), temp_bytes(uni, "sqrt")
    assert full >= 2 * T * B * H * 4
    assert segments < full / 16, (full, segments)
    drop = dict(dropout=0.5, key=jax.random.key(1), deterministic=False)
    segments_drop = temp_bytes(uni, "sqrt", **drop)  # the masks redrawn per segment, not kept
    one_layer = T * B * H * 4  # [T, B, H] float32: what keeping the masks would add
    assert segments_drop < segments + one_layer / 4, (segments, segments_drop)
    assert temp_bytes(uni, None, **drop) > full + one_layer / 2  # kept without remat


def test_stack_remat_errors_name_the_whole_sequence(key):
    """The segmented stack reports bad input with the shapes the caller gave."""
    p = [cells.simple.init(key, 3, 4), cells.simple.init(key, 4, 4)]
    xs = jnp.ones((2, 10, 5), jnp.float32)  # D = 5, the cell expects 3
    with pytest.raises(
        (ValueError, TypeError),
        match=r"x must have shape \[\.\.\., 3\].*got shape \(2, 5\)\n.*xs of shape \(2, 10, 5\)",
    ):
        stack(cells.simple.cell, p, xs, remat=3)
    with pytest.raises(
        ValueError, match=r"lengths must lie in \[0, T=10\]; got values in \[3, 11\]"
    ):
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
    got = {"recurrent": "'log'", "bidirectional": "0", "stack": "2.5"}[fn]
    with pytest.raises(
        ValueError, match=f"^{fn}: remat must be None, 'sqrt' or a positive int; got {got}$"
    ):
        calls[fn]()
