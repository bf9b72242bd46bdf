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
