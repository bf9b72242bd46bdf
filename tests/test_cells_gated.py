"""LSTM and GRU cells against an independent NumPy loop (float64), check_grads, init, checks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrnn import cells, rnn
from jaxrnn.cells.lstm import LSTMCarry

B, T, D, H = 3, 5, 4, 6


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


NP_ACT = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda a: np.maximum(a, 0.0),
    "hard_sigmoid": lambda a: np.clip(a / 6.0 + 0.5, 0.0, 1.0),
}


def np_lstm(p, xs, h0, c0, lengths=None, x_masks=None, h_masks=None):
    """Per-gate NumPy loop from the equations; xs [B, T, D]; masks [4, B, D] / [4, B, H]."""
    W_x, W_h = np.asarray(p.W_x), np.asarray(p.W_h)
    b = np.zeros(4 * H) if p.b is None else np.asarray(p.b)
    act, sig = NP_ACT[p.activation], NP_ACT[p.recurrent_activation]
    blk = lambda M, g: M[..., g * H : (g + 1) * H]  # noqa: E731
    h, c = np.array(h0), np.array(c0)
    ys = np.zeros((xs.shape[0], xs.shape[1], H))
    for t in range(xs.shape[1]):
        x = xs[:, t]
        pre = []
        for g in range(4):
            xg = x if x_masks is None else x * x_masks[g]
            hg = h if h_masks is None else h * h_masks[g]
            pre.append(xg @ blk(W_x, g) + hg @ blk(W_h, g) + blk(b, g))
        i, f, gg, o = sig(pre[0]), sig(pre[1]), act(pre[2]), sig(pre[3])
        c_new = f * c + i * gg
        h_new = o * act(c_new)
        alive = np.ones(len(x), bool) if lengths is None else t < lengths
        h = np.where(alive[:, None], h_new, h)
        c = np.where(alive[:, None], c_new, c)
        ys[:, t] = np.where(alive[:, None], h_new, 0.0)
    return (h, c), ys


def np_gru(p, xs, h0, lengths=None, x_masks=None, h_masks=None):
    """Per-gate NumPy loop of both GRU formulations; gates z, r, h."""
    W_x, W_h = np.asarray(p.W_x), np.asarray(p.W_h)
    act, sig = NP_ACT[p.activation], NP_ACT[p.recurrent_activation]
    if p.b is None:
        b_x, b_h = np.zeros(3 * H), np.zeros(3 * H)
    elif p.reset_after:
        b_x, b_h = np.asarray(p.b[0]), np.asarray(p.b[1])
    else:
        b_x, b_h = np.asarray(p.b), np.zeros(3 * H)
    blk = lambda M, g: M[..., g * H : (g + 1) * H]  # noqa: E731
    h = np.array(h0)
    ys = np.zeros((xs.shape[0], xs.shape[1], H))
    for t in range(xs.shape[1]):
        x = xs[:, t]
        xg = [x if x_masks is None else x * x_masks[g] for g in range(3)]
        hg = [h if h_masks is None else h * h_masks[g] for g in range(3)]
        z = sig(xg[0] @ blk(W_x, 0) + blk(b_x, 0) + hg[0] @ blk(W_h, 0) + blk(b_h, 0))
        r = sig(xg[1] @ blk(W_x, 1) + blk(b_x, 1) + hg[1] @ blk(W_h, 1) + blk(b_h, 1))
        if p.reset_after:
            hh = act(xg[2] @ blk(W_x, 2) + blk(b_x, 2) + r * (hg[2] @ blk(W_h, 2) + blk(b_h, 2)))
        else:
            hh = act(xg[2] @ blk(W_x, 2) + blk(b_x, 2) + (r * hg[2]) @ blk(W_h, 2))
        h_new = z * h + (1 - z) * hh
        alive = np.ones(len(x), bool) if lengths is None else t < lengths
        h = np.where(alive[:, None], h_new, h)
        ys[:, t] = np.where(alive[:, None], h_new, 0.0)
    return h, ys


# (cell name, init options) — every option of both cells.
CASES = [
    ("lstm", {}),
    ("lstm", {"use_bias": False}),
    ("lstm", {"unit_forget_bias": False, "bias_initializer": "ones"}),
    ("lstm", {"activation": "relu", "recurrent_activation": "hard_sigmoid"}),
    ("gru", {}),
    ("gru", {"reset_after": False}),
    ("gru", {"use_bias": False}),
    ("gru", {"reset_after": False, "use_bias": False}),
    ("gru", {"activation": "relu", "recurrent_activation": "hard_sigmoid"}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in CASES]


def _params(name, opts, dtype=jnp.float64, seed=0):
    mod = cells.get(name)
    p = mod.init(jax.random.key(seed), D, H, dtype=dtype, **opts)
    if p.b is not None:  # random biases so every bias block matters
        p = type(p)(
            **{**p.__dict__, "b": jax.random.normal(jax.random.key(seed + 7), p.b.shape, dtype)}
        )
    return mod, p


def _reference(name, p, xs, carry0, lengths=None, x_masks=None, h_masks=None):
    if name == "lstm":
        (h, c), ys = np_lstm(p, xs, carry0.h, carry0.c, lengths, x_masks, h_masks)
        return LSTMCarry(h, c), ys
    return np_gru(p, xs, carry0, lengths, x_masks, h_masks)


def _random_carry(name, key):
    k1, k2 = jax.random.split(key)
    h = jax.random.normal(k1, (B, H), jnp.float64)
    return LSTMCarry(h, jax.random.normal(k2, (B, H), jnp.float64)) if name == "lstm" else h


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
def test_matches_numpy_loop(name, opts, use_lengths):
    mod, p = _params(name, opts)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    carry0 = _random_carry(name, jax.random.key(2))
    lengths = np.array([T, 2, 0]) if use_lengths else None
    carry, ys = jax.jit(lambda p, xs, c: rnn(mod.cell, p, xs, c, lengths=lengths))(p, xs, carry0)
    ref_carry, ref_ys = _reference(name, p, np.asarray(xs), carry0, lengths)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-12, atol=1e-12)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
@pytest.mark.parametrize("per_gate", [False, True], ids=["shared-mask", "per-gate-masks"])
def test_dropout_masks_match_numpy_loop(name, opts, per_gate):
    mod, p = _params(name, opts)
    G = mod.N_GATES
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    carry0 = _random_carry(name, jax.random.key(2))
    shape_x, shape_h = ((G,) if per_gate else ()) + (B, D), ((G,) if per_gate else ()) + (B, H)
    kx, kh = jax.random.split(jax.random.key(3))
    x_mask = jax.random.bernoulli(kx, 0.7, shape_x) / 0.7
    h_mask = jax.random.bernoulli(kh, 0.6, shape_h) / 0.6
    cell = functools.partial(mod.cell, x_mask=x_mask, h_mask=h_mask)
    carry, ys = rnn(cell, p, xs, carry0)
    as_gates = lambda m: np.asarray(m) if per_gate else np.stack([np.asarray(m)] * G)  # noqa: E731
    ref_carry, ref_ys = _reference(
        name, p, np.asarray(xs), carry0, None, as_gates(x_mask), as_gates(h_mask)
    )
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-12, atol=1e-12)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# the default GRU in the slow tier: the reset_after=False GRU shares its gates and update
GRAD_CASES = [
    ("lstm", {}),
    pytest.param("gru", {}, marks=pytest.mark.slow),
    ("gru", {"reset_after": False}),
]


def _grad_check(name, opts, order):
    mod, p = _params(name, opts)
    xs = jax.random.normal(jax.random.key(1), (2, 3, D), jnp.float64)
    carry0 = jax.tree.map(lambda a: a[:2], _random_carry(name, jax.random.key(2)))

    @jax.jit  # one compilation for check_grads's many evaluations
    def loss(p, xs, carry0):
        carry, ys = rnn(mod.cell, p, xs, carry0)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(carry))

    # central differences in float64: step 1e-6 for first order (error ~1e-10), 1e-4 for second
    eps, tol = (1e-6, 1e-7) if order == 1 else (1e-4, 1e-5)
    check_grads(
        loss, (p, xs, carry0), order=order, modes=["rev", "fwd"], atol=tol, rtol=tol, eps=eps
    )


@pytest.mark.parametrize("name,opts", GRAD_CASES, ids=lambda v: str(v))
def test_check_grads(name, opts):
    """BPTT gradients w.r.t. params, inputs and the initial carry, against finite differences."""
    _grad_check(name, opts, order=1)


@pytest.mark.slow
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_check_grads_second_order(name, opts):
    _grad_check(name, opts, order=2)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_initializers_follow_keras(name):
    """Keras: glorot_uniform on fused [D, GH], orthogonal [H, GH], zero bias (+1 forget)."""
    mod = cells.get(name)
    Dbig, Hbig = 40, 30
    p = mod.init(jax.random.key(0), Dbig, Hbig, dtype=jnp.float64)
    G = mod.N_GATES
    limit = np.sqrt(6.0 / (Dbig + G * Hbig))
    W_x = np.asarray(p.W_x)
    assert W_x.shape == (Dbig, G * Hbig)
    assert np.abs(W_x).max() <= limit and np.abs(W_x).max() > 0.95 * limit
    np.testing.assert_allclose(np.var(W_x), limit**2 / 3, rtol=0.1)  # variance of U(-a, a)
    W_h = np.asarray(p.W_h)
    np.testing.assert_allclose(W_h @ W_h.T, np.eye(Hbig), atol=1e-10)  # orthonormal rows
    expected_b = np.zeros(G * Hbig)
    if name == "lstm":
        expected_b[Hbig : 2 * Hbig] = 1.0  # unit_forget_bias
    else:
        expected_b = np.zeros((2, G * Hbig))
    np.testing.assert_array_equal(p.b, expected_b)


def test_registry_and_attributes():
    assert cells.get("lstm") is cells.lstm and cells.get("gru") is cells.gru
    for mod in (cells.lstm, cells.gru):
        assert mod.cell.cell_name == mod.NAME and mod.cell.initial_carry is mod.initial_carry
    p = cells.lstm.init(jax.random.key(0), D, H)
    assert isinstance(cells.lstm.initial_carry(p, (B,)), LSTMCarry)
    # activations are static: only arrays are leaves, and grads are params-shaped
    assert len(jax.tree.leaves(p)) == 3
    assert len(jax.tree.leaves(cells.gru.init(jax.random.key(0), D, H, use_bias=False))) == 2


def test_unbatched_equals_batched_row():
    for mod in (cells.lstm, cells.gru):
        p = mod.init(jax.random.key(0), D, H, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
        _, ys = rnn(mod.cell, p, xs)
        _, y1 = rnn(mod.cell, p, xs[1])
        np.testing.assert_allclose(y1, ys[1], rtol=1e-13, atol=1e-13)


def test_float32_stays_float32():
    for mod in (cells.lstm, cells.gru):
        p = mod.init(jax.random.key(0), D, H)
        carry, ys = rnn(mod.cell, p, jnp.ones((B, T, D), jnp.float32))
        assert ys.dtype == jnp.float32
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(carry))


@pytest.mark.parametrize(
    "call,err,match",
    [
        (
            lambda p, c: cells.lstm.cell(p, c, jnp.ones((B, D + 1))),
            ValueError,
            r"x must have shape \[\.\.\., 4\].*got shape \(3, 5\)",
        ),
        (
            lambda p, c: cells.lstm.cell(p, c.h, jnp.ones((B, D))),
            TypeError,
            r"carry must be LSTMCarry.*; got ArrayImpl",
        ),
        (
            lambda p, c: cells.lstm.cell(p, LSTMCarry(c.h, c.c[:2]), jnp.ones((B, D))),
            ValueError,
            r"carry c must have shape \[3, 6\].*got shape \(2, 6\)",
        ),
        (
            lambda p, c: cells.lstm.cell(p, c, jnp.ones((B, D), jnp.int32)),
            TypeError,
            r"x must have a floating dtype.*got int32",
        ),
        (
            lambda p, c: cells.lstm.cell(p, c, jnp.ones((B, D)), x_mask=jnp.ones((3, B, D))),
            ValueError,
            r"x_mask must have shape \[3, 4\].*\[4, 3, 4\]",
        ),
    ],
)
def test_lstm_bad_input_is_reported(call, err, match):
    p = cells.lstm.init(jax.random.key(0), D, H)
    with pytest.raises(err, match=match):
        call(p, cells.lstm.initial_carry(p, (B,)))


def test_gru_bad_input_is_reported():
    p = cells.gru.init(jax.random.key(0), D, H)
    h = cells.gru.initial_carry(p, (B,))
    with pytest.raises(ValueError, match=r"carry h must have shape \[3, 6\].*got shape \(3, 2\)"):
        cells.gru.cell(p, h[:, :2], jnp.ones((B, D)))
    bad = cells.gru.GRUParams(p.W_x, p.W_h, p.b[0], reset_after=True)
    with pytest.raises(
        ValueError, match=r"b must have shape \[2, 18\] with reset_after=True.*got shape \(18,\)"
    ):
        cells.gru.cell(bad, h, jnp.ones((B, D)))
    with pytest.raises(
        ValueError,
        match=r"recurrent_activation must be one of \[.*'sigmoid'.*\] or a callable; got 'nope'",
    ):
        cells.gru.init(jax.random.key(0), D, H, recurrent_activation="nope")
    with pytest.raises(ValueError, match="hidden_size must be a positive int; got 0"):
        cells.lstm.init(jax.random.key(0), D, 0)
