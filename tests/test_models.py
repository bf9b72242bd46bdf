"""The models: the seed classifier on every backend (against ``scan`` and the NumPy reference
with its hand-derived BPTT), Keras-style dropout and the character LM against NumPy loops
that apply the same masks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_path, assert_trees_close, backend_dtype, backend_tol

from jaxrnn import cells, models, reference
from jaxrnn.dropout import rnn_dropout_masks


def _numpy_logits(params, tokens, lengths, mx, mh):
    """Embedding -> h_t = tanh((x_t * mx) @ W_x + (h_{t-1} * mh) @ W_h + b) -> dense, in NumPy.

    tokens [B, T], lengths [B], mx [B, E], mh [B, H]; steps t >= lengths[b] keep h.
    """
    p = jax.tree.map(np.asarray, params)
    xs = p["embedding"][np.asarray(tokens)]  # [B, T, E]
    B, T, _ = xs.shape
    h = np.zeros((B, p["rnn"].W_h.shape[0]))
    for t in range(T):
        h_new = np.tanh((xs[:, t] * mx) @ p["rnn"].W_x + (h * mh) @ p["rnn"].W_h + p["rnn"].b)
        h = np.where((t < np.asarray(lengths))[:, None], h_new, h)
    return (h @ p["W_o"] + p["b_o"])[:, 0]


@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.0, 0.4), (0.25, 0.5)])
def test_dropout_equals_numpy_loop_with_the_same_masks(rates):
    dropout, recurrent_dropout = rates
    cfg = models.ClassifierConfig(
        vocab_size=20,
        embed_dim=5,
        hidden_size=6,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
    )
    params = models.init_classifier(jax.random.key(0), cfg, dtype=jnp.float64)
    tokens = jax.random.randint(jax.random.key(1), (4, 7), 0, 20)
    lengths = jnp.array([7, 3, 5, 1])
    key = jax.random.key(2)

    got = models.classifier_logits(cfg, params, tokens, lengths, key=key)
    masks = rnn_dropout_masks(
        key,
        cells.simple.cell,
        5,
        6,
        (4,),
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        dtype=jnp.float64,
    )
    mx = np.ones((4, 5)) if masks.x is None else np.asarray(masks.x)
    mh = np.ones((4, 6)) if masks.h is None else np.asarray(masks.h)
    # inverted dropout: kept entries are 1 / (1 - rate); at least one entry is dropped here
    if dropout:
        assert set(np.unique(mx)) == {0.0, 1 / (1 - dropout)}
    if recurrent_dropout:
        assert set(np.unique(mh)) == {0.0, 1 / (1 - recurrent_dropout)}
    np.testing.assert_allclose(got, _numpy_logits(params, tokens, lengths, mx, mh), rtol=1e-12)

    # without a key (evaluation) there is no dropout: the plain model's logits
    plain = _numpy_logits(params, tokens, lengths, np.ones((4, 5)), np.ones((4, 6)))
    np.testing.assert_allclose(
        models.classifier_logits(cfg, params, tokens, lengths), plain, rtol=1e-12
    )
    assert np.max(np.abs(np.asarray(got) - plain)) > 1e-3  # dropout did change the numbers


# the GRU case in the slow tier: the LSTM case covers the masks in the default one (~20 s each)
@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_gated_dropout_is_per_sequence_and_differentiable(cell):
    cfg = models.ClassifierConfig(
        vocab_size=20, embed_dim=5, hidden_size=6, cell=cell, dropout=0.2, recurrent_dropout=0.3
    )
    params = models.init_classifier(jax.random.key(0), cfg, dtype=jnp.float64)
    tokens = jax.random.randint(jax.random.key(1), (3, 6), 0, 20)
    labels = jnp.array([0, 1, 1])
    loss = jax.jit(models.classifier_loss, static_argnums=0)
    a = loss(cfg, params, tokens, labels, key=jax.random.key(5))
    b = loss(cfg, params, tokens, labels, key=jax.random.key(5))
    c = loss(cfg, params, tokens, labels, key=jax.random.key(6))
    assert a == b and a != c  # same key, same masks; another key, other masks
    grads = jax.grad(models.classifier_loss, argnums=1)(
        cfg, params, tokens, labels, key=jax.random.key(5)
    )
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(g))
    # the gradient through the masks: an embedding entry against a central finite difference
    # of the loss with the same masks (same key)
    eps, e, w = 1e-6, params["embedding"], int(tokens[0, 0])

    def at(delta):
        return loss(
            cfg,
            {**params, "embedding": e.at[w, 0].add(delta)},
            tokens,
            labels,
            key=jax.random.key(5),
        )

    fd = (at(eps) - at(-eps)) / (2 * eps)
    np.testing.assert_allclose(grads["embedding"][w, 0], fd, rtol=1e-6, atol=1e-10)


def _numpy_char_lm(params, tokens, masks):
    """Embedding -> L simple (tanh) layers -> dense, in NumPy; ``masks[k]`` ``[B, T, H]``
    multiplies layer k's outputs (None: no dropout there)."""
    p = jax.tree.map(np.asarray, params)
    h_seq = p["embedding"][np.asarray(tokens)]  # [B, T, E]
    B, T, _ = h_seq.shape
    for k, layer in enumerate(p["rnn"]):
        h = np.zeros((B, layer.W_h.shape[0]))
        outs = []
        for t in range(T):
            h = np.tanh(h_seq[:, t] @ layer.W_x + h @ layer.W_h + layer.b)
            outs.append(h)
        h_seq = np.stack(outs, 1)  # [B, T, H]
        if masks[k] is not None:
            h_seq = h_seq * masks[k]
    return h_seq @ p["W_o"] + p["b_o"]  # [B, T, V]


