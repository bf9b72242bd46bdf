"""The from-scratch NumPy reference against JAX: forward, hand-derived BPTT, finite differences.

All in float64. The hand-written backward pass and ``jax.grad`` are two independent
routes to the same numbers, and central finite differences check both.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import models, reference

V, E, H = 20, 6, 8


def _setup(B, T, activation="tanh", use_bias=True, seed=0):
    cfg = models.ClassifierConfig(
        vocab_size=V,
        embed_dim=E,
        hidden_size=H,
        cell_options=(("activation", activation), ("use_bias", use_bias)),
    )
    params = models.init_classifier(jax.random.key(seed), cfg, dtype=jnp.float64)
    # Non-zero biases so their gradients are exercised from a generic point.
    params["b_o"] = jnp.array([0.3])
    if use_bias:
        params["rnn"] = params["rnn"].__class__(
            params["rnn"].W_x, params["rnn"].W_h, jnp.linspace(-0.5, 0.5, H), activation
        )
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=(B, T))  # repeated words: the scatter-add matters
    labels = rng.integers(0, 2, size=B)
    return cfg, params, tokens, labels


def _flat_rnn_grads(g):
    """{'W_x', 'W_h', 'b'} from a SimpleParams (jax.grad) or a dict (reference)."""
    if isinstance(g, dict):
        return g
    return {"W_x": g.W_x, "W_h": g.W_h, "b": g.b}


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_numpy_forward_equals_jax(activation, use_bias):
    cfg, params, tokens, labels = _setup(B=5, T=12, activation=activation, use_bias=use_bias)
    loss_np, cache = reference.seed_forward(params, tokens, labels)
    loss_jax = models.classifier_loss(cfg, params, jnp.asarray(tokens), jnp.asarray(labels))
    np.testing.assert_allclose(loss_np, float(loss_jax), rtol=1e-13)
    # The whole hidden trajectory too, against the JAX layer.
    from jaxrnn import cells, rnn

    xs = jnp.take(params["embedding"], jnp.asarray(tokens), axis=0)
    _, hs = rnn(cells.simple.cell, params["rnn"], xs)
    np.testing.assert_allclose(
        cache["hs"][1:], np.swapaxes(np.asarray(hs), 0, 1), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_hand_bptt_equals_jax_grad(activation, use_bias):
    cfg, params, tokens, labels = _setup(B=6, T=30, activation=activation, use_bias=use_bias)
    _, cache = reference.seed_forward(params, tokens, labels)
    hand = reference.seed_backward(params, cache)
    auto = jax.grad(models.classifier_loss, argnums=1)(
        cfg, params, jnp.asarray(tokens), jnp.asarray(labels)
    )

    def check(name, a, b):
        a, b = np.asarray(a), np.asarray(b)
        rel = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        assert rel < 1e-8, f"{name}: relative difference {rel:.3g}"
        assert np.abs(b).max() > 0, f"{name}: gradient is zero, the test would be vacuous"

    check("embedding", hand["embedding"], auto["embedding"])
    check("W_o", hand["W_o"], auto["W_o"])
    check("b_o", hand["b_o"], auto["b_o"])
    for k, v in _flat_rnn_grads(auto["rnn"]).items():
        if v is None:
            assert hand["rnn"][k] is None
        else:
            check(f"rnn.{k}", hand["rnn"][k], v)


def test_both_gradients_equal_central_finite_differences():
    """On a tiny case, every parameter entry is perturbed: (L(w+e) - L(w-e)) / 2e."""
    cfg, params, tokens, labels = _setup(B=3, T=5)
    _, cache = reference.seed_forward(params, tokens, labels)
    hand = reference.seed_backward(params, cache)
    auto = jax.grad(models.classifier_loss, argnums=1)(
        cfg, params, jnp.asarray(tokens), jnp.asarray(labels)
    )

    np_params = {
        "embedding": np.array(params["embedding"]),
        "rnn": {k: np.array(v) for k, v in _flat_rnn_grads(params["rnn"]).items()},
        "W_o": np.array(params["W_o"]),
        "b_o": np.array(params["b_o"]),
    }
    eps = 1e-6

    def fd(get):
        arr = get(np_params)
        out = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = reference.seed_loss(np_params, tokens, labels)
            arr[idx] = old - eps
            down = reference.seed_loss(np_params, tokens, labels)
            arr[idx] = old
            out[idx] = (up - down) / (2 * eps)
        return out

    cases = {
        "embedding": (lambda p: p["embedding"], hand["embedding"], auto["embedding"]),
        "W_x": (lambda p: p["rnn"]["W_x"], hand["rnn"]["W_x"], auto["rnn"].W_x),
        "W_h": (lambda p: p["rnn"]["W_h"], hand["rnn"]["W_h"], auto["rnn"].W_h),
        "b": (lambda p: p["rnn"]["b"], hand["rnn"]["b"], auto["rnn"].b),
        "W_o": (lambda p: p["W_o"], hand["W_o"], auto["W_o"]),
        "b_o": (lambda p: p["b_o"], hand["b_o"], auto["b_o"]),
    }
    for name, (get, g_hand, g_auto) in cases.items():
        numeric = fd(get)
        scale = np.abs(numeric).max()
        assert scale > 1e-6, name
        np.testing.assert_allclose(
            g_hand, numeric, atol=1e-8 * max(scale, 1), rtol=1e-6, err_msg=name
        )
        np.testing.assert_allclose(
            np.asarray(g_auto), numeric, atol=1e-8 * max(scale, 1), rtol=1e-6, err_msg=name
        )


def test_reference_layer_matches_seed_question():
    """(250, 32) with 100 units -> (100,): the doctest's shapes, and h_T is the last row of hs."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(250, 32))
    h_T, hs = reference.simple_rnn_forward(
        xs, rng.normal(size=(32, 100)) * 0.1, np.eye(100) * 0.5, np.zeros(100)
    )
    assert h_T.shape == (100,) and hs.shape == (250, 100)
    np.testing.assert_array_equal(h_T, hs[-1])
