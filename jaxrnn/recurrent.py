"""``recurrent``: a Keras ``RNN`` layer (``SimpleRNN``, ``LSTM``, ``GRU``) as one pure function.

::

    ys = recurrent(cells.lstm.cell, params, xs)                       # LSTM(H, return_sequences=True)
    y_T, carry = recurrent(cell, params, xs, return_sequences=False, return_state=True)
    ys = recurrent(cell, params, xs, mask=mask)                       # mask [B, T], e.g. mask_zero
    ys = recurrent(cell, params, xs, dropout=0.2, recurrent_dropout=0.1,
                   key=key, deterministic=False)                      # training=True

What it adds on top of :func:`jaxrnn.rnn`, with Keras 3's semantics (read from
``keras.src.backend.jax.rnn.rnn`` and checked live in ``tests/test_parity.py``):

* **Masks** ``[B, T]`` (``True`` = real step), right-padded or arbitrary. At a
  masked step the carry is left unchanged and the output is the carry's ``h``
  (the previous step's output; ``h0`` before the first real step), or zeros with
  ``zero_output_for_mask=True`` (which Keras's ``Bidirectional`` switches on when it
  returns sequences). ``lengths`` ``[B]`` is the right-padded mask ``t < lengths``.
* **go_backwards**: steps run from ``T - 1`` down to ``0`` (masked steps skipped,
  so with right padding each sequence starts at its own last step) and the
  outputs come back **in processing order**, i.e. reversed in time, as Keras
  returns them. (:func:`jaxrnn.rnn` with ``reverse=True`` keeps the time order.)
* **return_sequences / return_state**: the last output is the output of the last
  processed step, ``ys[:, -1]`` in processing order, as in Keras.
* **dropout / recurrent_dropout**: one mask per sequence for all steps
  (:mod:`jaxrnn.dropout`), drawn from ``key`` when ``deterministic=False``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells._common import Array, check_float
from jaxrnn.dropout import rnn_dropout_masks, with_masks
from jaxrnn.fast import rnn as fast_rnn
from jaxrnn.layer import (
    Cell,
    _bcast,
    _cell_name,
    _initial_carry_fn,
    _scan,
    carry_output,
    remat_segment,
    rnn,
)


def check_mask(mask: Any, B: int, T: int, what: str = "mask") -> Array:
    """Validates a Keras-style mask ``[B, T]`` (bool or 0/1) and returns it as bool."""
    mask = jnp.asarray(mask)
    if mask.shape != (B, T):
        raise ValueError(
            f"{what} must have shape [B, T] = [{B}, {T}]; got shape {tuple(mask.shape)}"
        )
    if mask.dtype != jnp.bool_:
        if not (
            jnp.issubdtype(mask.dtype, jnp.integer) or jnp.issubdtype(mask.dtype, jnp.floating)
        ):
            raise TypeError(f"{what} must be bool (or 0/1 numbers); got dtype {mask.dtype}")
        mask = mask != 0
    return mask


def lengths_to_mask(lengths: Array, T: int) -> Array:
    """``lengths [B]`` -> the right-padded mask ``[B, T]``, ``mask[b, t] = t < lengths[b]``."""
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer) or lengths.ndim != 1:
        raise ValueError(
            f"lengths must be an integer array of shape [B]; got {lengths.dtype} {lengths.shape}"
        )
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)  # numpy's min/max: a closed-over array inside jit too
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}]; got values in [{lo}, {hi}]")
    return jnp.arange(T)[None, :] < lengths[:, None]


def masked_scan(
    cell: Cell,
    params: Any,
    xs: Array,
    carry0: Any,
    mask: Array,
    *,
    reverse: bool = False,
    zero_output_for_mask: bool = False,
    unroll: int | bool = 1,
    k: int | None = None,
) -> tuple[Any, Array]:
    """The masked time loop of Keras's JAX backend, time-major.

    Args:
        cell: ``cell(params, carry, x) -> (carry, y)``.
        params: the cell's parameters.
        xs: ``[T, B, D]``.
        carry0: leaves ``[B, H]``.
        mask: ``[T, B]`` bool.
        reverse: scan from ``T - 1`` to ``0``; outputs stay indexed by time.
        zero_output_for_mask: masked outputs are zeros instead of the carry's ``h``.
        unroll: ``lax.scan``'s unroll.
        k: rematerialise: checkpointed segments of ``k`` steps
            (:func:`jaxrnn.layer.scan_segments`); ``None``: one scan.

    Returns:
        ``(final_carry, ys [T, B, H])`` with ``ys[t]`` the output at time ``t``.
    """

    def step(carry, inp):
        x, m = inp  # [B, D], [B]
        new_carry, y = cell(params, carry, x)
        y_masked = jnp.zeros_like(y) if zero_output_for_mask else carry_output(carry)
        y = jnp.where(_bcast(m, y), y, y_masked)
        new_carry = jax.tree.map(lambda n, o: jnp.where(_bcast(m, n), n, o), new_carry, carry)
        return new_carry, y

    return _scan(step, carry0, (xs, mask), reverse=reverse, unroll=unroll, k=k)


def recurrent(
    cell: Cell,
    params: Any,
    xs: Array,
    initial_carry: Any = None,
    *,
    mask: Array | None = None,
    lengths: Array | None = None,
    go_backwards: bool = False,
    return_sequences: bool = True,
    return_state: bool = False,
    zero_output_for_mask: bool = False,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Array | None = None,
    deterministic: bool = True,
    per_gate_masks: bool | None = None,
    unroll: int | bool | None = None,
    fast: bool = False,
    remat: int | str | None = None,
) -> Any:
    """Runs ``cell`` over ``xs [B, T, D]`` exactly as a Keras 3 RNN layer does.

    Args:
        cell: a cell function (:mod:`jaxrnn.cells`).
        params: its parameters.
        xs: ``[B, T, D]``.
        initial_carry: leaves ``[B, H]`` (Keras's ``initial_state``); ``None``: zeros.
        mask: ``[B, T]`` bool, ``True`` where a step is real (Keras's ``mask``).
        lengths: ``[B]`` int, the same as ``mask = arange(T) < lengths[:, None]``.
        go_backwards: process the sequence in reverse; outputs in processing order.
        return_sequences: return all outputs ``[B, T, H]``, else the last one ``[B, H]``.
        return_state: also return the final carry.
        zero_output_for_mask: masked steps output zeros instead of the previous output.
        dropout: rate of the per-sequence input mask (Keras's ``dropout``).
        recurrent_dropout: rate of the per-sequence recurrent mask.
        key: PRNG key for the dropout masks (needed when ``deterministic=False`` and a rate > 0).
        deterministic: ``True`` for inference (Keras's ``training=False``): no dropout.
        per_gate_masks: see :func:`jaxrnn.dropout.rnn_dropout_masks` (``None``: as Keras).
        unroll: ``lax.scan``'s unroll (``None``: 1); with ``fast``, the fast path's
            (``None``: its default, :data:`jaxrnn.fast.DEFAULT_UNROLL`).
        fast: run on :func:`jaxrnn.fast.rnn` (the same numbers up to rounding) unless an
            explicit ``mask`` is given (an arbitrary mask can skip steps in the middle;
            right-padded sequences should come as ``lengths``). With ``lengths`` the masked
            steps' outputs are filled in after the loop: the carry's ``h`` at each
            sequence's last real step (the initial one with ``go_backwards``, whose masked
            steps come first), or zeros with ``zero_output_for_mask``. Where no fast kernel
            applies (other cells, dropout masks bound to the cell) ``fast.rnn`` runs the plain
            loop with the same semantics.
        remat: rematerialise for memory, as in :func:`jaxrnn.rnn`: ``k`` checkpoints the
            carry every ``k`` steps (``"sqrt"``: ``ceil(sqrt(T))``) and recomputes each
            segment in the backward pass, on either path. Same values and gradients.

    Returns:
        ``output`` — ``[B, T, H]`` or ``[B, H]`` — or ``(output, final_carry)`` with
        ``return_state``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import cells
        >>> params = cells.gru.init(jax.random.key(0), 3, 5)
        >>> xs = jax.random.normal(jax.random.key(1), (2, 4, 3), jnp.float32)   # [B, T, D]
        >>> mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)               # 2nd: 2 real steps
        >>> ys, h = recurrent(cells.gru.cell, params, xs, mask=mask, return_state=True)
        >>> ys.shape, h.shape
        ((2, 4, 5), (2, 5))
        >>> bool((ys[1, 3] == ys[1, 1]).all() and (h[1] == ys[1, 1]).all())  # masked: repeat
        True
    """
    check_float("recurrent: xs", xs)
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"recurrent: xs must be [B, T, D]; got shape {tuple(xs.shape)}")
    B, T, D = xs.shape
    k = remat_segment(remat, T, "recurrent")
    if mask is not None and lengths is not None:
        raise ValueError("recurrent: pass mask or lengths, not both")
    on_fast_path = fast and mask is None
    if lengths is not None:
        if jnp.shape(lengths) != (B,):
            raise ValueError(
                f"lengths must have shape [B] = [{B}]; got {tuple(jnp.shape(lengths))}"
            )
        mask = lengths_to_mask(lengths, T)
    elif mask is not None:
        mask = check_mask(mask, B, T)

    if initial_carry is None:
        init_fn = _initial_carry_fn(cell)
        if init_fn is None:
            raise ValueError(f"recurrent: {_cell_name(cell)!r} has no initial_carry; pass one")
        initial_carry = init_fn(params, (B,))

    if not deterministic and (dropout or recurrent_dropout):
        if key is None:
            raise ValueError("recurrent: dropout with deterministic=False needs a PRNG key")
        carry_h = carry_output(initial_carry)
        masks = rnn_dropout_masks(
            key,
            cell,
            D,
            int(carry_h.shape[-1]),
            (B,),
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            per_gate=per_gate_masks,
            dtype=xs.dtype,
        )
        cell = with_masks(cell, masks)

    xs_tm = jnp.swapaxes(xs, 0, 1)  # [T, B, D]
    if mask is None:
        mask_tm = jnp.ones((T, B), bool)
    else:
        mask_tm = jnp.swapaxes(mask, 0, 1)  # [T, B]
    # rnn() checks the cell against xs and the carry at trace time (shapes, dtypes).
    jax.eval_shape(lambda p, x, c: rnn(cell, p, x, c), params, xs, initial_carry)

    if on_fast_path:
        # ys [T, B, H] in time order, zeros at masked steps
        carry, ys = fast_rnn(
            cell, params, xs_tm, initial_carry, lengths=lengths, reverse=go_backwards,
            unroll=unroll, time_major=True, remat=remat,
        )  # fmt: skip
        if lengths is not None and not zero_output_for_mask:
            # a masked step outputs the carry's h: the final one past a sequence's end, the
            # initial one when going backwards (the padding is processed first)
            fill = carry_output(initial_carry if go_backwards else carry)  # [B, H]
            ys = jnp.where(mask_tm[:, :, None], ys, fill[None])
    else:
        carry, ys = masked_scan(
            cell,
            params,
            xs_tm,
            initial_carry,
            mask_tm,
            reverse=go_backwards,
            zero_output_for_mask=zero_output_for_mask,
            unroll=1 if unroll is None else unroll,
            k=k,
        )  # ys [T, B, H] in time order
    if go_backwards:
        ys = ys[::-1]  # processing order, as Keras returns it
    output = jnp.swapaxes(ys, 0, 1) if return_sequences else ys[-1]  # [B, T, H] | [B, H]
    return (output, carry) if return_state else output
