"""``rnn`` against the NumPy loop, under jit / grad / vmap, with lengths and reverse."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrnn import cells, rnn
from jaxrnn.reference import simple_rnn_forward

B, T, D, H = 3, 7, 4, 5


def _params(activation="tanh", use_bias=True, seed=0):
    p = cells.simple.init(
        jax.random.key(seed),
        D,
        H,
        activation,
        use_bias=use_bias,
        dtype=jnp.float64,
        bias_initializer=lambda k, s, d: jax.random.normal(k, s, d),
    )
    return p


def _np(p):
    return np.asarray(p.W_x), np.asarray(p.W_h), None if p.b is None else np.asarray(p.b)


def _xs(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_rnn_equals_numpy_loop(activation, reverse, use_lengths, with_h0):
    p = _params(activation)
    xs = _xs((B, T, D))  # [B, T, D]
    h0 = _xs((B, H), seed=2) if with_h0 else None
    lengths = jnp.array([T, 3, 0]) if use_lengths else None
    h_T, ys = rnn(cells.simple.cell, p, xs, h0, lengths=lengths, reverse=reverse)
    ref_h, ref_ys = simple_rnn_forward(
        np.asarray(xs),
        *_np(p),
        None if h0 is None else np.asarray(h0),
        activation,
        None if lengths is None else np.asarray(lengths),
        reverse,
    )
    assert h_T.shape == (B, H) and ys.shape == (B, T, H)
    np.testing.assert_allclose(np.asarray(h_T), ref_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ys), ref_ys, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unroll", [1, 3, True])
def test_time_major_unbatched_and_unroll_agree(unroll):
    p = _params()
    xs = _xs((B, T, D))
    h_ref, ys_ref = rnn(cells.simple.cell, p, xs)
    h_tm, ys_tm = rnn(cells.simple.cell, p, jnp.swapaxes(xs, 0, 1), time_major=True, unroll=unroll)
    np.testing.assert_allclose(h_tm, h_ref, rtol=1e-13)
    np.testing.assert_allclose(jnp.swapaxes(ys_tm, 0, 1), ys_ref, rtol=1e-13)
    h_1, ys_1 = rnn(cells.simple.cell, p, xs[1], unroll=unroll)  # [T, D] -> [H], [T, H]
    assert h_1.shape == (H,) and ys_1.shape == (T, H)
    np.testing.assert_allclose(h_1, h_ref[1], rtol=1e-13)
    np.testing.assert_allclose(ys_1, ys_ref[1], rtol=1e-13)


def test_lengths_are_exact():
    """A padded sequence gives what the unpadded one gives alone; padded outputs are 0."""
    p = _params()
    xs = _xs((B, T, D))
    lengths = jnp.array([T, 4, 1])
    padded = xs.at[1, 4:].set(1e3).at[2, 1:].set(-1e3)  # garbage past each length
    for reverse in (False, True):
        h_T, ys = rnn(cells.simple.cell, p, padded, lengths=lengths, reverse=reverse)
        for i, L in enumerate([T, 4, 1]):
            h_i, ys_i = rnn(cells.simple.cell, p, xs[i, :L], reverse=reverse)
            np.testing.assert_allclose(h_T[i], h_i, rtol=1e-13)
            np.testing.assert_allclose(ys[i, :L], ys_i, rtol=1e-13)
            np.testing.assert_array_equal(ys[i, L:], 0.0)


def test_unbatched_lengths_scalar():
    p = _params()
    xs = _xs((T, D))
    h, ys = rnn(cells.simple.cell, p, xs, lengths=jnp.array(4))
    h4, _ = rnn(cells.simple.cell, p, xs[:4])
    np.testing.assert_allclose(h, h4, rtol=1e-13)
    np.testing.assert_array_equal(ys[4:], 0.0)


def test_jit_matches_eager_and_does_not_recompile():
    p = _params()
    xs = _xs((B, T, D))
    traces = []

    @jax.jit
    def f(p, xs, lengths):
        traces.append(1)
        return rnn(cells.simple.cell, p, xs, lengths=lengths)

    out1 = f(p, xs, jnp.array([T, 2, 5]))
    out2 = f(p, xs * 2, jnp.array([1, 2, 3]))  # same shapes: no new trace
    assert len(traces) == 1
    eager = rnn(cells.simple.cell, p, xs * 2, lengths=jnp.array([1, 2, 3]))
    for a, b in zip(jax.tree.leaves(out2), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert not np.allclose(out1[0], out2[0])


def test_vmap_over_batch_equals_batched():
    p = _params()
    xs = _xs((B, T, D))
    lengths = jnp.array([T, 2, 5])
    h_b, ys_b = rnn(cells.simple.cell, p, xs, lengths=lengths, reverse=True)
    h_v, ys_v = jax.vmap(lambda x, L: rnn(cells.simple.cell, p, x, lengths=L, reverse=True))(
        xs, lengths
    )
    np.testing.assert_allclose(h_v, h_b, rtol=1e-13)
    np.testing.assert_allclose(ys_v, ys_b, rtol=1e-13)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_grads_match_finite_differences(reverse, use_lengths):
    """BPTT through scan (and through the length masks) against numerical derivatives, float64."""
    p = _params()
    xs = _xs((B, T, D))
    h0 = _xs((B, H), seed=3)
    lengths = jnp.array([T, 3, 1]) if use_lengths else None

    @jax.jit  # one compilation for check_grads's many evaluations
    def loss(p, xs, h0):
        h_T, ys = rnn(cells.simple.cell, p, xs, h0, lengths=lengths, reverse=reverse)
        return jnp.sum(h_T**2) + jnp.sum(jnp.sin(ys))

    check_grads(loss, (p, xs, h0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    check_grads(loss, (p, xs, h0), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)
    check_grads(
        functools.partial(loss, xs=xs, h0=h0), (p,), order=1, modes=["fwd"], atol=1e-6, rtol=1e-6
    )


def test_grad_through_masked_steps_is_zero():
    """Inputs past a sequence's length cannot influence anything."""
    p = _params()
    xs = _xs((B, T, D))
    lengths = jnp.array([T, 3, 0])

    def loss(xs):
        h_T, ys = rnn(cells.simple.cell, p, xs, lengths=lengths)
        return jnp.sum(h_T) + jnp.sum(ys**2)

    g = jax.grad(loss)(xs)
    np.testing.assert_array_equal(g[1, 3:], 0.0)
    np.testing.assert_array_equal(g[2], 0.0)
    assert np.all(np.abs(g[0]).sum(-1) > 0)


