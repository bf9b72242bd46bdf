"""The fast path (jaxrnn.fast) against the plain path (jaxrnn.rnn / jaxrnn.models), float64.

Outputs and gradients of every fast kernel must equal those of the plain
``lax.scan`` + autodiff formulation to rounding (1e-12), and both agree with the
NumPy reference for the seed model.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, fast, models, reference, rnn

TOL = dict(rtol=1e-10, atol=1e-12)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


def _init(name, key, D, H, **kw):
    mod = cells.get(name)
    p = mod.init(key, D, H, dtype=jnp.float64, **kw)
    if p.b is not None:  # non-zero biases so that their gradients are exercised
        p = dataclasses.replace(p, b=jax.random.normal(jax.random.key(7), p.b.shape, jnp.float64))
    return mod, p


def _inputs(name, kw, key, B, T, D, H, time_major):
    """A cell's params, ``xs`` (``[B, T, D]`` or time-major) and a random initial carry, float64."""
    mod, p = _init(name, key, D, H, **kw)
    shape = (T, B, D) if time_major else (B, T, D)
    xs = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    h0 = jax.tree.map(
        lambda a: 0.5 * jax.random.normal(jax.random.key(2), a.shape, a.dtype),
        mod.initial_carry(p, (B,)),
    )
    return mod, p, xs, h0


def _weighted(carry, ys):
    """A loss that weights every output and every carry leaf differently."""
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))


CASES = [
    ("simple", {}),
    ("simple", {"activation": "relu"}),
    ("simple", {"activation": "sigmoid"}),
    ("simple", {"activation": "identity", "use_bias": False}),
    ("lstm", {}),
    ("gru", {}),
    ("gru", {"use_bias": False}),
]


@pytest.mark.parametrize(
    "name,kw,T,unroll,time_major",
    [
        (*CASES[0], 12, 4, False),
        (*CASES[0], 7, 8, True),  # unroll not a divisor of T
        (*CASES[1], 6, 1, True),
        (*CASES[2], 12, 3, False),
        (*CASES[3], 5, 5, False),
        (*CASES[4], 7, 8, True),
        (*CASES[5], 12, 4, False),
        (*CASES[6], 6, 3, True),
    ],
)
def test_rnn_outputs_and_grads_equal_plain(name, kw, T, unroll, time_major, key):
    mod, p, xs, h0 = _inputs(name, kw, key, 3, T, 5, 6, time_major)

    def loss(run, p, xs, h0):
        return _weighted(*run(mod.cell, p, xs, h0, time_major=time_major, unroll=unroll))

    run_fast = functools.partial(fast.rnn, kernels=fast.ALL_KERNELS)  # GRU kernel included
    out_fast = run_fast(mod.cell, p, xs, h0, time_major=time_major, unroll=unroll)
    out_plain = rnn(mod.cell, p, xs, h0, time_major=time_major)
    _close(out_fast, out_plain)
    g_fast = jax.grad(lambda *a: loss(run_fast, *a), argnums=(0, 1, 2))(p, xs, h0)
    g_plain = jax.grad(lambda *a: loss(rnn, *a), argnums=(0, 1, 2))(p, xs, h0)
    _close(g_fast, g_plain)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("T", [0, 1, 2])
def test_short_sequences_equal_plain(name, T, key):
    """T = 0 (falls back), 1 (the backward loop runs no step after the peeled one), 2."""
    B, D, H = 2, 3, 4
    mod, p = _init(name, key, D, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    run_fast = functools.partial(fast.rnn, kernels=fast.ALL_KERNELS)
    _close(run_fast(mod.cell, p, xs), rnn(mod.cell, p, xs))

    def loss(p, xs, run, last_only):
        carry, ys = run(mod.cell, p, xs)
        out = sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))
        return out if last_only else out + jnp.sum(ys * ys)

    for last_only in (True, False):
        g_fast = jax.grad(loss, argnums=(0, 1))(p, xs, run_fast, last_only)
        g_plain = jax.grad(loss, argnums=(0, 1))(p, xs, rnn, last_only)
        _close(g_fast, g_plain)


