"""minGRU: a GRU whose gates see only the input, so its recurrence is linear in ``h``.

.. math::

    z_t = \\sigma(x_t W_z + b_z), \\qquad \\tilde h_t = g(x_t W_h + b_h), \\qquad
    h_t = (1 - z_t) \\odot h_{t-1} + z_t \\odot \\tilde h_t, \\qquad y_t = h_t

with the paper's ``g(v) = v + 1/2`` for ``v >= 0`` and ``sigmoid(v)`` for ``v < 0``
(continuous, positive, linear for large ``v``). Feng, Tung, Ahmed, Bengio & Hajimirsadeghi
(2024), "Were RNNs all we needed?", section 3.1 and appendix B.

Because ``z_t`` and ``h̃_t`` depend on ``x_t`` alone, ``h_t = a_t ⊙ h_{t-1} + b_t`` with
``a_t = 1 - z_t`` and ``b_t = z_t ⊙ h̃_t``: :func:`scan` computes every ``a_t, b_t`` at once
and runs the recurrence with :func:`jaxrnn.parallel.linear_scan` (or, with
``log_space=True``, the paper's log-space scan, :func:`jaxrnn.parallel.log_linear_scan`).
:func:`cell` is the same step for :func:`jaxrnn.rnn`, ``stack``, masks and training.

Layout: ``W_z, W_h: [D, H]``, ``b_z, b_h: [H]``.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, rnn
    >>> params = cells.mingru.init(jax.random.key(0), input_size=3, hidden_size=5)
    >>> xs = jax.random.normal(jax.random.key(1), (2, 7, 3), jnp.float32)  # [B, T, D]
    >>> h_T, ys = cells.mingru.scan(params, xs)                         # all steps at once
    >>> h_ref, ys_ref = rnn(cells.mingru.cell, params, xs, backend="scan")  # step by step
    >>> ys.shape, bool(jnp.allclose(ys, ys_ref, atol=1e-6))
    ((2, 7, 5), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import parallel
from jaxrnn.cells import _linear_checks

Array = jax.Array
_GLOROT_UNIFORM = jax.nn.initializers.glorot_uniform()  # Keras's default kernel initializer
NAME = "mingru"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MinGRUParams:
    """Parameters of the minGRU cell (all arrays; no static options).

    Attributes:
        W_z: ``[D, H]`` update-gate kernel.
        b_z: ``[H]`` update-gate bias.
        W_h: ``[D, H]`` candidate kernel.
        b_h: ``[H]`` candidate bias.
    """

    W_z: Array
    b_z: Array
    W_h: Array
    b_h: Array

    @property
    def input_size(self) -> int:
        return int(self.W_z.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.W_z.shape[1])


def g(v: Array) -> Array:
    """The paper's candidate activation: ``v + 1/2`` for ``v >= 0``, ``sigmoid(v)`` below.

    >>> g(jnp.array([-100.0, 0.0, 2.0])).round(6).tolist()
    [0.0, 0.5, 2.5]
    """
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_g(v: Array) -> Array:
    """``log g(v)`` without forming ``g``: ``log(v + 1/2)`` or ``-softplus(-v)``."""
    return jnp.where(v >= 0, jnp.log(jnp.maximum(v, 0) + 0.5), -jax.nn.softplus(-v))


def init(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    kernel_initializer: Callable[..., Array] = _GLOROT_UNIFORM,
    bias_initializer: Callable[..., Array] = jax.nn.initializers.zeros,
    dtype: Any = jnp.float32,
) -> MinGRUParams:
    """Creates minGRU parameters: glorot-uniform kernels, zero biases.

    Args:
        key: PRNG key.
        input_size: ``D``.
        hidden_size: ``H``.
        kernel_initializer: ``init(key, shape, dtype)`` for ``W_z`` and ``W_h`` ``[D, H]``.
        bias_initializer: ``init(key, shape, dtype)`` for ``b_z`` and ``b_h`` ``[H]``.
        dtype: parameter dtype.

    Returns:
        ``MinGRUParams(W_z [D, H], b_z [H], W_h [D, H], b_h [H])``.
    """
    _check_sizes(input_size, hidden_size)
    k_z, k_h, k_bz, k_bh = jax.random.split(key, 4)
    D, H = input_size, hidden_size
    return MinGRUParams(
        W_z=kernel_initializer(k_z, (D, H), dtype),
        b_z=bias_initializer(k_bz, (H,), dtype),
        W_h=kernel_initializer(k_h, (D, H), dtype),
        b_h=bias_initializer(k_bh, (H,), dtype),
    )


def initial_carry(params: MinGRUParams, batch_shape: tuple[int, ...] = ()) -> Array:
    """Zero state ``h0: [*batch_shape, H]`` in the parameters' dtype."""
    return jnp.zeros((*tuple(batch_shape), params.hidden_size), params.W_z.dtype)


