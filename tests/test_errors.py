"""Bad input: a ValueError/TypeError raised in Python at trace time, naming what was
expected and what was received — also under jit, where XLA would otherwise complain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, models, rnn

D, H = 4, 5


@pytest.fixture
def p():
    return cells.simple.init(jax.random.key(0), D, H)


def _f32(*shape):
    return jnp.ones(shape, jnp.float32)


def _call(jit, fn, *args):
    return jax.jit(fn)(*args) if jit else fn(*args)


JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


@JIT
def test_wrong_input_width(p, jit):
    with pytest.raises(
        ValueError, match=r"shape \[\.\.\., 4\] \(input_size=4\); got shape \(2, 3\)"
    ) as e:
        _call(jit, lambda x: rnn(cells.simple.cell, p, x), _f32(2, 7, 3))
    assert "xs of shape (2, 7, 3)" in str(e.value)


@JIT
def test_wrong_carry_shape(p, jit):
    with pytest.raises(ValueError, match=r"carry h must have shape \[2, 5\].*got shape \(3, 5\)"):
        _call(jit, lambda x, h: rnn(cells.simple.cell, p, x, h), _f32(2, 7, D), _f32(3, H))
    with pytest.raises(ValueError, match=r"carry h must have shape \[2, 5\].*got shape \(2, 6\)"):
        cells.simple.cell(p, _f32(2, 6), _f32(2, D))


@JIT
@pytest.mark.parametrize("shape", [(D,), (1, 2, 7, D)])
def test_wrong_rank(p, jit, shape):
    with pytest.raises(
        ValueError, match=rf"xs must be \[B, T, D\] .* or \[T, D\].*got rank {len(shape)}"
    ):
        _call(jit, lambda x: rnn(cells.simple.cell, p, x), _f32(*shape))


@JIT
def test_integer_inputs(p, jit):
    with pytest.raises(TypeError, match=r"xs must have a floating dtype .*got int32"):
        _call(jit, lambda x: rnn(cells.simple.cell, p, x), jnp.ones((2, 7, D), jnp.int32))
    with pytest.raises(TypeError, match=r"x must have a floating dtype .*got int32"):
        cells.simple.cell(p, _f32(H), jnp.ones(D, jnp.int32))


def test_lengths_out_of_range(p):
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=7\]; got values in \[0, 8\]"):
        rnn(cells.simple.cell, p, _f32(2, 7, D), lengths=jnp.array([8, 0]))
    with pytest.raises(
        ValueError, match=r"lengths must lie in \[0, T=7\]; got values in \[-1, 3\]"
    ):
        rnn(cells.simple.cell, p, _f32(2, 7, D), lengths=np.array([-1, 3]))


@JIT
def test_lengths_wrong_shape_or_dtype(p, jit):
    with pytest.raises(
        ValueError, match=r"lengths must have shape \[2\] \(the batch shape\); got shape \[3\]"
    ):
        _call(
            jit,
            lambda x, L: rnn(cells.simple.cell, p, x, lengths=L),
            _f32(2, 7, D),
            jnp.array([1, 2, 3]),
        )
    with pytest.raises(TypeError, match=r"lengths must have an integer dtype; got float32"):
        _call(jit, lambda x, L: rnn(cells.simple.cell, p, x, lengths=L), _f32(2, 7, D), _f32(2))


def test_dtype_mismatch_between_xs_and_params(p):
    # expected: the parameters' float32 (the carry's dtype); received: float64 xs
    with pytest.raises(
        TypeError,
        match=r"dtype\('float32'\)\).*xs is float64: give xs and h0 the parameters' dtype",
    ):
        rnn(cells.simple.cell, p, jnp.ones((2, 7, D), jnp.float64))


def test_bad_init_arguments(key):
    with pytest.raises(
        ValueError, match=r"activation must be one of \[.*'tanh'.*\] or a callable; got 'tanhh'"
    ):
        cells.simple.init(key, D, H, "tanhh")
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int; got 0"):
        cells.simple.init(key, D, 0)
    with pytest.raises(
        ValueError,
        match=r"recurrent_initializer must be one of \[.*'identity'.*'orthogonal'.*got 'eye'",
    ):
        cells.simple.init(key, D, H, recurrent_initializer="eye")
    with pytest.raises(ValueError, match=r"unroll must be a positive int or a bool; got 0"):
        rnn(cells.simple.cell, cells.simple.init(key, D, H), _f32(2, 7, D), unroll=0)


def test_cell_without_initial_carry_needs_h0(p):
    def bare(params, h, x):
        return cells.simple.cell(params, h, x)

    with pytest.raises(
        ValueError, match=r"h0=None needs cell.initial_carry, which 'bare' does not have"
    ):
        rnn(bare, p, _f32(2, 7, D))
    h_T, _ = rnn(bare, p, _f32(2, 7, D), jnp.zeros((2, H), jnp.float32))
    assert h_T.shape == (2, H)


def test_seed_model_rejects_float_tokens():
    cfg = models.ClassifierConfig(vocab_size=10, embed_dim=3, hidden_size=4)
    params = models.init_classifier(jax.random.key(0), cfg)
    with pytest.raises(
        TypeError, match=r"tokens must be integer word ids in \[0, 10\); got dtype float32"
    ):
        models.classifier_logits(cfg, params, _f32(2, 5))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, T\]; got shape \(5,\)"):
        models.classifier_logits(cfg, params, jnp.ones(5, jnp.int32))