def test_float32_path(key):
    p = cells.simple.init(key, D, H)  # float32 default
    xs = _xs((B, T, D)).astype(jnp.float32)
    h_T, ys = jax.jit(lambda p, x: rnn(cells.simple.cell, p, x))(p, xs)
    assert h_T.dtype == jnp.float32 and ys.dtype == jnp.float32
    ref_h, _ = simple_rnn_forward(
        np.asarray(xs, np.float64), *(np.asarray(a, np.float64) for a in (p.W_x, p.W_h, p.b))
    )
    np.testing.assert_allclose(h_T, ref_h, rtol=1e-5, atol=1e-6)


def test_seed_question_shapes(key):
    """The seed question: input (250, 32), 100 units -> output (100,)."""
    p = cells.simple.init(key, 32, 100)
    xs = jax.random.normal(jax.random.key(5), (250, 32), jnp.float32)
    h_T, hs = rnn(cells.simple.cell, p, xs)
    assert h_T.shape == (100,) and hs.shape == (250, 100)
    # ... and it is the plain loop h = tanh(x_t W_x + h W_h + b), keeping the last h.
    h = np.zeros(100)
    W_x, W_h, b = (np.asarray(a, np.float64) for a in (p.W_x, p.W_h, p.b))
    for x_t in np.asarray(xs, np.float64):
        h = np.tanh(x_t @ W_x + h @ W_h + b)
    np.testing.assert_allclose(h_T, h, rtol=1e-5, atol=1e-6)
