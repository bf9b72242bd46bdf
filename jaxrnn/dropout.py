"""Dropout for recurrent layers, with Keras's semantics and an explicit PRNG key.

Keras (after Gal & Ghahramani 2016, "A theoretically grounded application of
dropout in recurrent neural networks") draws **one mask per sequence** and reuses
it at every time step:

* ``dropout`` masks the input ``x_t`` where it enters ``W_x``: ``[B, D]``;
* ``recurrent_dropout`` masks ``h_{t-1}`` where it enters ``W_h``: ``[B, H]``
  (the LSTM's ``c`` and the GRU's final mix ``z ⊙ h`` see the undropped state).

Masks are inverted-dropout masks: entries are ``0`` or ``1 / (1 - rate)``.
Keras's gated cells use one mask for all gates when ``recurrent_dropout == 0``
(its ``implementation=2``) and a separate mask per gate (``[G, B, D]``,
``[G, B, H]``, ``G = 4`` for LSTM, ``3`` for GRU) as soon as
``recurrent_dropout > 0`` (it then switches to ``implementation=1``);
:func:`rnn_dropout_masks` does the same unless told otherwise.

Between stacked layers (PyTorch's ``nn.LSTM(dropout=p)``), :func:`dropout_steps` drops
each element of the ``[B, T, H]`` outputs independently, the mask of step ``t`` drawn
from ``fold_in(key, t)``: the same masks whether the sequence runs whole or in time
segments (rematerialised BPTT redraws a segment's masks instead of keeping them).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells
    >>> from jaxrnn.dropout import rnn_dropout_masks, with_masks
    >>> params = cells.lstm.init(jax.random.key(0), 8, 16)
    >>> masks = rnn_dropout_masks(jax.random.key(1), cells.lstm.cell, 8, 16, (4,),
    ...                           dropout=0.2, recurrent_dropout=0.1)
    >>> masks.x.shape, masks.h.shape                   # one mask per gate, as Keras
    ((4, 4, 8), (4, 4, 16))
    >>> cell = with_masks(cells.lstm.cell, masks)      # the same masks at every step
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells._common import Array, Cell


class DropoutMasks(NamedTuple):
    """Per-sequence masks: ``x`` ``[B, D]`` or ``[G, B, D]``; ``h`` ``[B, H]`` or ``[G, B, H]``.

    Either may be ``None`` (no dropout there).
    """

    x: Array | None
    h: Array | None


def _check_rate(name: str, rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1); got {rate!r}")
    return float(rate)


def keep_mask(key: Array, rate: float, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """An inverted-dropout mask: ``0`` with probability ``rate``, else ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def num_gates(cell: Cell) -> int | None:
    """Number of gates of a cell that accepts per-gate masks (``cell.num_gates``), else None."""
    inner = getattr(cell, "func", cell)
    return getattr(inner, "num_gates", None)


def rnn_dropout_masks(
    key: Array,
    cell: Cell,
    input_size: int,
    hidden_size: int,
    batch_shape: tuple[int, ...],
    *,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    per_gate: bool | None = None,
    dtype: Any = jnp.float32,
) -> DropoutMasks:
    """Draws one sequence's worth of Keras-style dropout masks for ``cell``.

    Args:
        key: PRNG key (split into one key for ``x`` and one for ``h``).
        cell: the cell function (its ``num_gates`` attribute says whether per-gate masks apply).
        input_size: ``D``.
        hidden_size: ``H``.
        batch_shape: ``(B,)`` (or ``()``).
        dropout: rate for the input ``x``.
        recurrent_dropout: rate for the recurrent state ``h``.
        per_gate: one mask per gate (``[G, *batch, .]``); ``None``: as Keras, per gate
            exactly when ``recurrent_dropout > 0`` and the cell has gates.
        dtype: mask dtype.

    Returns:
        ``DropoutMasks(x, h)``; a field is ``None`` when its rate is zero.
    """
    dropout = _check_rate("dropout", dropout)
    recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
    G = num_gates(cell)
    if per_gate is None:
        per_gate = G is not None and recurrent_dropout > 0
    if per_gate and G is None:
        raise ValueError(
            f"per-gate dropout masks need a gated cell; {_checks.cell_name(cell)!r} has none"
        )
    lead = (G,) if per_gate else ()
    k_x, k_h = jax.random.split(key)
    x = keep_mask(k_x, dropout, (*lead, *batch_shape, input_size), dtype) if dropout else None
    h = (
        keep_mask(k_h, recurrent_dropout, (*lead, *batch_shape, hidden_size), dtype)
        if recurrent_dropout
        else None
    )
    return DropoutMasks(x, h)