def test_fast_kernels_are_used():
    assert (
        fast._supported(cells.simple.cell, cells.simple.init(jax.random.key(0), 2, 3)) == "simple"
    )
    assert fast._supported(cells.lstm.cell, cells.lstm.init(jax.random.key(0), 2, 3)) == "lstm"
    assert fast._supported(cells.gru.cell, cells.gru.init(jax.random.key(0), 2, 3)) == "gru"
    gru_p = cells.gru.init(jax.random.key(0), 2, 3)
    assert fast._supported(cells.gru.cell, gru_p, fast.KERNELS) == "gru"  # auto: every kernel
    wide = cells.gru.init(jax.random.key(0), 2, 300)
    assert fast._supported(cells.gru.cell, wide, fast.KERNELS) == "gru"
    assert fast._supported(cells.gru.cell, wide, fast.ALL_KERNELS) == "gru"
    assert fast._supported(cells.gru.cell, gru_p, {"simple"}) is None
    with pytest.raises(ValueError, match="kernels must be 'auto' or a set"):
        fast._supported(cells.gru.cell, gru_p, "all")
    p = cells.gru.init(jax.random.key(0), 2, 3, reset_after=False)
    assert fast._supported(cells.gru.cell, p) is None  # -> plain path
    p = cells.lstm.init(jax.random.key(0), 2, 3, activation="relu")
    assert fast._supported(cells.lstm.cell, p) is None


@pytest.mark.parametrize("kw", [{"reset_after": False}])
def test_gru_reset_before_falls_back(kw, key):
    p = cells.gru.init(key, 3, 4, dtype=jnp.float64, **kw)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64)
    _close(fast.rnn(cells.gru.cell, p, xs), rnn(cells.gru.cell, p, xs))


def test_fast_rnn_default_h0_and_jit(key):
    p = cells.simple.init(key, 4, 5, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (2, 9, 4), jnp.float64)
    _close(
        jax.jit(lambda p, x: fast.rnn(cells.simple.cell, p, x))(p, xs),
        rnn(cells.simple.cell, p, xs),
    )


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[1], CASES[4], CASES[5]])
@pytest.mark.parametrize("lengths,reverse", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("time_major", [False, True])
def test_rnn_lengths_and_reverse_equal_plain(name, kw, lengths, reverse, time_major, key):
    """``lengths`` / ``reverse`` on the fast loops (no fallback): outputs, final carry and
    gradients equal the plain path's (lengths 0 and T included; also with ``lengths`` a
    traced argument under jit)."""
    T = 9
    mod, p, xs, h0 = _inputs(name, kw, key, 4, T, 5, 6, time_major)
    opts = dict(time_major=time_major, reverse=reverse)
    lens = jnp.array([T, 0, 3, 6]) if lengths else None

    def loss(run, p, xs, h0, lens):
        return _weighted(*run(mod.cell, p, xs, h0, lengths=lens, **opts))

    run_fast = functools.partial(fast.rnn, kernels=fast.ALL_KERNELS)
    jaxpr = str(
        jax.make_jaxpr(lambda p, x: run_fast(mod.cell, p, x, h0, lengths=lens, **opts))(p, xs)
    )
    assert "custom_vjp_call" in jaxpr  # the fast loops, not the plain scan
    out_fast = jax.jit(lambda p, x, n: run_fast(mod.cell, p, x, h0, lengths=n, **opts))(p, xs, lens)
    out_plain = rnn(mod.cell, p, xs, h0, lengths=lens, **opts)
    _close(out_fast, out_plain)
    g_fast = jax.grad(lambda *a: loss(run_fast, *a), argnums=(0, 1, 2))(p, xs, h0, lens)
    g_plain = jax.grad(lambda *a: loss(rnn, *a), argnums=(0, 1, 2))(p, xs, h0, lens)
    _close(g_fast, g_plain)
    # the options matter: without them the numbers differ
    plain_without = rnn(mod.cell, p, xs, h0, time_major=time_major)
    assert not np.allclose(jax.tree.leaves(out_plain)[0], jax.tree.leaves(plain_without)[0])


def test_rnn_bad_lengths_are_reported(key):
    p = cells.lstm.init(key, 4, 5)
    xs = jnp.ones((2, 9, 4), jnp.float32)
    with pytest.raises(
        ValueError, match=r"lengths must have shape \[B\] = \[2\]; got shape \(3,\)"
    ):
        fast.rnn(cells.lstm.cell, p, xs, lengths=jnp.array([1, 2, 3]))
    with pytest.raises(
        ValueError, match=r"lengths must lie in \[0, T=9\]; got values in \[1, 10\]"
    ):
        fast.rnn(cells.lstm.cell, p, xs, lengths=jnp.array([1, 10]))
    with pytest.raises(TypeError, match="lengths must have an integer dtype; got float"):
        fast.rnn(cells.lstm.cell, p, xs, lengths=jnp.array([1.0, 2.0]))


@pytest.mark.parametrize("last_only,with_cells", [(True, False), (False, False), (False, True)])
def test_lstm_scan_outputs_and_grads_equal_autodiff(last_only, with_cells, key):
    """lstm_scan's hand-written BPTT (XLA loops, float64) against autodiff of a lax.scan over
    the library's LSTM cell (W_x = I, so x_t W_x + b = U_t), with cotangents on every output:
    the final carry, every h_t and, with ``with_cells``, every c_t."""
    T, B, H = 7, 3, 4
    p = cells.lstm.init(key, 4 * H, H, dtype=jnp.float64)
    p = dataclasses.replace(
        p, W_x=jnp.eye(4 * H, dtype=jnp.float64), b=jnp.zeros(4 * H, jnp.float64)
    )
    ks = jax.random.split(jax.random.key(3), 3)
    U = jax.random.normal(ks[0], (T, B, 4 * H), jnp.float64)
    h0, c0 = 0.5 * jax.random.normal(ks[1], (2, B, H), jnp.float64)
    w = jnp.cos(jnp.arange(2 * T * B * H, dtype=jnp.float64)).reshape(2, T, B, H)

    def reference(U, W_h, h0, c0):
        q = dataclasses.replace(p, W_h=W_h)
        (h_T, c_T), (hs, cs) = jax.lax.scan(
            lambda c, u: (cells.lstm.cell(q, c, u)[0], tuple(cells.lstm.cell(q, c, u)[0])),
            cells.lstm.LSTMCarry(h0, c0), U,
        )  # fmt: skip
        if last_only:
            return h_T, c_T
        return (hs, (h_T, c_T), cs) if with_cells else (hs, (h_T, c_T))

    def loss(run, *args):
        out = run(*args)
        final = out if last_only else out[1]
        total = jnp.sum(jnp.sin(final[0])) + jnp.sum(jnp.cos(final[1]))
        if not last_only:
            total = total + jnp.sum(out[0] * w[0])
        if with_cells:
            total = total + jnp.sum(out[2] * w[1])
        return total

    def run_fast(*args):
        return fast.lstm_scan(*args, None, 1, last_only, with_cells)

    args = (U, p.W_h, h0, c0)
    _close(run_fast(*args), reference(*args))
    _close(
        jax.grad(lambda *a: loss(run_fast, *a), argnums=(0, 1, 2, 3))(*args),
        jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2, 3))(*args),
    )


