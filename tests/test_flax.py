"""The Flax modules wrap the pure cell: same numbers, parameters loaded both ways,
and Flax's own ``SimpleCell`` run by Flax's ``RNN`` agrees once its weights are mapped in."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrnn import cells, nn, rnn

B, T, D, H = 3, 9, 4, 6


def _xs(dtype=jnp.float64):
    return jax.random.normal(jax.random.key(7), (B, T, D), dtype)


def _pure(activation="tanh", dtype=jnp.float64):
    return cells.simple.init(
        jax.random.key(1),
        D,
        H,
        activation,
        dtype=dtype,
        bias_initializer=jax.nn.initializers.normal(1.0),
    )


def _same(a, b, rtol=0.0, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_nnx_module_equals_pure_function_both_ways(activation):
    pure = _pure(activation)
    xs = _xs()
    lengths = jnp.array([T, 4, 1])
    expected = rnn(cells.simple.cell, pure, xs, lengths=lengths, reverse=True)

    # pure -> module
    layer = nn.RNN.from_params("simple", pure)
    _same(layer(xs, lengths=lengths, reverse=True), expected)
    # module -> pure
    fresh = nn.RNN("simple", D, H, rngs=nnx.Rngs(3), activation=activation, dtype=jnp.float64)
    back = fresh.to_params()
    assert back.activation == activation
    _same(fresh(xs), rnn(cells.simple.cell, back, xs))
    # loading into an existing module replaces its weights
    fresh.load_params(pure)
    _same(fresh(xs, lengths=lengths, reverse=True), expected)
    _same(fresh.to_params(), pure)


def test_nnx_module_trains_under_nnx_jit_and_grad():
    layer = nn.RNN.from_params("simple", _pure())
    xs = _xs()

    def loss_module(m, xs):
        return jnp.sum(m(xs)[0] ** 2)

    g_mod = nnx.jit(nnx.grad(loss_module))(layer, xs)
    g_pure = jax.grad(lambda p: jnp.sum(rnn(cells.simple.cell, p, xs)[0] ** 2))(layer.to_params())
    np.testing.assert_allclose(g_mod["W_h"][...], g_pure.W_h, rtol=1e-12)
    np.testing.assert_allclose(g_mod["W_x"][...], g_pure.W_x, rtol=1e-12)
    np.testing.assert_allclose(g_mod["b"][...], g_pure.b, rtol=1e-12)


def test_linen_module_equals_pure_function_both_ways():
    pure = _pure()
    xs = _xs()
    module = nn.LinenRNN("simple", H)
    # pure -> linen variables
    out = module.apply(nn.LinenRNN.params_from(pure), xs)
    _same(out, rnn(cells.simple.cell, pure, xs))
    # linen init -> pure
    variables = module.init(jax.random.key(0), xs.astype(jnp.float32))
    back = module.to_params(variables, D)
    _same(
        module.apply(variables, xs.astype(jnp.float32)),
        rnn(cells.simple.cell, back, xs.astype(jnp.float32)),
    )


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_flax_own_simple_cell_agrees_after_mapping(api):
    """Flax's SimpleCell: h = act(i(x) + h(h)) with Dense i (bias) and h (no bias)."""
    pure = _pure()
    xs = _xs()
    h_T, ys = rnn(cells.simple.cell, pure, xs)
    if api == "linen":
        flax_rnn = linen.RNN(
            linen.SimpleCell(features=H, param_dtype=jnp.float64), return_carry=True
        )
        variables = {
            "params": {
                "cell": {
                    "i": {"kernel": pure.W_x, "bias": pure.b},  # [D, H], [H]
                    "h": {"kernel": pure.W_h},  # [H, H]
                }
            }
        }
        carry, out = flax_rnn.apply(variables, xs)
    else:
        cell = nnx.SimpleCell(D, H, rngs=nnx.Rngs(0), dtype=jnp.float64, param_dtype=jnp.float64)
        cell.dense_i.kernel[...] = pure.W_x
        cell.dense_i.bias[...] = pure.b
        cell.dense_h.kernel[...] = pure.W_h
        carry, out = nnx.RNN(cell, return_carry=True)(xs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ys), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(carry), np.asarray(h_T), rtol=1e-12, atol=1e-13)


def test_module_rejects_conflicting_arguments():
    with pytest.raises(
        ValueError,
        match=r"needs in_features, hidden_size and rngs, or params=; missing \['hidden_size', 'rngs'\]",
    ):
        nn.RNN("simple", D)
    with pytest.raises(ValueError, match=r"cell options \['activation'\] are fixed by params="):
        nn.RNN("simple", params=_pure(), activation="relu")
