"""The GRU cell, equal to Keras's ``GRUCell`` in both formulations.

``reset_after=True`` (default; Keras 3's default, PyTorch's ``nn.GRU``, cuDNN)
applies the reset gate after the recurrent matrix product and has two biases::

    [a_z, a_r, a_h] = x W_x + b_x          [u_z, u_r, u_h] = h W_h + b_h
    z = σ(a_z + u_z),  r = σ(a_r + u_r),  ĥ = tanh(a_h + r ⊙ u_h)
    h' = z ⊙ h + (1 - z) ⊙ ĥ,  y = h'

``reset_after=False`` (the original formulation, Cho et al. 2014, and Keras 2's
default) applies it before, with one bias::

    [a_z, a_r, a_h] = x W_x + b
    z = σ(a_z + h W_h^z),  r = σ(a_r + h W_h^r),  ĥ = tanh(a_h + (r ⊙ h) W_h^h)
    h' = z ⊙ h + (1 - z) ⊙ ĥ

with ``σ = recurrent_activation`` (default sigmoid), ``tanh = activation``
(default tanh). Cho et al. (2014), "Learning phrase representations using RNN
encoder-decoder"; the reset-after variant: Chung et al. (2014) / cuDNN.

Layout (Keras's): gate blocks in the order ``z, r, h``: ``W_x: [D, 3H]``
(kernel), ``W_h: [H, 3H]`` (recurrent_kernel), ``b: [2, 3H]`` (``b[0] = b_x``,
``b[1] = b_h``) with ``reset_after=True``, ``b: [3H]`` without. PyTorch orders
the gates ``r, z, n`` (``n`` = ``ĥ``) and keeps ``bias_ih = b[0]``,
``bias_hh = b[1]`` after the reordering; its ``z`` is Keras's ``z`` (``h' = (1 - z) n + z h``).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, rnn
    >>> params = cells.gru.init(jax.random.key(0), input_size=8, hidden_size=16)
    >>> params.W_x.shape, params.W_h.shape, params.b.shape      # Keras 3 layout
    ((8, 48), (16, 48), (2, 48))
    >>> cells.gru.init(jax.random.key(0), 8, 16, reset_after=False).b.shape
    (48,)
    >>> h = cells.gru.initial_carry(params, batch_shape=(4,))
    >>> h, y = cells.gru.cell(params, h, jnp.ones((4, 8)))
    >>> h.shape, bool((h == y).all())
    ((4, 16), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import _common, _gates
from jaxrnn.cells._common import Activation, Array

NAME = "gru"
N_GATES = 3  # z, r, h


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GRUParams:
    """Parameters of the GRU cell; arrays are pytree leaves, options are static.

    Attributes:
        W_x: ``[D, 3H]`` input kernel, gate blocks ``z, r, h``.
        W_h: ``[H, 3H]`` recurrent kernel, same blocks.
        b: ``[2, 3H]`` (input bias, recurrent bias) when ``reset_after``, else ``[3H]``;
            ``None`` when the cell has no bias.
        activation: for the candidate ``ĥ`` (default ``"tanh"``).
        recurrent_activation: for the gates ``z, r`` (default ``"sigmoid"``).
        reset_after: which formulation (see the module docstring).
    """

    W_x: Array
    W_h: Array
    b: Array | None
    activation: Activation = dataclasses.field(default="tanh", metadata=dict(static=True))
    recurrent_activation: Activation = dataclasses.field(
        default="sigmoid", metadata=dict(static=True)
    )
    reset_after: bool = dataclasses.field(default=True, metadata=dict(static=True))

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
    reset_after: bool = True,
    use_bias: bool = True,
    kernel_initializer: str | Callable[..., Array] = "glorot_uniform",
    recurrent_initializer: str | Callable[..., Array] = "orthogonal",
    bias_initializer: str | Callable[..., Array] = "zeros",
    dtype: Any = jnp.float32,
) -> GRUParams:
    """Creates GRU parameters with Keras ``GRU``'s default initializers.

    Args:
        key: PRNG key.
        input_size: ``D``.
        hidden_size: ``H``.
        activation: Keras's ``activation`` (default ``"tanh"``).
        recurrent_activation: Keras's ``recurrent_activation`` (default ``"sigmoid"``).
        reset_after: ``True`` (Keras 3 / PyTorch / cuDNN) or ``False`` (original GRU).
        use_bias: whether the cell has ``b``.
        kernel_initializer: for ``W_x [D, 3H]`` (Keras: glorot_uniform on the fused matrix).
        recurrent_initializer: for ``W_h [H, 3H]`` (Keras: orthogonal on the fused matrix).
        bias_initializer: for ``b`` (``[2, 3H]`` or ``[3H]``).
        dtype: parameter dtype.

    Returns:
        ``GRUParams(W_x [D, 3H], W_h [H, 3H], b, activation, recurrent_activation, reset_after)``.
    """
    _common.check_sizes(input_size, hidden_size)
    _common.check_activation(activation)
    _common.check_activation(recurrent_activation, "recurrent_activation")
    if not isinstance(reset_after, bool):
        raise TypeError(f"reset_after must be a bool; got {reset_after!r}")
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
        shape = (2, N_GATES * H) if reset_after else (N_GATES * H,)
        b = _common.resolve_initializer(bias_initializer, "bias_initializer")(k_b, shape, dtype)
    return GRUParams(
        W_x=W_x,
        W_h=W_h,
        b=b,
        activation=activation,
        recurrent_activation=recurrent_activation,
        reset_after=reset_after,
    )


def initial_carry(params: GRUParams, batch_shape: tuple[int, ...] = ()) -> Array:
    """Zero state ``h0: [*batch_shape, H]``."""
    return jnp.zeros((*tuple(batch_shape), params.hidden_size), params.W_h.dtype)


def _check_bias(params: GRUParams) -> None:
    if params.b is None:
        return
    H = params.hidden_size
    expected = (2, N_GATES * H) if params.reset_after else (N_GATES * H,)
    if tuple(params.b.shape) != expected:
        raise ValueError(
            f"gru.cell: b must have shape {list(expected)} with reset_after={params.reset_after} "
            f"(hidden_size={H}); got shape {tuple(params.b.shape)}"
        )


def cell(
    params: GRUParams,
    carry: Array,
    x: Array,
    *,
    x_mask: Array | None = None,
    h_mask: Array | None = None,
) -> tuple[Array, Array]:
    """One GRU step; returns ``(h, h)``.

    Args:
        params: ``GRUParams``.
        carry: ``h_prev: [*batch, H]``.
        x: ``[*batch, D]``.
        x_mask: optional dropout mask on ``x`` (already scaled by ``1 / (1 - rate)``):
            ``[*batch, D]`` for all gates or ``[3, *batch, D]`` one per gate.
        h_mask: optional recurrent dropout mask on ``h_prev`` where it enters ``W_h``:
            ``[*batch, H]`` or ``[3, *batch, H]``; the final mix ``z ⊙ h_prev`` uses the
            undropped ``h_prev`` (as Keras does).

    Returns:
        ``(h, y)`` with ``h == y: [*batch, H]``.
    """
    name = "gru.cell"
    batch_shape = _common.check_step_input(name, x, params.input_size)
    _common.check_state(name, "carry h", carry, batch_shape, params.hidden_size)
    _check_bias(params)
    _gates.check_mask(name, "x_mask", x_mask, batch_shape, params.input_size, N_GATES)
    _gates.check_mask(name, "h_mask", h_mask, batch_shape, params.hidden_size, N_GATES)
    H, nb = params.hidden_size, len(batch_shape)
    sigma = _common.resolve_activation(params.recurrent_activation)
    act = _common.resolve_activation(params.activation)

    if params.reset_after:
        r = _gates.project(carry, params.W_h, h_mask, N_GATES)  # [*batch, 3H]
        if params.b is not None:
            r = r + params.b[1]
        h = update(params, carry, project(params, x, x_mask), r)
        return h, h
    a = _gates.project(x, params.W_x, x_mask, N_GATES)  # [*batch, 3H]
    if params.b is not None:
        a = a + params.b
    a_z, a_r, a_h = jnp.split(a, N_GATES, axis=-1)
    W_zr, W_hh = params.W_h[:, : 2 * H], params.W_h[:, 2 * H :]  # [H, 2H], [H, H]
    m_zr = h_mask if not _gates.per_gate(h_mask, nb) else h_mask[:2]
    u_z, u_r = jnp.split(_gates.project(carry, W_zr, m_zr, 2), 2, axis=-1)
    z = sigma(a_z + u_z)
    r = sigma(a_r + u_r)
    h_h = carry
    m_h = _gates.gate_slice(h_mask, 2, nb)
    if m_h is not None:
        h_h = carry * m_h
    h_hat = act(a_h + (r * h_h) @ W_hh)
    h = z * carry + (1.0 - z) * h_hat  # [*batch, H]
    return h, h


def project(params: GRUParams, x: Array, x_mask: Array | None = None) -> Array:
    """The part of a reset-after step that reads ``x`` alone: ``a = x @ W_x + b_x`` (``x_mask``
    as in :func:`cell`), ``[*batch, D] -> [*batch, 3H]``."""
    a = _gates.project(x, params.W_x, x_mask, N_GATES)
    return a if params.b is None else a + params.b[0]


def update(params: GRUParams, carry: Array, a: Array, u: Array) -> Array:
    """The rest of a reset-after step, element-wise: the new carry from ``a``
    (:func:`project`) and ``u = h_prev @ W_h + b_h`` (both ``[*batch, 3H]``)."""
    sigma = _common.resolve_activation(params.recurrent_activation)
    act = _common.resolve_activation(params.activation)
    a_z, a_r, a_h = jnp.split(a, N_GATES, axis=-1)
    u_z, u_r, u_h = jnp.split(u, N_GATES, axis=-1)
    z = sigma(a_z + u_z)
    r = sigma(a_r + u_r)
    h_hat = act(a_h + r * u_h)
    return z * carry + (1.0 - z) * h_hat  # [*batch, H]


def split(params: GRUParams) -> _common.Split | None:
    """The reset-after step as :class:`~jaxrnn.cells.Split` (``None`` for ``reset_after=False``,
    where the reset gate acts before ``W_h``); the kernels compute the default activations."""
    if not params.reset_after:
        return None
    default = params.activation == "tanh" and params.recurrent_activation == "sigmoid"
    b_x, b_h = (None, None) if params.b is None else (params.b[0], params.b[1])
    kernel = (NAME, "") if default else None
    return _common.Split(project, update, params.W_x, b_x, params.W_h, b_h, kernel)


cell.initial_carry = initial_carry  # type: ignore[attr-defined]  # lets rnn() build h0
cell.cell_name = NAME  # type: ignore[attr-defined]
cell.num_gates = N_GATES  # type: ignore[attr-defined]  # dropout: how many per-gate masks
cell.split = split  # type: ignore[attr-defined]
