"""``stack``: stacked recurrent layers, any mix of cells, PyTorch's multi-layer semantics.

::

    h = xs                                          # [B, T, D]
    for k, (cell, p) in enumerate(zip(cells, params)):
        h = layer_k(h)                              # [B, T, H_k], or [B, T, 2 H_k] if bidirectional
        if k < L - 1: h = dropout(h)                # training only; fresh mask per element,
                                                    # step t's from fold_in(fold_in(key, k), t)
    return finals, h

A layer is unidirectional when its params are a cell's params, and
bidirectional (:func:`jaxrnn.bidirectional`, concatenated, PyTorch's layout) when
they are a :class:`~jaxrnn.BiParams`. With one cell for every
layer and ``lengths``, this is exactly PyTorch's ``nn.RNN/LSTM/GRU(num_layers=L,
bidirectional=..., dropout=p)`` on a packed sequence: the outputs padded with
zeros and each layer's final state taken at each sequence's own last step
(see :func:`torch_state` for ``h_n`` / ``c_n``). :func:`jaxrnn.convert.from_torch`
gives the params list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import _checks, backends
from jaxrnn._bidirectional import BiParams, bidirectional
from jaxrnn._recurrent import recurrent
from jaxrnn._rnn import Cell, scan_segments
from jaxrnn.cells._common import Array
from jaxrnn.dropout import dropout_steps


def stack(
    cells: Cell | Sequence[Cell],
    params: Sequence[Any],
    xs: Array,
    initial_carries: Sequence[Any] | None = None,
    *,
    mask: Array | None = None,
    lengths: Array | None = None,
    dropout: float = 0.0,
    key: Array | None = None,
    deterministic: bool = True,
    unroll: int | bool = 1,
    remat: int | str | None = None,
    backend: str | backends.Backend = "auto",
) -> tuple[list[Any], Array]:
    """Runs layers one after the other over ``xs [B, T, D]``.

    Args:
        cells: one cell function for every layer, or one per layer.
        params: per layer, the cell's params, or ``BiParams`` for a bidirectional layer.
        xs: ``[B, T, D]``.
        initial_carries: per layer, its initial carry (``(fw, bw)`` for a bidirectional
            layer), or ``None`` for zeros everywhere.
        mask: ``[B, T]`` bool, or
        lengths: ``[B]`` int. Outputs at masked steps are zeros (PyTorch's padding).
        dropout: rate of the dropout on each layer's output except the last (PyTorch's).
        key: PRNG key for that dropout: layer ``k``'s mask of step ``t`` is drawn from
            ``fold_in(fold_in(key, k), t)`` (:func:`jaxrnn.dropout.dropout_steps`), so the
            time segments of ``remat`` redraw the same masks.
        deterministic: ``True``: no dropout.
        unroll, backend: for every layer, as in :func:`jaxrnn.rnn` (an explicit ``mask``
            runs on ``scan``, see :func:`jaxrnn.recurrent`).
        remat: rematerialised BPTT, as in :func:`jaxrnn.rnn`: the carries kept every ``k``
            steps (``"sqrt"``: ``ceil(sqrt(T))``) and each segment recomputed in the backward
            pass. Same values and gradients. A unidirectional stack runs in time segments
            through all layers (dropout included: each segment redraws its masks), so BPTT
            keeps ``O(T / k)`` carries per layer and one segment's activations, and no inner
            layer's ``[B, T, H]`` outputs or masks. A bidirectional layer needs the whole
            sequence: a stack with one is rematerialised layer by layer, and the outputs
            between layers ``[B, T, H_k]`` are kept.

    Returns:
        ``(finals, ys)``: per layer its final carry (``(fw, bw)`` when bidirectional),
        and the last layer's outputs ``[B, T, H_L]`` (``[B, T, 2 H_L]`` when bidirectional).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import cells
        >>> ks = jax.random.split(jax.random.key(0), 3)
        >>> params = [cells.gru.init(ks[0], 3, 8),                                 # layer 0: GRU
        ...           BiParams(cells.lstm.init(ks[1], 8, 4), cells.lstm.init(ks[2], 8, 4))]
        >>> finals, ys = stack([cells.gru.cell, cells.lstm.cell], params,
        ...                    jnp.ones((2, 6, 3), jnp.float32), lengths=jnp.array([6, 3]))
        >>> ys.shape, finals[0].shape, finals[1][1].c.shape
        ((2, 6, 8), (2, 8), (2, 4))
    """
    L = len(params)
    if L == 0:
        raise ValueError("stack: params must hold at least one layer")
    if callable(cells):
        cells = [cells] * L
    cells = list(cells)
    if len(cells) != L:
        raise ValueError(f"stack: got {len(cells)} cells for {L} layers of params")
    if initial_carries is not None and len(initial_carries) != L:
        raise ValueError(f"stack: got {len(initial_carries)} initial carries for {L} layers")
    if not deterministic and dropout and key is None:
        raise ValueError("stack: dropout with deterministic=False needs a PRNG key; got key=None")
    active = not deterministic and bool(dropout)

    def drop(k, h, steps):
        """Layer ``k``'s output ``h [B, n, H]`` at ``steps [n]`` as the next layer reads it:
        dropout in training, except after the last layer; else ``h`` itself."""
        if not active or k == L - 1:
            return h
        return dropout_steps(jax.random.fold_in(key, k), h, dropout, steps)

    remat = _checks.remat("stack", remat)
    run = dict(mask=mask, lengths=lengths, unroll=unroll, backend=backend)
    if remat is None or any(isinstance(p, BiParams) for p in params):
        return _layers(cells, params, xs, initial_carries, remat=remat, drop=drop, **run)
    # unidirectional: time segments through all layers. Trace the layer-by-layer stack once
    # for its checks (shapes, dtypes, carries, mask, lengths: errors with the full [B, T, D]);
    # nothing of it is compiled or run, and its dropout is left out (it changes no shape).
    keep = lambda k, h, steps: h  # noqa: E731
    jax.eval_shape(
        lambda p, x: _layers(cells, p, x, initial_carries, remat=None, drop=keep, **run), params, xs
    )
    return _segments(cells, params, jnp.asarray(xs), initial_carries, remat=remat, drop=drop, **run)


def _layers(cells, params, xs, initial_carries, *, remat, drop, **run):
    """The stack layer by layer over all of ``xs [B, T, D]``, each layer rematerialised on
    its own with ``remat``."""
    finals, h = [], xs
    for k, (cell, p) in enumerate(zip(cells, params, strict=True)):
        carry0 = None if initial_carries is None else initial_carries[k]
        if isinstance(p, BiParams):
            h, final = bidirectional(cell, p, h, carry0, return_state=True, remat=remat, **run)
        else:
            h, final = recurrent(
                cell, p, h, carry0, return_state=True, zero_output_for_mask=True, remat=remat,
                **run,
            )  # fmt: skip
        finals.append(final)
        h = drop(k, h, jnp.arange(h.shape[1]))
    return finals, h


def _segments(cells, params, xs, initial_carries, *, remat, drop, mask, lengths, **run):
    """A unidirectional stack in checkpointed time segments of ``k`` steps, each running every
    layer over its ``k`` steps (:func:`jaxrnn._rnn.scan_segments`): the backward pass keeps
    each layer's carry at every segment start and recomputes one segment of all layers at a
    time, so no ``[B, T, H]`` activation of an inner layer is kept. With ``lengths`` a
    segment starting at step ``t0`` runs with lengths ``clip(lengths - t0, 0, k)``: the
    carries stay frozen past each sequence's end and the outputs there are zeros, as on the
    whole sequence. ``drop`` (dropout between layers) draws the masks of the segment's own
    steps, the same as on the whole sequence, and again when the backward pass recomputes
    the segment."""
    B, T = xs.shape[:2]
    lengths = None if lengths is None else jnp.asarray(lengths)
    carries0 = [
        _checks.initial_carry(
            "stack", cell, p, None if initial_carries is None else initial_carries[i], (B,)
        )
        for i, (cell, p) in enumerate(zip(cells, params, strict=True))
    ]
    mask_tm = (
        None if mask is None else jnp.swapaxes(_checks.mask("stack", mask, B, T), 0, 1)
    )  # [T, B]

    def segment(carries, seg):
        x, ts, m = seg  # [n, B, D], [n], [n, B] | None
        h = jnp.swapaxes(x, 0, 1)  # [B, n, D]
        seg_lengths = None if lengths is None else jnp.clip(lengths - ts[0], 0, ts.shape[0])
        seg_mask = None if m is None else jnp.swapaxes(m, 0, 1)  # [B, n]
        out = []
        for k, (cell, p, c) in enumerate(zip(cells, params, carries, strict=True)):
            h, c = recurrent(
                cell, p, h, c, mask=seg_mask, lengths=seg_lengths, return_state=True,
                zero_output_for_mask=True, **run,
            )  # fmt: skip
            out.append(c)
            h = drop(k, h, ts)
        return out, jnp.swapaxes(h, 0, 1)  # [n, B, H_L]

    inputs = (jnp.swapaxes(xs, 0, 1), jnp.arange(T), mask_tm)
    finals, ys = scan_segments(segment, carries0, inputs, _checks.remat_segment(remat, T))
    return finals, jnp.swapaxes(ys, 0, 1)  # [B, T, H_L]


def torch_state(finals: Sequence[Any]) -> Any:
    """Finals of :func:`stack` -> PyTorch's ``h_n`` (or ``(h_n, c_n)``): ``[L * dirs, B, H]``.

    Layer by layer, forward before backward, as PyTorch orders them.
    """
    flat = []
    for f in finals:
        flat.extend(
            f if isinstance(f, tuple) and len(f) == 2 and not hasattr(f, "_fields") else [f]
        )
    if hasattr(flat[0], "_fields"):  # LSTMCarry(h, c)
        return tuple(jnp.stack([getattr(c, name) for c in flat]) for name in flat[0]._fields)
    return jnp.stack(flat)
