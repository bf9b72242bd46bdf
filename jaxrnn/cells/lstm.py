"""The LSTM cell, equal to Keras's ``LSTMCell`` (and PyTorch's / Flax's up to layout).

.. math::

    [z_i, z_f, z_g, z_o] &= x_t W_x + h_{t-1} W_h + b \\\\
    i = \\sigma(z_i), \\quad f &= \\sigma(z_f), \\quad g = \\tanh(z_g), \\quad o = \\sigma(z_o) \\\\
    c_t &= f \\odot c_{t-1} + i \\odot g, \\qquad h_t = o \\odot \\tanh(c_t), \\qquad y_t = h_t

with ``σ = recurrent_activation`` (default sigmoid) and ``tanh = activation``
(default tanh). Hochreiter & Schmidhuber (1997), "Long short-term memory";
forget gate: Gers, Schmidhuber & Cummins (2000); the forget-bias-of-one
initialisation (``unit_forget_bias``): Jozefowicz, Zaremba & Sutskever (2015).

Layout (Keras's): gates in the order ``i, f, g (Keras "c"), o``, each a block of
``H`` columns: ``W_x: [D, 4H]`` (kernel), ``W_h: [H, 4H]`` (recurrent_kernel),
``b: [4H]`` (bias). PyTorch stores ``weight_ih_l0 = W_x.T`` and
``weight_hh_l0 = W_h.T`` with the same gate order ``i, f, g, o`` and two biases
(``b = bias_ih + bias_hh``); Flax linen's ``LSTMCell`` keeps one ``Dense`` per
gate (``ii, if, ig, io`` without bias, ``hi, hf, hg, ho`` with it) and a carry
``(c, h)`` — see :mod:`jaxrnn.convert`.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, rnn
    >>> params = cells.lstm.init(jax.random.key(0), input_size=8, hidden_size=16)
    >>> params.W_x.shape, params.W_h.shape, params.b.shape      # Keras layout
    ((8, 64), (16, 64), (64,))
    >>> carry = cells.lstm.initial_carry(params, batch_shape=(4,))
    >>> carry, y = cells.lstm.cell(params, carry, jnp.ones((4, 8)))
    >>> carry.h.shape, carry.c.shape, bool((y == carry.h).all())
    ((4, 16), (4, 16), True)
    >>> (h_T, c_T), ys = rnn(cells.lstm.cell, params, jnp.ones((4, 10, 8), jnp.float32))
    >>> ys.shape
    (4, 10, 16)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells import _common, _gates
from jaxrnn.cells._common import Activation, Array

NAME = "lstm"
N_GATES = 4  # i, f, g, o


class LSTMCarry(NamedTuple):
    """The LSTM state: ``h`` (hidden, also the output) and ``c`` (cell), each ``[*batch, H]``.

    Keras's state order is ``[h, c]`` too; Flax's carry is ``(c, h)``.
    """

    h: Array
    c: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LSTMParams:
    """Parameters of the LSTM cell; arrays are pytree leaves, activations are static.

    Attributes:
        W_x: ``[D, 4H]`` input kernel, gate blocks ``i, f, g, o``.
        W_h: ``[H, 4H]`` recurrent kernel, same blocks.
        b: ``[4H]`` bias, or ``None`` when the cell has no bias.
        activation: for ``g`` and for ``c`` on the way out (default ``"tanh"``).
        recurrent_activation: for the gates ``i, f, o`` (default ``"sigmoid"``).
    """

    W_x: Array
    W_h: Array
    b: Array | None
    activation: Activation = dataclasses.field(default="tanh", metadata=dict(static=True))
    recurrent_activation: Activation = dataclasses.field(
        default="sigmoid", metadata=dict(static=True)
    )

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
    recurrent_activation: Activation = "sigmoid",
    *,
    use_bias: bool = True,
    unit_forget_bias: bool = True,
    kernel_initializer: str | Callable[..., Array] = "glorot_uniform",
    recurrent_initializer: str | Callable[..., Array] = "orthogonal",
    bias_initializer: str | Callable[..., Array] = "zeros",
    dtype: Any = jnp.float32,
) -> LSTMParams:
    """Creates LSTM parameters with Keras ``LSTM``'s default initializers.

    As in Keras, each initializer sees the whole fused matrix: ``glorot_uniform`` on
    ``[D, 4H]`` (fans ``D`` and ``4H``), ``orthogonal`` on ``[H, 4H]`` (orthonormal rows).

    Args:
        key: PRNG key.
        input_size: ``D``.
        hidden_size: ``H``.
        activation: Keras's ``activation`` (default ``"tanh"``).
        recurrent_activation: Keras's ``recurrent_activation`` (default ``"sigmoid"``).
        use_bias: whether the cell has ``b``.
        unit_forget_bias: add one to the forget gate's bias block at init (Keras's default).
        kernel_initializer: for ``W_x [D, 4H]``.
        recurrent_initializer: for ``W_h [H, 4H]``.
        bias_initializer: for ``b [4H]`` (each block, before the forget bias is set to one).
        dtype: parameter dtype.

    Returns:
        ``LSTMParams(W_x [D, 4H], W_h [H, 4H], b [4H] or None, activation, recurrent_activation)``.

    Examples:
        >>> import jax
        >>> p = init(jax.random.key(0), 3, 2)
        >>> p.b.tolist()                       # forget block set to one
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    _common.check_sizes(input_size, hidden_size)
    _common.check_activation(activation)
    _common.check_activation(recurrent_activation, "recurrent_activation")
    H = hidden_size
    k_x, k_h, k_b = jax.random.split(key, 3)
    W_x = _common.resolve_initializer(kernel_initializer, "kernel_initializer")(
        k_x, (input_size, N_GATES * H), dtype
    )
    W_h = _common.resolve_initializer(recurrent_initializer, "recurrent_initializer")(
        k_h, (H, N_GATES * H), dtype
    )
    b = None
    if use_bias:
        bias_init = _common.resolve_initializer(bias_initializer, "bias_initializer")
        if unit_forget_bias:  # Keras: [init(H), ones(H), init(2H)]
            k_i, k_go = jax.random.split(k_b)
            b = jnp.concatenate(
                [
                    bias_init(k_i, (H,), dtype),
                    jnp.ones((H,), dtype),
                    bias_init(k_go, (2 * H,), dtype),
                ]
            )
        else:
            b = bias_init(k_b, (N_GATES * H,), dtype)
    return LSTMParams(
        W_x=W_x, W_h=W_h, b=b, activation=activation, recurrent_activation=recurrent_activation
    )