def _takes_masks(cell: Cell) -> bool:
    """Whether ``cell`` takes ``x_mask`` / ``h_mask`` keywords (the built-in cells do)."""
    inner = cell
    while isinstance(inner, functools.partial):
        inner = inner.func
    try:
        names = inspect.signature(inner).parameters
    except (TypeError, ValueError):
        return False
    return "x_mask" in names and "h_mask" in names


def _masked_input(cell: Cell, x_mask: Array, params: Any, carry: Any, x: Array):
    return cell(params, carry, x * x_mask)


def with_masks(cell: Cell, masks: DropoutMasks) -> Cell:
    """Returns ``cell`` with the dropout masks applied at every step (same masks each step).

    Cells that take ``x_mask`` / ``h_mask`` (the built-in ones) get them bound with
    ``functools.partial``, which :func:`jaxrnn.rnn`'s faster backends understand (an input
    mask is folded into the hoisted projection). Other cells get ``x * masks.x``; they cannot
    take recurrent masks.
    """
    if masks.x is None and masks.h is None:
        return cell
    if _takes_masks(cell):
        kwargs = {k: v for k, v in (("x_mask", masks.x), ("h_mask", masks.h)) if v is not None}
        return functools.partial(cell, **kwargs)
    if masks.h is not None:
        raise ValueError(
            f"recurrent dropout needs a cell that takes h_mask (the built-in cells do); "
            f"{_checks.cell_name(cell)!r} does not"
        )
    if masks.x.ndim > 2:
        raise ValueError(f"per-gate masks need a gated cell; got {_checks.cell_name(cell)!r}")
    wrapped = functools.partial(_masked_input, cell, masks.x)
    for attr in ("initial_carry", "cell_name"):
        inner = getattr(cell, "func", cell)
        if hasattr(inner, attr):
            setattr(wrapped, attr, getattr(inner, attr))
    return wrapped


def dropout(key: Array, x: Array, rate: float) -> Array:
    """Elementwise inverted dropout (a fresh mask per element; PyTorch's between-layer dropout).

    Args:
        key: PRNG key.
        x: any shape, e.g. ``[B, T, H]``.
        rate: drop probability in ``[0, 1)``.

    Returns:
        ``x * mask`` with the shape and dtype of ``x``.
    """
    rate = _check_rate("dropout", rate)
    if rate == 0.0:
        return x
    return x * keep_mask(key, rate, x.shape, x.dtype)


def dropout_steps(key: Array, xs: Array, rate: float, steps: Array) -> Array:
    """Elementwise inverted dropout on ``xs [B, n, ...]``, the mask of step ``steps[i]`` drawn
    from ``fold_in(key, steps[i])``.

    Every element is dropped independently, as :func:`dropout` does, but each time step's
    mask depends only on its own index: a segment of steps ``t0 .. t0 + n - 1`` gets the
    same masks as those steps of the whole sequence, so a time-segmented (rematerialised)
    loop can redraw them instead of keeping ``[B, T, ...]`` masks.

    Args:
        key: PRNG key.
        xs: ``[B, n, ...]``, time on axis 1.
        rate: drop probability in ``[0, 1)``.
        steps: ``[n]`` int, the time index of each of the ``n`` steps.

    Returns:
        ``xs * mask`` with the shape and dtype of ``xs``.
    """
    rate = _check_rate("dropout", rate)
    if xs.ndim < 2 or jnp.shape(steps) != (xs.shape[1],):
        raise ValueError(
            f"dropout_steps: xs must be [B, n, ...] with steps [n]; got xs of shape "
            f"{tuple(xs.shape)} and steps of shape {tuple(jnp.shape(steps))}"
        )
    if rate == 0.0:
        return xs
    step_shape = (xs.shape[0], *xs.shape[2:])  # [B, ...]

    def mask(t):  # [B, ...] for step t
        return keep_mask(jax.random.fold_in(key, t), rate, step_shape, xs.dtype)

    return xs * jnp.moveaxis(jax.vmap(mask)(steps), 0, 1)  # [n, B, ...] -> [B, n, ...]
