"""``recurrent``: a Keras ``RNN`` layer (``SimpleRNN``, ``LSTM``, ``GRU``) as one pure function.

::

    ys = recurrent(cells.lstm.cell, params, xs)                       # LSTM(H, return_sequences=True)
    y_T, carry = recurrent(cell, params, xs, return_sequences=False, return_state=True)
    ys = recurrent(cell, params, xs, mask=mask)                       # mask [B, T], e.g. mask_zero
    ys = recurrent(cell, params, xs, dropout=0.2, recurrent_dropout=0.1,
                   key=key, deterministic=False)                      # training=True

What it adds on top of :func:`jaxrnn.rnn`, with Keras 3's semantics (checked live in
``tests/test_parity.py``):

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

from jaxrnn import _checks, _rnn, backends
from jaxrnn.cells._common import Array, carry_output
from jaxrnn.dropout import rnn_dropout_masks, with_masks


def _bcast(mask: Array, leaf: Array) -> Array:
    """``mask: [B]`` -> ``[B, 1, ..., 1]`` with the rank of ``leaf``."""
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


def masked_scan(
    cell: _rnn.Cell, params: Any, xs: Array, carry0: Any, mask: Array, *,
    reverse: bool = False, zero_output_for_mask: bool = False, unroll: int | bool = 1,
    k: int | None = None,
) -> tuple[Any, Array]:  # fmt: skip
    """The masked time loop of Keras's JAX backend, time-major: the loop an arbitrary mask
    (steps skipped in the middle) needs, on ``lax.scan``.

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
            (:func:`jaxrnn._rnn.scan_segments`); ``None``: one scan.

    Returns:
        ``(final_carry, ys [T, B, H])`` with ``ys[t]`` the output at time ``t``.
    """

    def step(carry, inp):
        x, m = inp  # [B, D], [B]
        x = jnp.where(m[:, None], x, jnp.zeros_like(x))  # the padding never reaches a gradient
        new_carry, y = cell(params, carry, x)
        y_masked = jnp.zeros_like(y) if zero_output_for_mask else carry_output(carry)
        y = jnp.where(_bcast(m, y), y, y_masked)
        new_carry = jax.tree.map(lambda n, o: jnp.where(_bcast(m, n), n, o), new_carry, carry)
        return new_carry, y

    def run(carry, seg):
        return jax.lax.scan(step, carry, seg, reverse=reverse, unroll=unroll)

    if k is None:
        return run(carry0, (xs, mask))
    return _rnn.scan_segments(run, carry0, (xs, mask), k, reverse=reverse)


def recurrent(
    cell: _rnn.Cell,
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
    unroll: int | bool = 1,
    remat: int | str | None = None,
    backend: str | backends.Backend = "auto",
) -> Any:
    """Runs ``cell`` over ``xs [B, T, D]`` exactly as a Keras 3 RNN layer does.

    Args:
        cell: a cell function (:mod:`jaxrnn.cells`).
        params: its parameters.
        xs: ``[B, T, D]``.
        initial_carry: leaves ``[B, H]`` (Keras's ``initial_state``); ``None``: zeros.
        mask: ``[B, T]`` bool, ``True`` where a step is real (Keras's ``mask``). An
            arbitrary mask can skip steps in the middle, which only the ``scan`` backend
            runs; right-padded sequences run on any backend as ``lengths``.
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
        unroll, remat, backend: as in :func:`jaxrnn.rnn`.

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
    where = "recurrent"
    xs = _checks.floating(f"{where}: xs", xs)
    if xs.ndim != 3:
        raise ValueError(f"{where}: xs must be [B, T, D]; got shape {tuple(xs.shape)}")
    B, T, D = xs.shape
    unroll = _checks.unroll(where, unroll)
    k = _checks.remat_segment(_checks.remat(where, remat), T)
    b = backends.resolve(backend)
    if mask is not None and lengths is not None:
        raise ValueError(f"{where}: pass mask or lengths, not both")
    if lengths is not None:
        lengths = _checks.lengths(where, lengths, (B,), T)
    elif mask is not None:
        mask = _checks.mask(where, mask, B, T)
    initial_carry = _checks.initial_carry(where, cell, params, initial_carry, (B,))

    if not deterministic and (dropout or recurrent_dropout):
        if key is None:
            raise ValueError(
                f"{where}: dropout with deterministic=False needs a PRNG key; got key=None"
            )
        masks = rnn_dropout_masks(
            key, cell, D, int(carry_output(initial_carry).shape[-1]), (B,), dropout=dropout,
            recurrent_dropout=recurrent_dropout, per_gate=per_gate_masks, dtype=xs.dtype,
        )  # fmt: skip
        cell = with_masks(cell, masks)

    context = f"while running recurrent over xs of shape {tuple(xs.shape)}, read as [B, T, D]"
    _checks.step(
        where, cell, params, initial_carry, jax.ShapeDtypeStruct((B, D), xs.dtype), context
    )
    xs_tm = jnp.swapaxes(xs, 0, 1)  # [T, B, D]
    if mask is not None:
        if b.name not in ("auto", "scan"):
            raise ValueError(
                f"{where}: backend {b.name!r} cannot skip masked steps in the middle of a "
                "sequence; pass right-padded sequences as lengths, or use backend 'scan' / 'auto'"
            )
        carry, ys = masked_scan(
            cell, params, xs_tm, initial_carry, jnp.swapaxes(mask, 0, 1), reverse=go_backwards,
            zero_output_for_mask=zero_output_for_mask, unroll=unroll, k=k,
        )  # fmt: skip
    elif T == 0:
        carry, ys = (
            initial_carry,
            jnp.zeros((0, B, carry_output(initial_carry).shape[-1]), xs.dtype),
        )
    else:
        choice = backends.select(cell, params, xs.dtype, b)
        carry, ys = _rnn.run(
            choice, cell, params, xs_tm, initial_carry, lengths=lengths, reverse=go_backwards,
            unroll=unroll, k=k,
        )  # fmt: skip  # ys [T, B, H] in time order, zeros past each length
        if lengths is not None and not zero_output_for_mask:
            # a masked step outputs the carry's h: the final one past a sequence's end, the
            # initial one when going backwards (the padding is processed first)
            fill = carry_output(initial_carry if go_backwards else carry)  # [B, H]
            alive = jnp.arange(T)[:, None] < lengths[None, :]  # [T, B]
            ys = jnp.where(alive[:, :, None], ys, fill[None])
    if go_backwards:
        ys = ys[::-1]  # processing order, as Keras returns it
    output = jnp.swapaxes(ys, 0, 1) if return_sequences else ys[-1]  # [B, T, H] | [B, H]
    return (output, carry) if return_state else output