def initial_carry(params: LSTMParams, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
    """Zero state ``LSTMCarry(h [*batch_shape, H], c [*batch_shape, H])``."""
    zeros = jnp.zeros((*tuple(batch_shape), params.hidden_size), params.W_h.dtype)
    return LSTMCarry(h=zeros, c=zeros)


def cell(
    params: LSTMParams,
    carry: LSTMCarry,
    x: Array,
    *,
    x_mask: Array | None = None,
    h_mask: Array | None = None,
) -> tuple[LSTMCarry, Array]:
    """One LSTM step; returns ``(LSTMCarry(h, c), h)``.

    Args:
        params: ``LSTMParams``.
        carry: ``LSTMCarry(h [*batch, H], c [*batch, H])`` (any ``(h, c)`` pair).
        x: ``[*batch, D]``.
        x_mask: optional dropout mask on ``x`` (already scaled by ``1 / (1 - rate)``):
            ``[*batch, D]`` for all gates or ``[4, *batch, D]`` one per gate.
        h_mask: optional recurrent dropout mask on ``h_prev`` where it enters ``W_h``:
            ``[*batch, H]`` or ``[4, *batch, H]``. ``c`` is never dropped.

    Returns:
        ``(LSTMCarry(h, c), y)`` with ``y = h: [*batch, H]``.
    """
    name = "lstm.cell"
    batch_shape = _common.check_step_input(name, x, params.input_size)
    if not isinstance(carry, tuple) or len(carry) != 2:
        raise TypeError(
            f"{name}: carry must be LSTMCarry(h, c) (a pair of [*batch, H] arrays); "
            f"got {type(carry).__name__}"
        )
    h_prev, c_prev = carry
    H = params.hidden_size
    _common.check_state(name, "carry h", h_prev, batch_shape, H)
    _common.check_state(name, "carry c", c_prev, batch_shape, H)
    _gates.check_mask(name, "x_mask", x_mask, batch_shape, params.input_size, N_GATES)
    _gates.check_mask(name, "h_mask", h_mask, batch_shape, H, N_GATES)

    r = _gates.project(h_prev, params.W_h, h_mask, N_GATES)  # [*batch, 4H]
    new = update(params, carry, project(params, x, x_mask), r)
    return new, new.h


def project(params: LSTMParams, x: Array, x_mask: Array | None = None) -> Array:
    """The part of a step that reads ``x`` alone: ``u = x @ W_x + b`` (``x_mask`` as in
    :func:`cell`), ``[*batch, D] -> [*batch, 4H]``."""
    u = _gates.project(x, params.W_x, x_mask, N_GATES)
    return u if params.b is None else u + params.b


def update(params: LSTMParams, carry: LSTMCarry, u: Array, r: Array) -> LSTMCarry:
    """The rest of a step, element-wise: the new carry from ``u`` (:func:`project`) and
    ``r = h_prev @ W_h`` (both ``[*batch, 4H]``)."""
    _, c_prev = carry
    z_i, z_f, z_g, z_o = jnp.split(u + r, N_GATES, axis=-1)  # 4 x [*batch, H]
    sigma = _common.resolve_activation(params.recurrent_activation)
    act = _common.resolve_activation(params.activation)
    c = sigma(z_f) * c_prev + sigma(z_i) * act(z_g)
    return LSTMCarry(h=sigma(z_o) * act(c), c=c)


def split(params: LSTMParams) -> _common.Split:
    """The step as :class:`~jaxrnn.cells.Split`; the kernels compute the default activations."""
    default = params.activation == "tanh" and params.recurrent_activation == "sigmoid"
    kernel = (NAME, "") if default else None
    return _common.Split(project, update, params.W_x, params.b, params.W_h, None, kernel)


cell.initial_carry = initial_carry  # type: ignore[attr-defined]  # lets rnn() build h0
cell.cell_name = NAME  # type: ignore[attr-defined]
cell.num_gates = N_GATES  # type: ignore[attr-defined]  # dropout: how many per-gate masks
cell.split = split  # type: ignore[attr-defined]
