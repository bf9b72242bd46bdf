"""Input checks shared by the linear recurrent cells (``lru``, ``mingru``, ``minlstm``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def check_float(where: str, what: str, x: Any) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{where}: {what} must have a floating dtype (e.g. float32); got {dtype}")


def check_step(where: str, params: Any, x: Any) -> tuple[int, ...]:
    """Checks ``x: [*batch, D]``; returns the batch shape."""
    check_float(where, "x", x)
    shape, D = tuple(jnp.shape(x)), params.input_size
    if len(shape) < 1 or shape[-1] != D:
        raise ValueError(f"{where}: x must have shape [..., {D}] (input_size); got shape {shape}")
    return shape[:-1]


def check_state(where: str, h: Any, batch_shape: tuple[int, ...], H: int) -> None:
    expected = (*batch_shape, H)
    if tuple(jnp.shape(h)) != expected:
        raise ValueError(
            f"{where}: h must have shape {list(expected)} (batch {list(batch_shape)}, "
            f"hidden_size={H}); got shape {list(jnp.shape(h))}"
        )
    check_float(where, "h", h)
