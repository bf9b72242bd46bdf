"""Input checks, and the outputs of a whole-sequence scan, shared by the linear recurrent cells
(``lru``, ``mingru``, ``minlstm``)."""

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


def check_sequence(where: str, params: Any, xs: Any) -> tuple[tuple[int, ...], int]:
    """Checks ``xs: [B, T, D]`` or ``[T, D]``; returns ``(batch shape, T)``."""
    check_float(where, "xs", xs)
    shape, D = tuple(jnp.shape(xs)), params.input_size
    if len(shape) not in (2, 3) or shape[-1] != D:
        raise ValueError(
            f"{where}: xs must be [B, T, {D}] or [T, {D}] (input_size={D}); got shape {shape}"
        )
    return shape[:-2], shape[-2]


def scan_outputs(hs: Any, lengths: Any, reverse: bool) -> tuple[Any, Any]:
    """``(final state [.., H], outputs [.., T, H])`` from the states ``hs [.., T, H]`` of a scan
    that holds each sequence's state past its length: outputs there are zeros."""
    h_final = hs[..., 0, :] if reverse else hs[..., -1, :]
    if lengths is None:
        return h_final, hs
    alive = jnp.arange(hs.shape[-2]) < jnp.asarray(lengths)[..., None]  # [.., T]
    return h_final, jnp.where(alive[..., None], hs, 0)
