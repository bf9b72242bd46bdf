"""Every check of the public functions' arguments, in one place.

Each runs in Python while JAX traces (shapes and dtypes are static then), returns the
checked value (normalised where it says so) and raises ``ValueError`` / ``TypeError`` naming
what was expected and what was received, so a mistake never surfaces as an XLA error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells._common import Array, check_float


def floating(name: str, x: Any) -> Array:
    """``x`` as an array with a floating dtype."""
    check_float(name, x)
    return jnp.asarray(x)


def sequence(where: str, xs: Any, time_major: bool) -> tuple[Array, bool]:
    """``(xs_tm [T, B, D], batched)`` from ``xs``: ``[B, T, D]``, ``[T, B, D]`` with
    ``time_major``, or ``[T, D]`` unbatched (read as ``B = 1``)."""
    xs = floating(f"{where}: xs", xs)
    if xs.ndim not in (2, 3):
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(
            f"{where}: xs must be {layout} (batched) or [T, D] (unbatched); "
            f"got rank {xs.ndim} with shape {tuple(xs.shape)}"
        )
    if xs.ndim == 2:
        return xs[:, None, :], False
    return (xs if time_major else jnp.swapaxes(xs, 0, 1)), True


def token_ids(where: str, ids: Any, time_major: bool) -> tuple[Array, bool]:
    """``(ids_tm [T, B], batched)`` from integer ids ``[B, T]`` (``[T, B]`` with
    ``time_major``) or ``[T]``."""
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{where}: token ids must have an integer dtype; got {ids.dtype}")
    if ids.ndim not in (1, 2):
        layout = "[T, B]" if time_major else "[B, T]"
        raise ValueError(
            f"{where}: token ids must be {layout} or [T]; got shape {tuple(ids.shape)}"
        )
    if ids.ndim == 1:
        return ids[:, None], False
    return (ids if time_major else ids.T), True


def tokens(tokens: Any, vocab_size: int) -> Array:
    """Token ids ``[B, T]`` with an integer dtype."""
    dtype = jnp.result_type(tokens)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"tokens must be integer word ids in [0, {vocab_size}); got dtype {dtype}")
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"tokens must have shape [B, T]; got shape {tuple(jnp.shape(tokens))}")
    return jnp.asarray(tokens)


def unroll(where: str, unroll: Any) -> int | bool:
    """``unroll``: a positive int or a bool."""
    if isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1):
        return unroll
    raise ValueError(f"{where}: unroll must be a positive int or a bool; got {unroll!r}")


def remat(where: str, remat: Any) -> int | str | None:
    """``remat``: ``None``, ``"sqrt"`` or a positive int."""
    if remat is None or remat == "sqrt":
        return remat
    if isinstance(remat, bool) or not isinstance(remat, int) or remat < 1:
        raise ValueError(f"{where}: remat must be None, 'sqrt' or a positive int; got {remat!r}")
    return remat


def remat_segment(remat: int | str | None, T: int) -> int | None:
    """Steps per checkpointed segment for a checked ``remat`` and ``T`` steps (``None``: no
    remat).

    >>> remat_segment("sqrt", 100_000), remat_segment(50, 250), remat_segment(None, 250)
    (317, 50, None)
    """
    if remat is None:
        return None
    if remat == "sqrt":
        return max(1, int(np.ceil(np.sqrt(T))))
    return min(remat, max(T, 1))


def lengths(where: str, lengths: Any, batch_shape: tuple[int, ...], T: int) -> Array:
    """``lengths`` as an integer array of shape ``batch_shape`` (``(B,)``, or ``()`` for
    unbatched inputs) with values in ``[0, T]`` where they are known (outside ``jit``)."""
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"{where}: lengths must have an integer dtype; got {lengths.dtype}")
    if lengths.shape != batch_shape:
        what = f"{list(batch_shape)} (the batch shape)" if batch_shape else "() (unbatched)"
        raise ValueError(
            f"{where}: lengths must have shape {what}; got shape {list(lengths.shape)}"
        )
    if not isinstance(lengths, jax.core.Tracer):  # values are only known outside jit
        values = np.asarray(lengths)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > T:
            raise ValueError(f"{where}: lengths must lie in [0, T={T}]; got values in [{lo}, {hi}]")
    return lengths


def mask(where: str, mask: Any, B: int, T: int) -> Array:
    """A Keras-style mask ``[B, T]`` (bool, or 0/1 numbers) as bool."""
    mask = jnp.asarray(mask)
    if mask.shape != (B, T):
        raise ValueError(
            f"{where}: mask must have shape [B, T] = [{B}, {T}]; got shape {tuple(mask.shape)}"
        )
    if mask.dtype == jnp.bool_:
        return mask
    if not (jnp.issubdtype(mask.dtype, jnp.integer) or jnp.issubdtype(mask.dtype, jnp.floating)):
        raise TypeError(f"{where}: mask must be bool (or 0/1 numbers); got dtype {mask.dtype}")
    return mask != 0


def cell_name(cell: Callable) -> str:
    """A cell's name for messages: its ``cell_name``, else its function's ``__name__``."""
    inner = cell
    while hasattr(inner, "func"):  # functools.partial
        inner = inner.func
    return getattr(inner, "cell_name", getattr(inner, "__name__", "cell"))


def initial_carry(
    where: str, cell: Callable, params: Any, h0: Any, batch_shape: tuple[int, ...]
) -> Any:
    """``h0``, or the cell's zero carry for ``batch_shape`` when ``h0`` is ``None``."""
    if h0 is not None:
        return h0
    inner = cell
    while True:
        fn = getattr(inner, "initial_carry", None)
        if fn is not None:
            return fn(params, batch_shape)
        if not hasattr(inner, "func"):
            break
        inner = inner.func
    raise ValueError(
        f"{where}: h0=None needs cell.initial_carry, which {cell_name(cell)!r} does not have; pass h0"
    )


def step(where: str, cell: Callable, params: Any, carry: Any, x: Any, context: str) -> None:
    """Traces one step of ``cell`` (shapes only) so a wrong width, carry or dtype is reported
    here, with ``context`` (how the inputs were read), rather than from inside a loop."""
    try:
        carry_out, _ = jax.eval_shape(lambda c, x: cell(params, c, x), carry, x)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{e}\n  ({context})") from None
    c_in = jax.tree.map(lambda a: (tuple(jnp.shape(a)), jnp.result_type(a)), carry)
    c_out = jax.tree.map(lambda a: (tuple(a.shape), a.dtype), carry_out)
    if c_in != c_out:
        raise TypeError(
            f"{where}: {cell_name(cell)} turns a carry of (shape, dtype) {c_in} into {c_out}; they "
            f"must match. xs is {jnp.dtype(x.dtype)}: give xs and h0 the parameters' dtype (e.g. "
            "xs.astype(jnp.float32), or init the cell with dtype=xs.dtype)"
        )