def test_fast_rnn_reports_bad_width_like_plain(key):
    p = cells.simple.init(key, 4, 5, dtype=jnp.float64)
    with pytest.raises(ValueError, match="4"):
        fast.rnn(cells.simple.cell, p, jnp.ones((2, 9, 3), jnp.float64))


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
def test_classifier_loss_and_grads_equal_plain(cell_name, key):
    cfg = models.ClassifierConfig(vocab_size=40, embed_dim=4, hidden_size=6, cell=cell_name)
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    if params["rnn"].b is not None:  # non-zero biases
        b = jax.random.normal(jax.random.key(7), params["rnn"].b.shape, jnp.float64)
        params["rnn"] = dataclasses.replace(params["rnn"], b=b)
    tokens = jax.random.randint(jax.random.key(1), (5, 11), 0, 40)  # repeated words included
    labels = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])
    kw = dict(kernels=fast.ALL_KERNELS)
    l_fast, g_fast = jax.value_and_grad(
        lambda p: fast.classifier_loss(cfg, p, tokens, labels, **kw)
    )(params)
    l_plain, g_plain = jax.value_and_grad(lambda p: models.classifier_loss(cfg, p, tokens, labels))(
        params
    )
    _close((l_fast, g_fast), (l_plain, g_plain))
    _close(
        fast.classifier_logits(cfg, params, tokens), models.classifier_logits(cfg, params, tokens)
    )
    few = tokens[:1, :5]  # B T < V: the projected-rows branch
    g_fast = jax.grad(lambda p: fast.classifier_loss(cfg, p, few, labels[:1], **kw))(params)
    g_plain = jax.grad(lambda p: models.classifier_loss(cfg, p, few, labels[:1]))(params)
    _close(g_fast, g_plain)


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("B,T", [(40, 1), (20, 2), (1, 1)])
def test_classifier_short_sequences_equal_plain(cell_name, B, T, key):
    """The last-state-only kernels (table and projected-rows branches) at T = 1, 2."""
    cfg = models.ClassifierConfig(vocab_size=30, embed_dim=3, hidden_size=4, cell=cell_name)
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, 30)
    labels = (jnp.arange(B) % 2).astype(jnp.float64)
    kw = dict(kernels=fast.ALL_KERNELS)
    _close(
        jax.value_and_grad(lambda p: fast.classifier_loss(cfg, p, tokens, labels, **kw))(params),
        jax.value_and_grad(lambda p: models.classifier_loss(cfg, p, tokens, labels))(params),
    )