# scan in the slow tier: "auto", what users run, covers the default one (~20 s each)
@pytest.mark.parametrize("backend", [pytest.param("scan", marks=pytest.mark.slow), "auto"])
def test_char_lm_layers_and_dropout_equal_numpy_loop(backend):
    """Two stacked layers with char-rnn's dropout (between the layers and on the top layer's
    outputs; step t of layer k kept by fold_in(fold_in(key, k), t)) == a NumPy loop given
    the same masks; without a key no dropout; the stack in remat segments gives the same."""
    cfg = models.CharLMConfig(vocab_size=11, embed_dim=4, hidden_size=6, cell="simple",
                              num_layers=2, dropout=0.4, backend=backend)  # fmt: skip
    params = models.init_char_lm(jax.random.key(0), cfg, dtype=jnp.float64)
    assert [layer.W_x.shape for layer in params["rnn"]] == [(4, 6), (6, 6)]
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, 11)
    key = jax.random.key(2)

    def mask(k):  # [B, T, H] from per-step draws
        per_step = [jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(key, k), t), 0.6,
                                         (3, 6)) for t in range(9)]  # fmt: skip
        return np.stack([np.asarray(m) / 0.6 for m in per_step], 1)

    _, z = models.char_lm_logits(cfg, params, tokens, key=key)
    np.testing.assert_allclose(z, _numpy_char_lm(params, tokens, [mask(0), mask(1)]), atol=1e-12)
    segmented = dataclasses.replace(cfg, remat=4)
    _, z_seg = models.char_lm_logits(segmented, params, tokens, key=key)
    np.testing.assert_allclose(z_seg, z, atol=1e-12)
    carry, z_eval = models.char_lm_logits(cfg, params, tokens)
    np.testing.assert_allclose(z_eval, _numpy_char_lm(params, tokens, [None, None]), atol=1e-12)
    assert len(carry) == 2 and carry[1].shape == (3, 6)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_char_lm_sample_continues_the_model(num_layers):
    """Greedy sampling (temperature -> 0) step by step through every layer picks, at each
    step, the argmax of the logits of the whole sequence so far."""
    cfg = models.CharLMConfig(vocab_size=7, embed_dim=3, hidden_size=5, cell="lstm",
                              num_layers=num_layers)  # fmt: skip
    params = models.init_char_lm(jax.random.key(3), cfg)
    params["W_o"] = params["W_o"] * 20.0  # distinct logits
    prompt = jnp.array([1, 4, 2])
    ids = models.char_lm_sample(cfg, params, prompt, 6, key=jax.random.key(0), temperature=1e-6)
    seq = jnp.concatenate([prompt, ids])
    _, z = models.char_lm_logits(cfg, params, seq[None, :-1])  # [1, 8, V]
    np.testing.assert_array_equal(ids, jnp.argmax(z[0, 2:], -1))
    with pytest.raises(ValueError, match="num_layers must be >= 1; got 0"):
        models.init_char_lm(jax.random.key(0), models.CharLMConfig(num_layers=0))


# --- the seed classifier on every backend ----------------------------------------------------


