"""The simple (Elman) RNN cell, equal to Keras's ``SimpleRNNCell``.

.. math::  h_t = \\mathrm{act}(x_t W_x + h_{t-1} W_h + b), \\qquad y_t = h_t

Layout (Keras's): ``W_x: [D, H]`` (kernel), ``W_h: [H, H]`` (recurrent_kernel),
``b: [H]`` (bias). PyTorch stores the transposes and two biases
(``weight_ih_l0 = W_x.T``, ``weight_hh_l0 = W_h.T``, ``b = bias_ih + bias_hh``).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells
    >>> params = cells.simple.init(jax.random.key(0), input_size=32, hidden_size=100)
    >>> h = cells.simple.initial_carry(params, batch_shape=())
    >>> h, y = cells.simple.cell(params, h, jnp.ones(32, jnp.float32))
    >>> h.shape, bool((h == y).all())
    ((100,), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import _common, _gates
from jaxrnn.cells._common import Activation, Array

NAME = "simple"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SimpleParams:
    """Parameters of the simple cell: arrays are pytree leaves, ``activation`` is static.

    Attributes:
        W_x: ``[D, H]`` input kernel.
        W_h: ``[H, H]`` recurrent kernel.
        b: ``[H]`` bias, or ``None`` when the cell has no bias.
        activation: name (``"tanh"``, ``"relu"``, ...) or callable; static metadata,
            so ``jax.grad``/optax see only the three arrays.
    """

    W_x: Array
    W_h: Array
    b: Array | None
    activation: Activation = dataclasses.field(default="tanh", metadata=dict(static=True))

    @property
    def input_size(self) -> int:
        return int(self.W_x.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.W_h.shape[0])


def init(
    key: Array,
    input_size: int,
    hidden_size: int,
    activation: Activation = "tanh",
    *,
    use_bias: bool = True,
    kernel_initializer: str | Callable[..., Array] = "glorot_uniform",
    recurrent_initializer: str | Callable[..., Array] = "orthogonal",
    bias_initializer: str | Callable[..., Array] = "zeros",
    dtype: Any = jnp.float32,
) -> SimpleParams:
    """Creates simple-cell parameters with Keras ``SimpleRNN``'s default initializers.

    Args:
        key: PRNG key.
        input_size: ``D``, width of each input step.
        hidden_size: ``H``, number of units.
        activation: ``"tanh"`` (default), ``"relu"``, ``"sigmoid"``, ``"identity"``, ... or a callable.
        use_bias: whether the cell has ``b``.
        kernel_initializer: for ``W_x [D, H]``; Keras's default ``"glorot_uniform"``.
        recurrent_initializer: for ``W_h [H, H]``; Keras's default ``"orthogonal"``.
            ``"identity"`` with ``activation="relu"`` gives the IRNN of Le et al. (2015).
        bias_initializer: for ``b [H]``; default ``"zeros"``.
        dtype: parameter dtype.

    Returns:
        ``SimpleParams(W_x [D, H], W_h [H, H], b [H] or None, activation)``.
    """
    _common.check_sizes(input_size, hidden_size)
    _common.check_activation(activation)
    k_x, k_h, k_b = jax.random.split(key, 3)
    W_x = _common.resolve_initializer(kernel_initializer, "kernel_initializer")(
        k_x, (input_size, hidden_size), dtype
    )
    W_h = _common.resolve_initializer(recurrent_initializer, "recurrent_initializer")(
        k_h, (hidden_size, hidden_size), dtype
    )
    b = (
        _common.resolve_initializer(bias_initializer, "bias_initializer")(
            k_b, (hidden_size,), dtype
        )
        if use_bias
        else None
    )
    return SimpleParams(W_x=W_x, W_h=W_h, b=b, activation=activation)


def initial_carry(params: SimpleParams, batch_shape: tuple[int, ...] = ()) -> Array:
    """Zero state ``h0: [*batch_shape, H]`` in the parameters' dtype."""
    return jnp.zeros((*tuple(batch_shape), params.hidden_size), params.W_h.dtype)


def project(params: SimpleParams, x: Array, x_mask: Array | None = None) -> Array:
    """The part of a step that reads ``x`` alone: ``u = (x * x_mask) @ W_x + b``,
    ``[*batch, D] -> [*batch, H]``."""
    u = _gates.project(x, params.W_x, x_mask, 1)
    return u if params.b is None else u + params.b


def update(params: SimpleParams, carry: Array, u: Array, r: Array) -> Array:
    """The rest of a step, element-wise: the new carry ``h = act(u + r)`` with
    ``r = h_prev @ W_h``."""
    return _common.resolve_activation(params.activation)(u + r)  # [*batch, H]


def split(params: SimpleParams) -> _common.Split:
    """The step as :class:`~jaxrnn.cells.Split` (for the faster backends of ``rnn``)."""
    act = params.activation if isinstance(params.activation, str) else ""
    return _common.Split(project, update, params.W_x, params.b, params.W_h, None, (NAME, act))


def cell(
    params: SimpleParams,
    carry: Array,
    x: Array,
    *,
    x_mask: Array | None = None,
    h_mask: Array | None = None,
) -> tuple[Array, Array]:
    """One step: ``h = act(x @ W_x + h_prev @ W_h + b)``; returns ``(h, h)``.

    Args:
        params: ``SimpleParams``.
        carry: ``h_prev: [*batch, H]``.
        x: ``[*batch, D]``.
        x_mask: optional dropout mask on ``x`` (already scaled by ``1 / (1 - rate)``),
            ``[*batch, D]``.
        h_mask: optional recurrent dropout mask on ``h_prev`` where it enters ``W_h``,
            ``[*batch, H]``.

    Returns:
        ``(h, y)`` with ``h == y: [*batch, H]``.
    """
    name = "simple.cell"
    batch_shape = _common.check_step_input(name, x, params.input_size)
    _common.check_state(name, "carry h", carry, batch_shape, params.hidden_size)
    _gates.check_mask(name, "x_mask", x_mask, batch_shape, params.input_size, None)
    _gates.check_mask(name, "h_mask", h_mask, batch_shape, params.hidden_size, None)
    r = _gates.project(carry, params.W_h, h_mask, 1)  # [*batch, H]
    h = update(params, carry, project(params, x, x_mask), r)
    return h, h


cell.initial_carry = initial_carry  # type: ignore[attr-defined]  # lets rnn() build h0
cell.cell_name = NAME  # type: ignore[attr-defined]
cell.split = split  # type: ignore[attr-defined]
