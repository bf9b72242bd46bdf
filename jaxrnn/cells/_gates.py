"""Gate projections shared by the gated cells (LSTM, GRU), with optional dropout masks.

A gated cell projects its input onto ``G`` gates at once: ``x @ W_x`` with
``W_x: [D, G * H]`` laid out gate after gate (Keras's layout). With dropout the
input may be multiplied by one mask shared by every gate (Keras's
``implementation=2``) or by one mask per gate (Keras's ``implementation=1``,
which Keras switches to whenever ``recurrent_dropout > 0``)::

    shared:    (x * m) @ W_x                      m: [*batch, D]
    per gate:  concat_g (x * m[g]) @ W_x[:, g]    m: [G, *batch, D]
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxrnn.cells._common import Array


def check_mask(
    cell_name: str,
    what: str,
    mask: Any,
    batch_shape: tuple[int, ...],
    width: int,
    n_gates: int | None,
) -> None:
    """Checks a dropout mask: ``[*batch, width]`` (shared) or ``[G, *batch, width]`` (per
    gate; ``n_gates`` ``None`` for a cell without gates)."""
    if mask is None:
        return
    shape = tuple(jnp.shape(mask))
    shared = (*batch_shape, width)
    if n_gates is None:
        if shape != shared:
            raise ValueError(
                f"{cell_name}: {what} must have shape {list(shared)}; got shape {shape}"
            )
        return
    per_gate = (n_gates, *batch_shape, width)
    if shape not in (shared, per_gate):
        raise ValueError(
            f"{cell_name}: {what} must have shape {list(shared)} (one mask for all gates) or "
            f"{list(per_gate)} (one per gate); got shape {shape}"
        )


def per_gate(mask: Array | None, batch_ndim: int) -> bool:
    """Whether ``mask`` holds one mask per gate (a leading gate axis)."""
    return mask is not None and mask.ndim == batch_ndim + 2


def project(x: Array, W: Array, mask: Array | None, n_gates: int) -> Array:
    """``x @ W`` with ``x: [*batch, D]``, ``W: [D, G * H]`` -> ``[*batch, G * H]``, masked.

    ``mask`` is ``None``, ``[*batch, D]`` (shared) or ``[G, *batch, D]`` (gate ``g``'s
    slice of ``W`` sees ``x * mask[g]``).
    """
    if mask is None:
        return x @ W
    if not per_gate(mask, x.ndim - 1):
        return (x * mask) @ W
    D, GH = W.shape
    W_g = W.reshape(D, n_gates, GH // n_gates)  # [D, G, H]
    z = jnp.einsum("g...d,dgh->...gh", x[None] * mask, W_g)  # [*batch, G, H]
    return z.reshape(*x.shape[:-1], GH)  # [*batch, G * H]


def gate_slice(mask: Array | None, g: int, batch_ndim: int) -> Array | None:
    """Gate ``g``'s mask: the shared mask itself, or ``mask[g]`` for per-gate masks."""
    if mask is None or not per_gate(mask, batch_ndim):
        return mask
    return mask[g]
