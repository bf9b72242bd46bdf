"""The simple cell: initializers equal to Keras's defaults, and one step against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells
from jaxrnn.reference import ACTIVATIONS

ACTS = ["tanh", "relu", "sigmoid", "identity"]


def test_init_shapes_and_keras_default_distributions(key):
    D, H = 300, 200
    p = cells.simple.init(key, D, H)
    assert (p.W_x.shape, p.W_h.shape, p.b.shape) == ((D, H), (H, H), (H,))
    assert p.W_x.dtype == jnp.float32 and p.activation == "tanh"
    # glorot_uniform: U(-a, a), a = sqrt(6 / (D + H)); its variance is a^2 / 3.
    a = np.sqrt(6.0 / (D + H))
    W_x = np.asarray(p.W_x, np.float64)
    assert np.abs(W_x).max() <= a
    np.testing.assert_allclose(W_x.var(), a**2 / 3, rtol=0.03)
    # orthogonal: W_h^T W_h = I.
    W_h = np.asarray(p.W_h, np.float64)
    np.testing.assert_allclose(W_h.T @ W_h, np.eye(H), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(p.b), np.zeros(H))


def test_irnn_identity_init_and_no_bias(key):
    p = cells.simple.init(key, 3, 5, "relu", recurrent_initializer="identity", use_bias=False)
    np.testing.assert_array_equal(np.asarray(p.W_h), np.eye(5))
    assert p.b is None and p.activation == "relu"
    assert len(jax.tree.leaves(p)) == 2  # the activation is static, not a leaf


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_cell_step_equals_numpy(key, activation, batch_shape):
    D, H = 4, 5
    p = cells.simple.init(
        key, D, H, activation, bias_initializer=jax.nn.initializers.normal(1.0), dtype=jnp.float64
    )
    kx, kh = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (*batch_shape, D), jnp.float64)
    h = jax.random.normal(kh, (*batch_shape, H), jnp.float64)
    h_new, y = cells.simple.cell(p, h, x)
    f, _ = ACTIVATIONS[activation]
    W_x, W_h, b = (np.asarray(a) for a in (p.W_x, p.W_h, p.b))
    expected = f(np.asarray(x) @ W_x + np.asarray(h) @ W_h + b)
    np.testing.assert_allclose(np.asarray(h_new), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h_new))


def test_callable_activation(key):
    p = cells.simple.init(key, 3, 4, activation=jnp.sin, dtype=jnp.float64)
    x, h = jnp.ones(3, jnp.float64), jnp.full(4, 0.5, jnp.float64)
    h_new, _ = cells.simple.cell(p, h, x)
    expected = np.sin(np.ones(3) @ np.asarray(p.W_x) + np.full(4, 0.5) @ np.asarray(p.W_h))
    np.testing.assert_allclose(np.asarray(h_new), expected, rtol=1e-12)


def test_initial_carry(key):
    p = cells.simple.init(key, 3, 7, dtype=jnp.float64)
    h0 = cells.simple.initial_carry(p, (2, 5))
    assert h0.shape == (2, 5, 7) and h0.dtype == jnp.float64 and not h0.any()


def test_registry():
    assert cells.get("simple") is cells.simple
    with pytest.raises(
        ValueError, match=r"unknown cell 'nope'; expected one of \[.*'lstm'.*'simple'\]"
    ):
        cells.get("nope")
