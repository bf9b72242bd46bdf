"""``rnn``: run any cell over a sequence with ``jax.lax.scan``.

::

    final_carry, ys = rnn(cell, params, xs)      # xs [B, T, D] -> ys [B, T, H]

which is, step for step, the loop ::

    h = h0                                       # [B, H]
    for t in range(T):
        h, ys[:, t] = cell(params, h, xs[:, t])  # [B, D] -> [B, H]

``rnn`` knows nothing about which cell it runs. It adds what a layer needs on
top of a cell: batching layouts, variable lengths, reverse direction, unrolling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells._common import Array, check_float

Cell = Callable[[Any, Any, Array], tuple[Any, Any]]


def _cell_name(cell: Cell) -> str:
    inner = getattr(cell, "func", cell)  # functools.partial
    return getattr(inner, "cell_name", getattr(inner, "__name__", "cell"))


def _initial_carry_fn(cell: Cell) -> Callable[..., Any] | None:
    for obj in (cell, getattr(cell, "func", None)):
        fn = getattr(obj, "initial_carry", None)
        if fn is not None:
            return fn
    return None


def carry_output(carry: Any) -> Array:
    """The part of a carry that is the cell's output ``h [B, H]``: ``carry`` itself, or
    ``carry[0]`` for an LSTM's ``(h, c)``.

    Also Keras's rule for masked steps ("assume the first state is the previous output").
    """
    return carry[0] if isinstance(carry, tuple) else carry


def check_lengths(lengths: Any, batch_shape: tuple[int, ...], T: int) -> Array:
    """``lengths`` as an array, checked at trace time: an integer dtype, shape ``batch_shape``
    (``(B,)``, or ``()`` for unbatched inputs) and, where the values are known (outside
    ``jit``), values in ``[0, T]``; raises ``TypeError`` / ``ValueError`` naming what was
    expected and what was received."""
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must have an integer dtype; got {lengths.dtype}")
    if lengths.shape != batch_shape:
        what = f"[B] = {list(batch_shape)}" if batch_shape else "a scalar () for unbatched xs"
        raise ValueError(f"lengths must have shape {what}; got shape {tuple(lengths.shape)}")
    if not isinstance(lengths, jax.core.Tracer):  # values are only known outside jit
        values = np.asarray(lengths)  # numpy's min/max: a closed-over array inside jit too
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}]; got values in [{lo}, {hi}]")
    return lengths


def _bcast(mask: Array, leaf: Array) -> Array:
    """``mask: [B]`` -> ``[B, 1, ..., 1]`` with the rank of ``leaf``."""
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


def reverse_padded(xs: Array, lengths: Array) -> Array:
    """Reverses each sequence within its own length; padding stays in place.

    Args:
        xs: ``[T, B, ...]`` time-major.
        lengths: ``[B]``.

    Returns:
        ``[T, B, ...]`` with ``out[t, b] = xs[lengths[b] - 1 - t, b]`` for ``t < lengths[b]``
        and ``xs[t, b]`` elsewhere. It is its own inverse.
    """
    T, B = xs.shape[:2]
    t = jnp.arange(T)[:, None]  # [T, 1]
    idx = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B] source steps
    # one row xs[idx[t, b], b] gathered per (t, b): its gradient scatters [T, B] rows, where
    # take_along_axis's scattered every element through a [T, B, D, 3] index array (a training
    # step with reverse=True and lengths, simple cell, B 64, T 250, H 100, 2-core CPU: 20.6 ->
    # 14.3 ms; benchmarks/options.py, benchmarks/RESULTS.md)
    return xs[idx, jnp.arange(B)[None, :]]


def remat_segment(remat: int | str | None, T: int, where: str = "rnn") -> int | None:
    """Steps per checkpointed segment for ``rnn(..., remat=...)`` (``None``: no remat).

    ``where`` names the caller in the error for a bad value.

    >>> remat_segment("sqrt", 100_000), remat_segment(50, 250), remat_segment(None, 250)
    (317, 50, None)
    """
    if remat is None:
        return None
    if remat == "sqrt":
        return max(1, int(np.ceil(np.sqrt(T))))
    if isinstance(remat, bool) or not isinstance(remat, int) or remat < 1:
        raise ValueError(f"{where}: remat must be None, 'sqrt' or a positive int; got {remat!r}")
    return min(remat, max(T, 1))


def scan_segments(
    run: Callable, carry0: Any, inputs: Any, k: int, *, reverse: bool = False
) -> tuple[Any, Any]:
    """``run(carry0, inputs)`` in checkpointed segments of ``k`` steps (rematerialisation).

    ``run(carry, seg) -> (carry, ys)`` runs the recurrence over ``seg`` (``inputs``' leaves
    cut to ``[k, ...]`` along time, their first axis; the last segment holds the remainder
    ``T % k``), ``ys`` leaves ``[k, ...]``. An outer scan over the ``T // k`` segments keeps only
    the carry at each segment start; the backward pass recomputes one segment (``k`` steps of
    residuals) at a time under ``jax.checkpoint``. Memory for BPTT goes from ``O(T)`` carries
    and residuals to ``O(T / k + k)`` (``k = sqrt(T)``: ``O(sqrt(T))``) for about one extra
    forward pass. ``reverse``: ``run`` runs its segment backwards in time, so the segments are
    taken last to first (the remainder first).

    Returns:
        ``(final_carry, ys)``, ``ys`` leaves ``[T, ...]`` in the original time order.
    """
    T = jax.tree.leaves(inputs)[0].shape[0]
    n, r = divmod(T, k)
    segment = jax.checkpoint(run)
    main = jax.tree.map(lambda a: a[: n * k].reshape(n, k, *a.shape[1:]), inputs)  # [n, k, ...]
    rest = jax.tree.map(lambda a: a[n * k :], inputs)  # [r, ...]
    carry = carry0
    if reverse and r:  # the tail comes first when running backwards
        carry, ys_rest = segment(carry, rest)
    carry, ys = jax.lax.scan(segment, carry, main, reverse=reverse)  # ys leaves [n, k, ...]
    ys = jax.tree.map(lambda a: a.reshape(n * k, *a.shape[2:]), ys)
    if not reverse and r:
        carry, ys_rest = segment(carry, rest)
    if r:
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), ys, ys_rest)
    return carry, ys


def _scan(step: Callable, carry0: Any, inputs: Any, *, reverse: bool, unroll: Any, k: int | None):
    """``lax.scan(step, carry0, inputs)``; with ``k``, in checkpointed segments of ``k`` steps
    (:func:`scan_segments`)."""
    if k is None:
        return jax.lax.scan(step, carry0, inputs, reverse=reverse, unroll=unroll)
    return scan_segments(
        lambda carry, seg: jax.lax.scan(step, carry, seg, reverse=reverse, unroll=unroll),
        carry0, inputs, k, reverse=reverse,
    )  # fmt: skip


def rnn(
    cell: Cell,
    params: Any,
    xs: Array,
    h0: Any = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    time_major: bool = False,
    remat: int | str | None = None,
) -> tuple[Any, Any]:
    """Runs ``cell`` over the time axis of ``xs`` with ``jax.lax.scan``.

    Works under ``jax.jit``, ``jax.grad`` (backpropagation through time) and ``jax.vmap``.

    Args:
        cell: a function ``cell(params, carry, x) -> (carry, y)`` (see :mod:`jaxrnn.cells`).
        params: the cell's parameters.
        xs: ``[B, T, D]``; ``[T, B, D]`` with ``time_major=True``; or ``[T, D]`` unbatched.
        h0: initial carry (leaves ``[B, H]`` or ``[H]``); ``None`` for the cell's zero state.
        lengths: ``[B]`` int (a scalar for unbatched ``xs``): sequence ``b`` is
            ``xs[b, :lengths[b]]``. Steps past a sequence's length leave its carry
            unchanged and give zero outputs, so the final carry is each sequence's
            state at its own last step. Values must lie in ``[0, T]`` (checked when
            concrete; under ``jit`` larger values act as ``T``).
        reverse: run from the last step to the first (with ``lengths``: from each
            sequence's own last step). Outputs come back in the original time order.
        unroll: passed to ``lax.scan``: steps per loop iteration (``True``: all).
        time_major: whether ``xs`` (and ``ys``) are ``[T, B, ...]``.
        remat: rematerialise for memory: ``k`` checkpoints the carry every ``k`` steps
            and recomputes each segment in the backward pass; ``"sqrt"`` uses
            ``k = ceil(sqrt(T))``. Same values and gradients, BPTT memory
            ``O(T / k + k)`` instead of ``O(T)``, about one more forward pass of compute.

    Returns:
        ``(final_carry, ys)``: the carry after the last processed step, and the cell's
        outputs stacked over time in the layout of ``xs``: ``[B, T, H]`` / ``[T, B, H]`` / ``[T, H]``.

    Raises:
        ValueError, TypeError: at trace time, for a wrong rank, width, dtype, carry or lengths.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import cells, rnn
        >>> params = cells.simple.init(jax.random.key(0), 32, 100)
        >>> xs = jnp.ones((250, 32), jnp.float32)                       # one review: 250 steps of 32 features
        >>> h_last, hs = rnn(cells.simple.cell, params, xs)
        >>> h_last.shape, hs.shape                         # SimpleRNN(100) output, and return_sequences=True
        ((100,), (250, 100))
    """
    name = _cell_name(cell)
    check_float("rnn: xs", xs)
    xs = jnp.asarray(xs)
    if xs.ndim not in (2, 3):
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(
            f"rnn: xs must be {layout} (batched) or [T, D] (unbatched); "
            f"got rank {xs.ndim} with shape {tuple(xs.shape)}"
        )
    if isinstance(unroll, bool):
        pass
    elif not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"rnn: unroll must be a positive int or a bool; got {unroll!r}")
    remat_segment(remat, 1)  # validates the option

    batched = xs.ndim == 3
    if not batched:
        xs_tm = xs[:, None, :]  # [T, 1, D]
    elif time_major:
        xs_tm = xs  # [T, B, D]
    else:
        xs_tm = jnp.swapaxes(xs, 0, 1)  # [B, T, D] -> [T, B, D]
    T, B = xs_tm.shape[0], xs_tm.shape[1]
    batch_shape = (B,) if batched else ()

    if lengths is not None:
        lengths = check_lengths(lengths, batch_shape, T)
        lengths = lengths.reshape((B,))  # [B]

    h0_given = h0 is not None
    if h0 is None:
        init_fn = _initial_carry_fn(cell)
        if init_fn is None:
            raise ValueError(
                f"rnn: h0=None needs cell.initial_carry, which {name!r} does not have; pass h0"
            )
        h0 = init_fn(params, batch_shape)
    carry0 = h0 if batched else jax.tree.map(lambda a: jnp.asarray(a)[None], h0)

    # Trace one step now, in Python, so a wrong width or carry is reported here with
    # the shapes of xs rather than as an error from inside scan.
    x_step = jax.ShapeDtypeStruct((B, xs_tm.shape[2]), xs_tm.dtype)
    try:
        carry_out, _ = jax.eval_shape(lambda c, x: cell(params, c, x), carry0, x_step)
    except (ValueError, TypeError) as e:
        shape_kind = "[T, B, D]" if time_major else "[B, T, D]"
        raise type(e)(
            f"{e}\n  (while running rnn over xs of shape {tuple(xs.shape)}, "
            f"read as {shape_kind if batched else '[T, D]'}; h0 was "
            f"{'given' if h0_given else 'None (zeros from cell.initial_carry)'})"
        ) from None
    c_in = jax.tree.map(lambda a: (tuple(jnp.shape(a)), jnp.result_type(a)), carry0)
    c_out = jax.tree.map(lambda a: (tuple(a.shape), a.dtype), carry_out)
    if c_in != c_out:
        raise TypeError(
            f"rnn: {name} turns a carry of (shape, dtype) {c_in} into {c_out}; they must match. "
            f"xs is {xs.dtype}: give xs and h0 the parameters' dtype "
            "(e.g. xs.astype(jnp.float32), or init the cell with dtype=xs.dtype)"
        )

    if lengths is None:

        def step(carry, x):
            return cell(params, carry, x)

        carry, ys = _scan(
            step, carry0, xs_tm, reverse=reverse, unroll=unroll, k=remat_segment(remat, T)
        )
    else:
        if reverse:
            xs_tm = reverse_padded(xs_tm, lengths)

        def step(carry, inp):
            x, t = inp
            new_carry, y = cell(params, carry, x)
            alive = t < lengths  # [B]
            carry = jax.tree.map(lambda n, o: jnp.where(_bcast(alive, n), n, o), new_carry, carry)
            y = jax.tree.map(lambda a: jnp.where(_bcast(alive, a), a, jnp.zeros_like(a)), y)
            return carry, y

        carry, ys = _scan(
            step, carry0, (xs_tm, jnp.arange(T)), reverse=False, unroll=unroll,
            k=remat_segment(remat, T),
        )  # fmt: skip
        if reverse:
            ys = jax.tree.map(lambda a: reverse_padded(a, lengths), ys)

    if not batched:
        carry = jax.tree.map(lambda a: a[0], carry)
        ys = jax.tree.map(lambda a: a[:, 0], ys)  # [T, 1, H] -> [T, H]
    elif not time_major:
        ys = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)  # [T, B, H] -> [B, T, H]
    return carry, ys
