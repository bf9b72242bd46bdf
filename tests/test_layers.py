"""recurrent / bidirectional / stack / dropout against independent loops (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_path, assert_trees_close, backend_tol, paths_taken

from jaxrnn import BiParams, bidirectional, cells, recurrent, rnn, stack, torch_state
from jaxrnn.dropout import dropout, dropout_steps, rnn_dropout_masks, with_masks

B, T, D, H = 3, 6, 4, 5
KINDS = ["simple", "lstm", "gru"]
MASK = np.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]], bool)
LENGTHS = np.array([6, 3, 1])


def _setup(kind, seed=0, d=D):
    mod = cells.get(kind)
    p = mod.init(jax.random.key(seed), d, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(seed + 1), (B, T, d), jnp.float64)
    return mod.cell, p, xs


def _loop(cell, p, xs, mask, go_backwards, zero_output):
    """Keras's masked loop, written out per example and per step in Python."""
    outs, finals = [], []
    for b in range(xs.shape[0]):
        carry = cell.initial_carry(p, ())
        order = range(T - 1, -1, -1) if go_backwards else range(T)
        ys = []
        for t in order:
            h_prev = carry[0] if isinstance(carry, tuple) else carry
            new, y = cell(p, carry, xs[b, t])
            if mask[b, t]:
                carry = new
            else:
                y = jnp.zeros_like(y) if zero_output else h_prev
            ys.append(y)  # processing order
        outs.append(jnp.stack(ys))
        finals.append(carry)
    return jnp.stack(outs), jax.tree.map(lambda *a: jnp.stack(a), *finals)