def test_classifier_grads_equal_numpy_reference(key):
    cfg = models.ClassifierConfig(vocab_size=30, embed_dim=3, hidden_size=4)
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (3, 8), 0, 30))
    labels = np.array([1.0, 0.0, 1.0])
    loss, grads = jax.value_and_grad(lambda p: fast.classifier_loss(cfg, p, tokens, labels))(params)
    ref_loss, cache = reference.seed_forward(params, tokens, labels)
    ref = reference.seed_backward(params, cache)
    np.testing.assert_allclose(float(loss), ref_loss, **TOL)
    for k in ("embedding", "W_o", "b_o"):
        np.testing.assert_allclose(np.asarray(grads[k]), ref[k], **TOL)
    for k in ("W_x", "W_h", "b"):
        np.testing.assert_allclose(np.asarray(getattr(grads["rnn"], k)), ref["rnn"][k], **TOL)


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize(
    "lengths, dropout",
    [([11, 0, 1, 7, 11], False), (None, True), ([11, 0, 1, 7, 11], True)],
    ids=["lengths", "dropout", "lengths-dropout"],
)
@pytest.mark.parametrize("B", [5, 1], ids=["table", "rows"])
def test_classifier_lengths_and_dropout_equal_plain(cell_name, lengths, dropout, B, key):
    """Post-padded reviews (``lengths``, incl. 0 and T) and input dropout (the plain model's
    masks from the same key) on the fast path: loss and every gradient equal the plain
    model's, on both the projected-table and the projected-rows branch."""
    cfg = models.ClassifierConfig(
        vocab_size=40 if B > 1 else 50, embed_dim=4, hidden_size=6, cell=cell_name,
        dropout=0.5 if dropout else 0.0,
    )  # fmt: skip
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    if params["rnn"].b is not None:  # non-zero biases
        b = jax.random.normal(jax.random.key(7), params["rnn"].b.shape, jnp.float64)
        params["rnn"] = dataclasses.replace(params["rnn"], b=b)
    tokens = jax.random.randint(jax.random.key(1), (B, 11), 0, 40)
    labels = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])[:B]
    lens = None if lengths is None else jnp.array(lengths[:B] if B > 1 else [7])
    k = jax.random.key(3) if dropout else None
    kw = dict(kernels=fast.ALL_KERNELS)
    fast_loss = lambda p: fast.classifier_loss(cfg, p, tokens, labels, lens, key=k, **kw)  # noqa: E731
    plain_loss = lambda p: models.classifier_loss(cfg, p, tokens, labels, lens, key=k)  # noqa: E731
    got, want = jax.value_and_grad(fast_loss)(params), jax.value_and_grad(plain_loss)(params)
    _close(got, want)
    # under jit (closed-over lengths are checked with numpy, as before jit)
    _close(jax.jit(jax.value_and_grad(fast_loss))(params), want)
    _close(jax.jit(jax.value_and_grad(plain_loss))(params), want)
    if lengths is not None:  # the lengths matter: all-T lengths give other logits
        full = fast.classifier_logits(cfg, params, tokens, jnp.full((B,), 11), key=k, **kw)
        assert not np.allclose(full, fast.classifier_logits(cfg, params, tokens, lens, key=k))
    if dropout:  # the masks matter
        assert not np.allclose(
            fast.classifier_logits(cfg, params, tokens, lens, key=k),
            fast.classifier_logits(cfg, params, tokens, lens),
        )
    # the fast loop is what runs (no plain scan over the cell: one while loop, in the kernel)
    assert "custom_vjp_call" in str(jax.make_jaxpr(fast_loss)(params))


def test_classifier_recurrent_dropout_falls_back(key):
    cfg = models.ClassifierConfig(
        vocab_size=20, embed_dim=3, hidden_size=4, cell="lstm", dropout=0.3, recurrent_dropout=0.2
    )
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 20)
    k = jax.random.key(3)  # a mask inside the recurrence: the plain model, same masks
    dropped = fast.classifier_logits(cfg, params, tokens, jnp.array([6, 2]), key=k)
    _close(dropped, models.classifier_logits(cfg, params, tokens, jnp.array([6, 2]), key=k))
    assert "custom_vjp_call" not in str(
        jax.make_jaxpr(lambda p: fast.classifier_logits(cfg, p, tokens, key=k))(params)
    )


@pytest.mark.parametrize(
    "lengths, err, match",
    [
        (jnp.array([3.0, 2.0]), TypeError, "integer dtype"),
        (jnp.array([3, 2, 1]), ValueError, r"shape \[B\] = \[2\]"),
        (jnp.array([3, 7]), ValueError, r"\[0, T=6\]; got values in \[3, 7\]"),
    ],
)
def test_classifier_bad_lengths_are_reported(lengths, err, match, key):
    cfg = models.ClassifierConfig(vocab_size=20, embed_dim=3, hidden_size=4)
    params = models.init_classifier(key, cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 20)
    with pytest.raises(err, match=match):
        fast.classifier_logits(cfg, params, tokens, lengths)
