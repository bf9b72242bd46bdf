"""minLSTM: an LSTM whose gates see only the input, normalised so that its state stays bounded.

.. math::

    f_t = \\sigma(x_t W_f + b_f), \\quad i_t = \\sigma(x_t W_i + b_i), \\quad
    \\tilde h_t = g(x_t W_h + b_h), \\\\
    f'_t = \\frac{f_t}{f_t + i_t}, \\quad i'_t = \\frac{i_t}{f_t + i_t}, \\qquad
    h_t = f'_t \\odot h_{t-1} + i'_t \\odot \\tilde h_t, \\qquad y_t = h_t

with the paper's ``g`` (:func:`jaxrnn.cells.mingru.g`). The normalisation makes ``h_t`` a
weighted average of ``h_{t-1}`` and ``h̃_t``, independent of time scale. Feng, Tung, Ahmed,
Bengio & Hajimirsadeghi (2024), "Were RNNs all we needed?", section 3.2 and appendix B.

The recurrence is ``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t = f'_t``, ``b_t = i'_t ⊙ h̃_t``:
:func:`scan` runs it with :func:`jaxrnn.parallel.linear_scan` (or the log-space scan,
``log_space=True``); :func:`cell` is the same step for :func:`jaxrnn.rnn`.

Layout: ``W_f, W_i, W_h: [D, H]``, ``b_f, b_i, b_h: [H]``.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, rnn
    >>> params = cells.minlstm.init(jax.random.key(0), input_size=3, hidden_size=5)
    >>> xs = jax.random.normal(jax.random.key(1), (7, 3), jnp.float32)  # [T, D]
    >>> h_T, ys = cells.minlstm.scan(params, xs, reverse=True)
    >>> h_ref, ys_ref = rnn(cells.minlstm.cell, params, xs, reverse=True, backend="scan")
    >>> h_T.shape, bool(jnp.allclose(ys, ys_ref, atol=1e-6))
    ((5,), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import parallel
from jaxrnn.cells import _linear_checks
from jaxrnn.cells.mingru import g, log_g

Array = jax.Array
_GLOROT_UNIFORM = jax.nn.initializers.glorot_uniform()  # Keras's default kernel initializer
NAME = "minlstm"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MinLSTMParams:
    """Parameters of the minLSTM cell (all arrays; no static options).

    Attributes:
        W_f: ``[D, H]`` forget-gate kernel.
        b_f: ``[H]`` forget-gate bias.
        W_i: ``[D, H]`` input-gate kernel.
        b_i: ``[H]`` input-gate bias.
        W_h: ``[D, H]`` candidate kernel.
        b_h: ``[H]`` candidate bias.
    """

    W_f: Array
    b_f: Array
    W_i: Array
    b_i: Array
    W_h: Array
    b_h: Array

    @property
    def input_size(self) -> int:
        return int(self.W_f.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.W_f.shape[1])


def init(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    kernel_initializer: Callable[..., Array] = _GLOROT_UNIFORM,
    bias_initializer: Callable[..., Array] = jax.nn.initializers.zeros,
    dtype: Any = jnp.float32,
) -> MinLSTMParams:
    """Creates minLSTM parameters: glorot-uniform kernels, zero biases.

    Args:
        key: PRNG key.
        input_size: ``D``.
        hidden_size: ``H``.
        kernel_initializer: ``init(key, shape, dtype)`` for the ``[D, H]`` kernels.
        bias_initializer: ``init(key, shape, dtype)`` for the ``[H]`` biases.
        dtype: parameter dtype.

    Returns:
        ``MinLSTMParams(W_f, b_f, W_i, b_i, W_h, b_h)``.
    """
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{NAME}.init: {name} must be a positive int; got {value!r}")
    D, H = input_size, hidden_size
    ks = jax.random.split(key, 6)
    return MinLSTMParams(
        W_f=kernel_initializer(ks[0], (D, H), dtype),
        b_f=bias_initializer(ks[1], (H,), dtype),
        W_i=kernel_initializer(ks[2], (D, H), dtype),
        b_i=bias_initializer(ks[3], (H,), dtype),
        W_h=kernel_initializer(ks[4], (D, H), dtype),
        b_h=bias_initializer(ks[5], (H,), dtype),
    )


def initial_carry(params: MinLSTMParams, batch_shape: tuple[int, ...] = ()) -> Array:
    """Zero state ``h0: [*batch_shape, H]`` in the parameters' dtype."""
    return jnp.zeros((*tuple(batch_shape), params.hidden_size), params.W_f.dtype)


