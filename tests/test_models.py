"""The classifier with Keras-style dropout: against a NumPy loop that applies the same masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, models
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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
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


@pytest.mark.parametrize("fast", [False, True])
def test_char_lm_layers_and_dropout_equal_numpy_loop(fast):
    """Two stacked layers with char-rnn's dropout (between the layers and on the top layer's
    outputs; step t of layer k kept by fold_in(fold_in(key, k), t)) == a NumPy loop given
    the same masks; without a key no dropout; the stack in remat segments gives the same."""
    from functools import partial

    from jaxrnn.stack import stack

    cfg = models.CharLMConfig(vocab_size=11, embed_dim=4, hidden_size=6, cell="simple",
                              num_layers=2, dropout=0.4)  # fmt: skip
    params = models.init_char_lm(jax.random.key(0), cfg, dtype=jnp.float64)
    assert [layer.W_x.shape for layer in params["rnn"]] == [(4, 6), (6, 6)]
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, 11)
    key = jax.random.key(2)

    def mask(k):  # [B, T, H] from per-step draws
        per_step = [jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(key, k), t), 0.6,
                                         (3, 6)) for t in range(9)]  # fmt: skip
        return np.stack([np.asarray(m) / 0.6 for m in per_step], 1)

    run = partial(stack, fast=fast)
    _, z = models.char_lm_logits(cfg, params, tokens, rnn_fn=run, key=key)
    np.testing.assert_allclose(z, _numpy_char_lm(params, tokens, [mask(0), mask(1)]), atol=1e-12)
    _, z_seg = models.char_lm_logits(cfg, params, tokens, rnn_fn=partial(run, remat=4), key=key)
    np.testing.assert_allclose(z_seg, z, atol=1e-12)
    carry, z_eval = models.char_lm_logits(cfg, params, tokens, rnn_fn=run)
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