def _classifier(cell_name, backend, dtype, vocab=40, **kw):
    cfg = models.ClassifierConfig(
        vocab_size=vocab, embed_dim=4, hidden_size=6, cell=cell_name, backend=backend, **kw
    )
    params = models.init_classifier(jax.random.key(0), cfg, dtype=dtype)
    if params["rnn"].b is not None:  # non-zero biases, so their gradients are tested
        b = jax.random.normal(jax.random.key(7), params["rnn"].b.shape, dtype)
        params["rnn"] = dataclasses.replace(params["rnn"], b=b)
    return cfg, params


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize(
    "lengths, dropout",
    [(None, False), ([11, 0, 1, 7, 11], False), (None, True), ([11, 0, 1, 7, 11], True)],
    ids=["full", "lengths", "dropout", "lengths-dropout"],
)
@pytest.mark.parametrize("B", [5, 1], ids=["table", "rows"])
def test_classifier_on_every_backend_equals_scan(backend, cell_name, lengths, dropout, B):
    """Loss and every gradient of the seed classifier (the embedding folded into the input
    projection: the projected table, or the rows of a batch with fewer tokens than the
    vocabulary), with post-padded reviews (lengths incl. 0 and T) and input dropout (the
    same masks from the same key), equal ``scan``'s, eager and under ``jit``."""
    dtype = backend_dtype(backend)
    cfg, params = _classifier(cell_name, backend, dtype, vocab=40 if B > 1 else 50,
                              dropout=0.5 if dropout else 0.0)  # fmt: skip
    ref_cfg = dataclasses.replace(cfg, backend="scan")
    tokens = jax.random.randint(jax.random.key(1), (B, 11), 0, 40)
    labels = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])[:B]
    lens = None if lengths is None else jnp.array(lengths[:B] if B > 1 else [7])
    k = jax.random.key(3) if dropout else None

    def loss(cfg):
        return lambda p: models.classifier_loss(
            cfg, p, tokens, labels.astype(p["b_o"].dtype), lens, key=k
        )

    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    want = jax.value_and_grad(loss(ref_cfg))(p64)
    assert_trees_close(jax.value_and_grad(loss(cfg))(params), want, **backend_tol(backend))
    assert_trees_close(jax.jit(jax.value_and_grad(loss(cfg)))(params), want, **backend_tol(backend))
    assert_path(backend, jax.grad(loss(cfg)), params)
    if lengths is not None:  # the lengths matter: all-T lengths give other logits
        full = models.classifier_logits(cfg, params, tokens, jnp.full((B,), 11), key=k)
        assert not np.allclose(full, models.classifier_logits(cfg, params, tokens, lens, key=k))
    if dropout:  # the masks matter
        assert not np.allclose(
            models.classifier_logits(cfg, params, tokens, lens, key=k),
            models.classifier_logits(cfg, params, tokens, lens),
        )


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("B,T", [(40, 1), (20, 2), (1, 1)])
def test_classifier_short_sequences_equal_scan(backend, cell_name, B, T):
    """T = 1, 2 on the table and the projected-rows branches."""
    dtype = backend_dtype(backend)
    cfg, params = _classifier(cell_name, backend, dtype, vocab=30)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, 30)
    labels = (jnp.arange(B) % 2).astype(dtype)

    def f(cfg, p):
        return jax.value_and_grad(
            lambda p: models.classifier_loss(cfg, p, tokens, labels.astype(p["b_o"].dtype))
        )(p)

    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    want = f(dataclasses.replace(cfg, backend="scan"), p64)
    assert_trees_close(f(cfg, params), want, **backend_tol(backend))


def test_classifier_gradients_equal_the_numpy_reference():
    """The seed model's loss and gradients on the default backend against reference.py's
    hand-derived BPTT."""
    cfg = models.ClassifierConfig(vocab_size=30, embed_dim=3, hidden_size=4)
    params = models.init_classifier(jax.random.key(0), cfg, dtype=jnp.float64)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (3, 8), 0, 30))
    labels = np.array([1.0, 0.0, 1.0])
    loss, grads = jax.value_and_grad(lambda p: models.classifier_loss(cfg, p, tokens, labels))(
        params
    )
    ref_loss, cache = reference.seed_forward(params, tokens, labels)
    ref = reference.seed_backward(params, cache)
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(loss), ref_loss, **tol)
    for k in ("embedding", "W_o", "b_o"):
        np.testing.assert_allclose(np.asarray(grads[k]), ref[k], **tol)
    for k in ("W_x", "W_h", "b"):
        np.testing.assert_allclose(np.asarray(getattr(grads["rnn"], k)), ref["rnn"][k], **tol)


def test_classifier_with_recurrent_dropout_runs_scan_with_the_same_masks():
    cfg = models.ClassifierConfig(
        vocab_size=20, embed_dim=3, hidden_size=4, cell="lstm", dropout=0.3, recurrent_dropout=0.2
    )
    params = models.init_classifier(jax.random.key(0), cfg, dtype=jnp.float64)
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 20)
    k = jax.random.key(3)  # a mask inside the recurrence: the scan backend, same masks
    got = models.classifier_logits(cfg, params, tokens, jnp.array([6, 2]), key=k)
    scan = dataclasses.replace(cfg, backend="scan")
    assert_trees_close(got, models.classifier_logits(scan, params, tokens, jnp.array([6, 2]), key=k),
                       rtol=1e-12, atol=1e-12)  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"backend 'xla' cannot run this call: a recurrent dropout mask \(h_mask\) acts inside "
        r"the recurrence; use 'scan' or 'auto'",
    ):
        models.classifier_logits(dataclasses.replace(cfg, backend="xla"), params, tokens, key=k)


@pytest.mark.parametrize(
    "lengths, err, match",
    [
        (jnp.array([3.0, 2.0]), TypeError, "lengths must have an integer dtype; got float64"),
        (
            jnp.array([3, 2, 1]),
            ValueError,
            r"lengths must have shape \[2\] \(the batch shape\); got shape \[3\]",
        ),
        (jnp.array([3, 7]), ValueError, r"lengths must lie in \[0, T=6\]; got values in \[3, 7\]"),
    ],
)
def test_classifier_bad_lengths_are_reported(lengths, err, match):
    cfg = models.ClassifierConfig(vocab_size=20, embed_dim=3, hidden_size=4)
    params = models.init_classifier(jax.random.key(0), cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 20)
    with pytest.raises(err, match=match):
        models.classifier_logits(cfg, params, tokens, lengths)