def _preactivations(params: MinLSTMParams, x: Array) -> tuple[Array, Array, Array]:
    k_f = x @ params.W_f + params.b_f  # [..., H]: f = sigmoid(k_f)
    k_i = x @ params.W_i + params.b_i  # [..., H]: i = sigmoid(k_i)
    v = x @ params.W_h + params.b_h  # [..., H]: h̃ = g(v)
    return k_f, k_i, v


def coefficients(params: MinLSTMParams, x: Array) -> tuple[Array, Array]:
    """``(a, b)`` of ``h = a ⊙ h_prev + b``: ``(f', i' ⊙ g(v))``, each ``[..., H]``."""
    k_f, k_i, v = _preactivations(params, x)
    f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
    return f / (f + i), i / (f + i) * g(v)


def cell(params: MinLSTMParams, carry: Array, x: Array) -> tuple[Array, Array]:
    """One step: ``h = f' ⊙ h_prev + i' ⊙ g(x W_h + b_h)``; returns ``(h, h)``.

    Args:
        params: ``MinLSTMParams``.
        carry: ``h_prev: [*batch, H]``.
        x: ``[*batch, D]``.

    Returns:
        ``(h, y)`` with ``h == y: [*batch, H]``.
    """
    batch_shape = _linear_checks.check_step("minlstm.cell", params, x)
    _linear_checks.check_state("minlstm.cell", carry, batch_shape, params.hidden_size)
    a, b = coefficients(params, x)
    h = a * carry + b  # [*batch, H]
    return h, h


def jacobian_diagonal(params: MinLSTMParams, carry: Array, x: Array) -> Array:
    """``∂h/∂h_prev``, which is diagonal: ``f'`` (for :func:`jaxrnn.parallel.rnn`'s quasi methods)."""
    del carry
    return coefficients(params, x)[0]


def scan(
    params: MinLSTMParams,
    xs: Array,
    h0: Array | None = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    log_space: bool = False,
) -> tuple[Array, Array]:
    """Runs the cell over all steps at once; the numbers of ``rnn(cell, params, xs, ...)``.

    Args:
        params: ``MinLSTMParams``.
        xs: ``[B, T, D]`` or ``[T, D]``.
        h0: ``[B, H]`` (``[H]``); ``None``: zeros.
        lengths: ``[B]`` int (a scalar when unbatched), as in :func:`jaxrnn.rnn`.
        reverse: from the last step to the first (each sequence from its own last step).
        log_space: the paper's log-space scan (:func:`jaxrnn.parallel.log_linear_scan`).

    Returns:
        ``(h_final [B, H], ys [B, T, H])`` (``[H]``, ``[T, H]`` unbatched).
    """
    where = "minlstm.scan"
    batch_shape, _ = _linear_checks.check_sequence(where, params, xs)
    if h0 is None:
        h0 = initial_carry(params, batch_shape)
    _linear_checks.check_state(where, h0, batch_shape, params.hidden_size)
    if log_space:
        k_f, k_i, v = _preactivations(params, xs)  # [B, T, H]
        # log f' = log f - log(f + i) with log sigmoid(k) = -softplus(-k)
        log_f, log_i = -jax.nn.softplus(-k_f), -jax.nn.softplus(-k_i)
        log_norm = jnp.logaddexp(log_f, log_i)
        hs = parallel.log_linear_scan(
            log_f - log_norm, log_i - log_norm + log_g(v), h0, reverse=reverse, lengths=lengths
        )
    else:
        a, b = coefficients(params, xs)  # [B, T, H]
        hs = parallel.linear_scan(a, b, h0, reverse=reverse, lengths=lengths)
    return _linear_checks.scan_outputs(hs, lengths, reverse)


cell.initial_carry = initial_carry  # type: ignore[attr-defined]  # lets rnn() build h0
cell.cell_name = NAME  # type: ignore[attr-defined]
cell.scan = scan  # type: ignore[attr-defined]  # rnn's "linear" backend: all steps at once
cell.jacobian_diagonal = jacobian_diagonal  # type: ignore[attr-defined]  # parallel.rnn's "quasi"