@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_mask_matches_loop(kind, go_backwards, zero_output):
    cell, p, xs = _setup(kind)
    ys, carry = recurrent(
        cell,
        p,
        xs,
        mask=MASK,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output,
        return_state=True,
    )
    ref_ys, ref_carry = _loop(cell, p, xs, MASK, go_backwards, zero_output)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    last = recurrent(
        cell,
        p,
        xs,
        mask=MASK,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output,
        return_sequences=False,
    )
    np.testing.assert_allclose(last, ref_ys[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("use_lengths", [True, False], ids=["lengths", "no-mask"])
@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_on_every_backend_matches_loop(
    backend, kind, use_lengths, go_backwards, zero_output
):
    """recurrent on each backend (masked outputs filled in after the loop) against Keras's
    masked loop written out; gradients against scan."""
    dtype = jnp.float32 if backend.name == "native" else jnp.float64
    cell, p, xs = _setup(kind)
    p, xs = jax.tree.map(lambda a: a.astype(dtype), (p, xs))
    lengths = jnp.asarray(LENGTHS) if use_lengths else None
    mask = (np.arange(T)[None, :] < LENGTHS[:, None]) if use_lengths else np.ones((B, T), bool)
    opts = dict(lengths=lengths, go_backwards=go_backwards, zero_output_for_mask=zero_output)
    assert_path(backend, lambda p, x: recurrent(cell, p, x, backend=backend, **opts), p, xs)
    ys, carry = recurrent(cell, p, xs, return_state=True, backend=backend, **opts)
    p64, xs64 = jax.tree.map(lambda a: a.astype(jnp.float64), (p, xs))
    ref_ys, ref_carry = _loop(cell, p64, xs64, mask, go_backwards, zero_output)
    assert_trees_close((ys, carry), (ref_ys, ref_carry), **backend_tol(backend))

    def loss(p, xs, b):
        ys, carry = recurrent(cell, p, xs, return_state=True, backend=b, **opts)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    g = jax.grad(loss, argnums=(0, 1))(p, xs, backend)
    assert_trees_close(g, jax.grad(loss, argnums=(0, 1))(p64, xs64, "scan"), **backend_tol(backend))


@pytest.mark.parametrize("go_backwards", [False, True])
def test_recurrent_with_dropout_equals_scan(go_backwards):
    """Input and recurrent dropout masks bound to the cell (the recurrent mask keeps auto on
    scan; input dropout alone is hoisted): the same semantics and numbers."""
    cell, p, xs = _setup("lstm")
    for rec in (0.2, 0.0):
        opts = dict(
            lengths=jnp.asarray(LENGTHS), go_backwards=go_backwards, dropout=0.3,
            recurrent_dropout=rec, key=jax.random.key(5), deterministic=False, return_state=True,
        )  # fmt: skip
        got = recurrent(cell, p, xs, **opts)
        assert_trees_close(
            got, recurrent(cell, p, xs, backend="scan", **opts), rtol=1e-12, atol=1e-12
        )


def test_recurrent_with_an_explicit_mask_runs_the_masked_loop():
    cell, p, xs = _setup("lstm")
    assert not paths_taken(lambda p, x: recurrent(cell, p, x, mask=MASK), p, xs)
    np.testing.assert_allclose(
        recurrent(cell, p, xs, mask=MASK), _loop(cell, p, xs, MASK, False, False)[0],
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"backend 'xla' cannot skip masked steps .* as lengths, or use backend 'scan' / 'auto'",
    ):
        recurrent(cell, p, xs, mask=MASK, backend="xla")


@pytest.mark.parametrize("kind", KINDS)
def test_masked_steps_never_reach_the_gradients(kind):
    """NaN, inf or 1e30 at masked steps give the gradients that zeros there give: an arbitrary
    mask (the masked loop), and lengths through ``bidirectional`` (the backward direction
    starts inside the padding)."""
    cell, p, xs = _setup(kind)
    bi = BiParams(p, cells.get(kind).init(jax.random.key(5), D, H, dtype=jnp.float64))
    right_padded = ~(np.arange(T) < LENGTHS[:, None])
    cases = [
        (lambda p, xs: recurrent(cell, p, xs, mask=MASK), p, ~MASK),
        (lambda p, xs: bidirectional(cell, p, xs, lengths=LENGTHS), bi, right_padded),
    ]
    for run, params, pad in cases:
        grad = jax.jit(jax.grad(lambda p, xs, run=run: jnp.sum(jnp.sin(run(p, xs))), (0, 1)))
        pad = pad[:, :, None]
        want = grad(params, jnp.where(pad, 0.0, xs))
        for fill in (np.nan, np.inf, 1e30):
            assert_trees_close(grad(params, jnp.where(pad, fill, xs)), want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_lengths_agree_with_rnn(kind):
    """Right-padded: recurrent(lengths) == rnn(lengths); go_backwards == rnn(reverse) flipped."""
    cell, p, xs = _setup(kind)
    ys, c = recurrent(cell, p, xs, lengths=LENGTHS, zero_output_for_mask=True, return_state=True)
    c_ref, ys_ref = rnn(cell, p, xs, lengths=LENGTHS)
    np.testing.assert_allclose(ys, ys_ref, atol=1e-13)
    for a, b in zip(jax.tree.leaves(c), jax.tree.leaves(c_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-13)
    yb, cb = recurrent(
        cell,
        p,
        xs,
        lengths=LENGTHS,
        go_backwards=True,
        zero_output_for_mask=True,
        return_state=True,
    )
    cb_ref, yb_ref = rnn(cell, p, xs, lengths=LENGTHS, reverse=True)
    np.testing.assert_allclose(yb[:, ::-1], yb_ref, atol=1e-13)
    for a, b in zip(jax.tree.leaves(cb), jax.tree.leaves(cb_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_is_one_mask_per_sequence(kind):
    cell, p, xs = _setup(kind)
    key = jax.random.key(5)
    rates = dict(dropout=0.3, recurrent_dropout=0.2)
    got = recurrent(cell, p, xs, key=key, deterministic=False, **rates)
    masks = rnn_dropout_masks(key, cell, D, H, (B,), **rates, dtype=jnp.float64)
    _, want = rnn(with_masks(cell, masks), p, xs)  # the same masks at every step
    np.testing.assert_allclose(got, want, atol=1e-13)
    # Keras: one mask per gate once recurrent_dropout > 0 (none for the simple cell)
    G = {"simple": None, "lstm": 4, "gru": 3}[kind]
    assert masks.x.shape == ((G,) if G else ()) + (B, D)
    assert masks.h.shape == ((G,) if G else ()) + (B, H)
    assert not np.allclose(got, recurrent(cell, p, xs))
    np.testing.assert_array_equal(
        recurrent(cell, p, xs, key=key, deterministic=True, **rates), recurrent(cell, p, xs)
    )
    with pytest.raises(
        ValueError, match="dropout with deterministic=False needs a PRNG key; got key=None"
    ):
        recurrent(cell, p, xs, deterministic=False, **rates)


def test_dropout_masks_statistics():
    m = rnn_dropout_masks(
        jax.random.key(0),
        cells.lstm.cell,
        200,
        100,
        (500,),
        dropout=0.25,
        recurrent_dropout=0.0,
        dtype=jnp.float64,
    )
    assert m.h is None and m.x.shape == (500, 200)  # shared across gates without recurrent_dropout
    assert set(np.unique(np.asarray(m.x)).tolist()) == {0.0, 1 / 0.75}
    assert abs(float(jnp.mean(m.x == 0)) - 0.25) < 0.01
    y = dropout(jax.random.key(1), jnp.ones((400, 50, 10)), 0.4)
    assert abs(float(jnp.mean(y == 0)) - 0.4) < 0.01 and abs(float(jnp.mean(y)) - 1.0) < 0.02
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\); got 1.0"):
        dropout(jax.random.key(1), y, 1.0)


def test_dropout_steps_draws_each_step_from_its_index():
    """Step t's mask comes from fold_in(key, t) alone: a segment of steps gets the masks of
    those steps of the whole sequence; elements are dropped independently at the rate."""
    key, rate = jax.random.key(2), 0.4
    xs = jnp.ones((300, 20, 8), jnp.float32)  # [B, T, H]
    whole = dropout_steps(key, xs, rate, jnp.arange(20))
    for t in (0, 7, 19):  # each step on its own: bernoulli(keep) / (1 - rate) from fold_in(key, t)
        keep = jax.random.bernoulli(jax.random.fold_in(key, t), 1 - rate, (300, 8))
        np.testing.assert_array_equal(whole[:, t], keep / np.float32(1 - rate))
    segment = dropout_steps(key, xs[:, :5], rate, jnp.arange(12, 17))
    np.testing.assert_array_equal(segment, whole[:, 12:17])
    assert set(np.unique(np.asarray(whole)).tolist()) == {0.0, np.float32(1 / 0.6)}
    assert abs(float(jnp.mean(whole == 0)) - rate) < 0.01
    assert float(jnp.mean(whole[:, 0] == whole[:, 1])) < 0.6  # steps differ (0.52 expected)
    np.testing.assert_array_equal(dropout_steps(key, xs, 0.0, jnp.arange(20)), xs)
    with pytest.raises(ValueError, match=r"steps \[n\]; got xs of shape \(300, 20, 8\) and "
                       r"steps of shape \(19,\)"):  # fmt: skip
        dropout_steps(key, xs, rate, jnp.arange(19))


# the simple and GRU cells in the slow tier: bidirectional is cell-agnostic (the LSTM's carry
# is the pytree case)
@pytest.mark.parametrize(
    "kind", [k if k == "lstm" else pytest.param(k, marks=pytest.mark.slow) for k in KINDS]
)
def test_bidirectional_matches_two_rnns(kind):
    """Concat with lengths == [rnn forward, rnn reverse within each length] (PyTorch layout)."""
    mod = cells.get(kind)
    k1, k2 = jax.random.split(jax.random.key(0))
    p = BiParams(mod.init(k1, D, H, dtype=jnp.float64), mod.init(k2, D, H, dtype=jnp.float64))
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    ys, (cf, cb) = bidirectional(mod.cell, p, xs, lengths=LENGTHS, return_state=True)
    cf_ref, yf = rnn(mod.cell, p.forward, xs, lengths=LENGTHS)
    cb_ref, yb = rnn(mod.cell, p.backward, xs, lengths=LENGTHS, reverse=True)
    np.testing.assert_allclose(ys, jnp.concatenate([yf, yb], -1), atol=1e-13)
    for a, b in zip(jax.tree.leaves((cf, cb)), jax.tree.leaves((cf_ref, cb_ref)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-13)
    for mode, f in [("sum", jnp.add), ("mul", jnp.multiply), ("ave", lambda a, b: (a + b) / 2)]:
        np.testing.assert_allclose(
            bidirectional(mod.cell, p, xs, lengths=LENGTHS, merge_mode=mode), f(yf, yb), atol=1e-13
        )
    y_pair = bidirectional(mod.cell, p, xs, lengths=LENGTHS, merge_mode=None)
    np.testing.assert_allclose(y_pair[1], yb, atol=1e-13)
    with pytest.raises(ValueError, match=r"merge_mode must be one of \(.*'concat'.*\); got 'max'"):
        bidirectional(mod.cell, p, xs, merge_mode="max")


def test_stack_mixed_cells_matches_composition_and_dropout():
    ks = jax.random.split(jax.random.key(0), 4)
    f64 = dict(dtype=jnp.float64)
    params = [
        cells.gru.init(ks[0], D, H, **f64),
        BiParams(cells.lstm.init(ks[1], H, H, **f64), cells.lstm.init(ks[2], H, H, **f64)),
        cells.simple.init(ks[3], 2 * H, H, **f64),
    ]
    cell_list = [cells.gru.cell, cells.lstm.cell, cells.simple.cell]
    xs = jax.random.normal(jax.random.key(9), (B, T, D), jnp.float64)
    key = jax.random.key(3)

    def drop_ref(k, h):  # layer k, step t: kept with p 0.5 by fold_in(fold_in(key, k), t)
        steps = []
        for t in range(h.shape[1]):
            keep = jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(key, k), t), 0.5,
                                        (h.shape[0], h.shape[2]))  # fmt: skip
            steps.append(h[:, t] * keep * 2.0)
        return jnp.stack(steps, axis=1)

    def manual(drop):
        c0, h = rnn(cells.gru.cell, params[0], xs, lengths=LENGTHS)
        if drop:
            h = drop_ref(0, h)
        cf, hf = rnn(cells.lstm.cell, params[1].forward, h, lengths=LENGTHS)
        cb, hb = rnn(cells.lstm.cell, params[1].backward, h, lengths=LENGTHS, reverse=True)
        h = jnp.concatenate([hf, hb], -1)
        if drop:
            h = drop_ref(1, h)
        c2, h = rnn(cells.simple.cell, params[2], h, lengths=LENGTHS)
        return [c0, (cf, cb), c2], h

    for drop in (False, True):
        ref_finals, ref_ys = jax.jit(manual, static_argnums=0)(drop)
        for b in ("scan", "xla"):
            finals, ys = jax.jit(
                lambda p, xs, drop=drop, b=b: stack(
                    cell_list, p, xs, lengths=LENGTHS, dropout=0.5, key=key,
                    deterministic=not drop, backend=b,
                )
            )(params, xs)  # fmt: skip
            np.testing.assert_allclose(ys, ref_ys, atol=1e-12)
            for a, b in zip(jax.tree.leaves(finals), jax.tree.leaves(ref_finals), strict=True):
                np.testing.assert_allclose(a, b, atol=1e-12)

    def loss(params, b):
        finals, ys = stack(
            cell_list, params, xs, lengths=LENGTHS, dropout=0.5, key=key, deterministic=False,
            backend=b,
        )  # fmt: skip
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(finals))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_fast, g_plain = grad(params, "xla"), grad(params, "scan")
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_torch_state_layout():
    ks = jax.random.split(jax.random.key(0), 4)
    params = [
        BiParams(cells.lstm.init(ks[0], D, H), cells.lstm.init(ks[1], D, H)),
        BiParams(cells.lstm.init(ks[2], 2 * H, H), cells.lstm.init(ks[3], 2 * H, H)),
    ]
    finals, ys = stack(cells.lstm.cell, params, jnp.ones((B, T, D), jnp.float32))
    h_n, c_n = torch_state(finals)
    assert h_n.shape == c_n.shape == (4, B, H) and ys.shape == (B, T, 2 * H)
    np.testing.assert_array_equal(h_n[3], finals[1][1].h)  # layer 1, backward
    np.testing.assert_array_equal(ys[:, -1, :H], finals[1][0].h)  # forward ends at T - 1
    np.testing.assert_array_equal(ys[:, 0, H:], finals[1][1].h)  # backward ends at 0


def test_bad_input_is_reported():
    cell, p, xs = _setup("lstm")
    with pytest.raises(
        ValueError, match=r"mask must have shape \[B, T\] = \[3, 6\]; got shape \(3, 5\)"
    ):
        recurrent(cell, p, xs, mask=MASK[:, :5])
    with pytest.raises(ValueError, match="pass mask or lengths, not both"):
        recurrent(cell, p, xs, mask=MASK, lengths=LENGTHS)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=6\]; got values in \[1, 7\]"):
        recurrent(cell, p, xs, lengths=np.array([7, 1, 1]))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\].*got shape \(3, 3\)"):
        recurrent(cell, p, xs[..., :3])
    with pytest.raises(ValueError, match="got 2 cells for 3 layers"):
        stack([cell, cell], [p, p, p], xs)
    with pytest.raises(
        ValueError, match="recurrent dropout needs a cell that takes h_mask .*'<lambda>' does not"
    ):
        with_masks(
            lambda p, c, x: (c, c),
            rnn_dropout_masks(
                jax.random.key(0), cell, D, H, (B,), recurrent_dropout=0.5, per_gate=False
            ),
        )
