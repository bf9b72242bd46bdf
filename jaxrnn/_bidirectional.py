"""``bidirectional``: Keras's ``Bidirectional`` wrapper (and PyTorch's layout) as a pure function.

::

    y_fw = recurrent(cell, params.forward, xs, ...)                        # [B, T, H]
    y_bw = flip_time(recurrent(cell, params.backward, xs, go_backwards=True, ...))
    output = merge(y_fw, y_bw)                                             # concat: [B, T, 2H]

As in Keras, with ``return_sequences`` the backward outputs are flipped back to
time order and both directions output zeros at masked steps (Keras forces
``zero_output_for_mask = return_sequences``). With ``lengths`` (a right-padded
mask) the backward direction starts at each sequence's own last step, so
``merge_mode="concat"`` is exactly PyTorch's ``bidirectional=True`` output
``[B, T, 2H]`` (forward features first), padded with zeros, as
``pad_packed_sequence`` returns it.

Merge modes (Keras's): ``"concat"`` (default), ``"sum"``, ``"mul"``, ``"ave"``,
``None`` (the pair ``(y_fw, y_bw)``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks, backends
from jaxrnn._recurrent import recurrent
from jaxrnn._rnn import Cell
from jaxrnn.cells._common import Array

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class BiParams(NamedTuple):
    """Parameters of a bidirectional layer: one set per direction."""

    forward: Any
    backward: Any


def merge(y_fw: Array, y_bw: Array, merge_mode: str | None) -> Any:
    """Combines the two directions' outputs (``[..., H]`` each) as Keras does."""
    if merge_mode == "concat":
        return jnp.concatenate([y_fw, y_bw], axis=-1)  # [..., 2H]
    if merge_mode == "sum":
        return y_fw + y_bw
    if merge_mode == "mul":
        return y_fw * y_bw
    if merge_mode == "ave":
        return (y_fw + y_bw) / 2
    if merge_mode is None:
        return (y_fw, y_bw)
    raise ValueError(f"merge_mode must be one of {MERGE_MODES}; got {merge_mode!r}")


def bidirectional(
    cell: Cell | tuple[Cell, Cell],
    params: BiParams,
    xs: Array,
    initial_carry: tuple[Any, Any] | None = None,
    *,
    mask: Array | None = None,
    lengths: Array | None = None,
    merge_mode: str | None = "concat",
    return_sequences: bool = True,
    return_state: bool = False,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Array | None = None,
    deterministic: bool = True,
    unroll: int | bool = 1,
    remat: int | str | None = None,
    backend: str | backends.Backend = "auto",
) -> Any:
    """Runs a forward and a backward recurrent layer over ``xs [B, T, D]`` and merges them.

    Args:
        cell: one cell function for both directions, or a ``(forward, backward)`` pair.
        params: ``BiParams(forward, backward)``.
        xs: ``[B, T, D]``.
        initial_carry: ``(forward_carry, backward_carry)`` or ``None`` for zeros.
        mask: ``[B, T]`` bool (Keras's mask), or
        lengths: ``[B]`` int (right-padded sequences, PyTorch's packed sequences).
        merge_mode: ``"concat"`` | ``"sum"`` | ``"mul"`` | ``"ave"`` | ``None``.
        return_sequences: all steps ``[B, T, .]``, or the last output of each direction.
        return_state: also return ``(forward_final_carry, backward_final_carry)``.
        dropout, recurrent_dropout, key, deterministic: Keras-style per-sequence dropout
            (each direction draws its own masks from ``fold_in(key, 0 | 1)``).
        unroll, remat, backend: for both directions, as in :func:`jaxrnn.rnn`.

    Returns:
        ``output`` (``[B, T, 2H]`` for concat with sequences; ``[B, 2H]`` without; a pair for
        ``merge_mode=None``), or ``(output, (carry_fw, carry_bw))`` with ``return_state``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import cells
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> params = BiParams(cells.lstm.init(k1, 3, 4), cells.lstm.init(k2, 3, 4))
        >>> xs = jnp.ones((2, 5, 3), jnp.float32)
        >>> ys, (fw, bw) = bidirectional(cells.lstm.cell, params, xs, lengths=jnp.array([5, 2]),
        ...                              return_state=True)
        >>> ys.shape, fw.h.shape, bool((ys[1, 2:] == 0).all())   # padding stays zero
        ((2, 5, 8), (2, 4), True)
    """
    if merge_mode not in MERGE_MODES:
        raise ValueError(
            f"bidirectional: merge_mode must be one of {MERGE_MODES}; got {merge_mode!r}"
        )
    if not isinstance(params, BiParams):
        raise TypeError(
            f"bidirectional: params must be BiParams(forward, backward); got {type(params).__name__}"
        )
    remat = _checks.remat("bidirectional", remat)
    cell_fw, cell_bw = cell if isinstance(cell, tuple) else (cell, cell)
    carry_fw, carry_bw = (None, None) if initial_carry is None else initial_carry
    k_fw = k_bw = None
    if key is not None:
        k_fw, k_bw = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    common = dict(
        mask=mask,
        lengths=lengths,
        return_sequences=return_sequences,
        return_state=True,
        zero_output_for_mask=return_sequences,  # as Keras's Bidirectional forces it
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        deterministic=deterministic,
        unroll=unroll,
        remat=remat,
        backend=backend,
    )
    y_fw, c_fw = recurrent(cell_fw, params.forward, xs, carry_fw, key=k_fw, **common)
    y_bw, c_bw = recurrent(
        cell_bw, params.backward, xs, carry_bw, key=k_bw, go_backwards=True, **common
    )
    if return_sequences:
        y_bw = y_bw[:, ::-1]  # processing order -> time order: [B, T, H]
    output = merge(y_fw, y_bw, merge_mode)
    return (output, (c_fw, c_bw)) if return_state else output