def _preactivations(params: MinGRUParams, x: Array) -> tuple[Array, Array]:
    k = x @ params.W_z + params.b_z  # [..., H]: z = sigmoid(k)
    v = x @ params.W_h + params.b_h  # [..., H]: h̃ = g(v)
    return k, v


def coefficients(params: MinGRUParams, x: Array) -> tuple[Array, Array]:
    """``(a, b)`` of the recurrence ``h = a ⊙ h_prev + b``: ``(1 - z, z ⊙ g(v))``, ``[..., H]``."""
    k, v = _preactivations(params, x)
    z = jax.nn.sigmoid(k)
    return 1.0 - z, z * g(v)


def cell(params: MinGRUParams, carry: Array, x: Array) -> tuple[Array, Array]:
    """One step: ``h = (1 - z) ⊙ h_prev + z ⊙ g(x W_h + b_h)``; returns ``(h, h)``.

    Args:
        params: ``MinGRUParams``.
        carry: ``h_prev: [*batch, H]``.
        x: ``[*batch, D]``.

    Returns:
        ``(h, y)`` with ``h == y: [*batch, H]``.
    """
    batch_shape = _linear_checks.check_step("mingru.cell", params, x)
    _linear_checks.check_state("mingru.cell", carry, batch_shape, params.hidden_size)
    a, b = coefficients(params, x)
    h = a * carry + b  # [*batch, H]
    return h, h


def jacobian_diagonal(params: MinGRUParams, carry: Array, x: Array) -> Array:
    """``∂h/∂h_prev``, which is diagonal: ``1 - z`` (for :func:`jaxrnn.parallel.rnn`'s quasi methods)."""
    del carry
    return coefficients(params, x)[0]


def scan(
    params: MinGRUParams,
    xs: Array,
    h0: Array | None = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    log_space: bool = False,
) -> tuple[Array, Array]:
    """Runs the cell over all steps at once; the numbers of ``rnn(cell, params, xs, ...)``.

    Args:
        params: ``MinGRUParams``.
        xs: ``[B, T, D]`` or ``[T, D]``.
        h0: ``[B, H]`` (``[H]``); ``None``: zeros.
        lengths: ``[B]`` int (a scalar when unbatched), as in :func:`jaxrnn.rnn`: steps past
            a sequence's length keep its state and output zeros.
        reverse: from the last step to the first (each sequence from its own last step).
        log_space: the paper's log-space scan (:func:`jaxrnn.parallel.log_linear_scan`) instead
            of :func:`jaxrnn.parallel.linear_scan`; same result, less accurate at long ``T``
            in float32 (see there).

    Returns:
        ``(h_final [B, H], ys [B, T, H])`` (``[H]``, ``[T, H]`` unbatched).
    """
    batch_shape, _ = _linear_checks.check_sequence("mingru.scan", params, xs)
    if h0 is None:
        h0 = initial_carry(params, batch_shape)
    _linear_checks.check_state("mingru.scan", h0, batch_shape, params.hidden_size)
    if log_space:
        k, v = _preactivations(params, xs)  # [B, T, H]
        # log(1 - z) = -softplus(k), log z = -softplus(-k)
        log_a, log_b = -jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(v)
        hs = parallel.log_linear_scan(log_a, log_b, h0, reverse=reverse, lengths=lengths)
    else:
        a, b = coefficients(params, xs)  # [B, T, H]
        hs = parallel.linear_scan(a, b, h0, reverse=reverse, lengths=lengths)
    return _linear_checks.scan_outputs(hs, lengths, reverse)


def _check_sizes(input_size: Any, hidden_size: Any) -> None:
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{NAME}.init: {name} must be a positive int; got {value!r}")


cell.initial_carry = initial_carry  # type: ignore[attr-defined]  # lets rnn() build h0
cell.cell_name = NAME  # type: ignore[attr-defined]
cell.scan = scan  # type: ignore[attr-defined]  # rnn's "linear" backend: all steps at once
cell.jacobian_diagonal = jacobian_diagonal  # type: ignore[attr-defined]  # parallel.rnn's "quasi"
