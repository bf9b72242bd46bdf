"""``rnn``: run any cell over a sequence.

::

    final_carry, ys = rnn(cell, params, xs)      # xs [B, T, D] -> ys [B, T, H]

which is, step for step, the loop ::

    h = h0                                       # [B, H]
    for t in range(T):
        h, ys[:, t] = cell(params, h, xs[:, t])  # [B, D] -> [B, H]

``rnn`` knows nothing about which cell it runs. It adds what a layer needs on top of a cell
(batching layouts, variable lengths, reverse direction, rematerialisation) in one place for
every backend (:mod:`jaxrnn.backends`), which only runs the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks, backends
from jaxrnn.backends import _recurrence, cpu
from jaxrnn.cells._common import Array, Cell, carry_output


class Embedded(NamedTuple):
    """Inputs ``xs = embedding[ids]`` given as the table and the ids.

    :func:`rnn` then folds the embedding into a hoisted backend's input projection: it
    projects the table once (``[V, D] @ [D, G H]``) and gathers its rows step by step, or,
    for fewer tokens than rows, projects the rows it needs; ``scan`` gathers ``[B, T, D]``.

    Attributes:
        embedding: ``[V, D]``.
        ids: ``[B, T]`` int (``[T, B]`` with ``time_major``; ``[T]`` unbatched), in ``[0, V)``.
    """

    embedding: Array
    ids: Array


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
    # a row gathered per (t, b): its gradient scatters [T, B] rows, not single elements
    return xs[idx, jnp.arange(B)[None, :]]


def scan_segments(
    run: Callable, carry0: Any, inputs: Any, k: int, *, reverse: bool = False
) -> tuple[Any, Any]:
    """``run(carry0, inputs)`` in checkpointed segments of ``k`` steps (rematerialisation).

    ``run(carry, seg) -> (carry, ys)`` runs the recurrence over ``seg`` (``inputs``' leaves
    cut to ``[k, ...]`` along time, their first axis; the last segment holds the remainder
    ``T % k``), ``ys`` leaves ``[k, ...]``. An outer scan over the ``T // k`` segments keeps only
    the carry at each segment start; the backward pass recomputes one segment at a time under
    ``jax.checkpoint``. Memory for BPTT goes from ``O(T)`` to ``O(T / k + k)`` (``k =
    sqrt(T)``: ``O(sqrt(T))``) for about one extra forward pass. ``reverse``: ``run`` runs its
    segment backwards in time, so the segments are taken last to first.

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


def state_at(states: Any, before: Any, steps: Array) -> Any:
    """Row ``b``'s carry after ``steps[b]`` steps: ``states[steps[b] - 1, b]``, or
    ``before[b]`` where ``steps[b] == 0``.

    Args:
        states: carry leaves ``[n, B, ...]``, the carry after each step.
        before: carry leaves ``[B, ...]``, the carry before the first.
        steps: ``[B]`` int in ``[0, n]``.
    """
    n = jnp.clip(steps, 0, jax.tree.leaves(states)[0].shape[0])
    rows = jnp.arange(n.shape[0])

    def pick(s, b):
        got = s[jnp.maximum(n - 1, 0), rows]  # [B, ...]
        return jnp.where((n > 0).reshape(-1, *([1] * (got.ndim - 1))), got, b)

    return jax.tree.map(pick, states, before)


def _time_length(inputs: Array | Embedded) -> int:
    return (inputs.ids if isinstance(inputs, Embedded) else inputs).shape[0]


def _map_time(f: Callable[[Array], Array], inputs: Array | Embedded) -> Array | Embedded:
    """``f`` on the time-major steps of ``inputs`` (the ids of an :class:`Embedded`)."""
    if isinstance(inputs, Embedded):
        return Embedded(inputs.embedding, f(inputs.ids))
    return f(inputs)


def _project(
    choice: backends.Choice, params: Any, x: Array | Embedded
) -> tuple[Array, Array | None]:
    """``(U, ids)`` for a hoisted backend: ``U = x @ W_x + b: [n, B, G H]`` (``ids``
    ``None``), or a projected table ``[V, G H]`` and the ids ``[n, B]`` to gather."""
    h = choice.hoisted
    s = h.split(params)
    if isinstance(x, Embedded):
        E, ids = x.embedding, x.ids
        n, B = ids.shape
        if h.x_mask is None and n * B >= E.shape[0]:  # project the table once, gather rows
            if choice.name == "native":
                return cpu.project_table(E, s.W_x, s.b_x), ids
            return s.project(params, E), ids
        if h.x_mask is None and choice.name == "native":
            return cpu.project_rows(E, ids, s.W_x, s.b_x), None
        x = jnp.take(E, ids, axis=0)  # [n, B, D]
    n, B, D = x.shape
    if h.x_mask is None:  # one 2-D product: its gradient needs no layout copy on XLA:CPU
        return s.project(params, x.reshape(n * B, D)).reshape(n, B, -1), None
    mask = h.x_mask  # [B, D] or [G, B, D]: the same for every step
    mask = jnp.broadcast_to(mask[..., None, :, :], (*mask.shape[:-2], n, B, D))
    return s.project(params, x, mask), None


def _steps(
    choice: backends.Choice, cell: Cell, params: Any, x: Array | Embedded, carry: Any,
    unroll: int | bool, states: bool,
) -> tuple[Any, Any, Array]:  # fmt: skip
    """One run of the loop over ``x`` (time-major): ``(states or None, final, ys [n, B, H])``."""
    if choice.name == "scan":
        if isinstance(x, Embedded):
            x = jnp.take(x.embedding, x.ids, axis=0)  # [n, B, D]

        same = []  # the carry leaf that is y itself (the built-in cells output their h)

        def step(c, x_t):
            c, y = cell(params, c, x_t)
            if not states:
                return c, (y, None)
            same[:] = [i for i, leaf in enumerate(jax.tree.leaves(c)) if leaf is y]
            # y once, inside the carry: jit(grad(scan)) in jax 0.10 differentiated a scan
            # whose outputs held one value twice (y and the carry's h) wrongly
            return c, ((None, c) if same else (y, c))

        final, (ys, all_states) = jax.lax.scan(step, carry, x, unroll=unroll)
        if states and same:
            ys = jax.tree.leaves(all_states)[same[0]]
        return all_states, final, ys
    U, ids = _project(choice, params, x)
    all_states, final = _recurrence.recurrence(
        choice.impl, choice.hoisted.split, params, U, ids, carry, unroll
    )
    return all_states, final, carry_output(all_states)


def run(
    choice: backends.Choice, cell: Cell, params: Any, inputs: Array | Embedded, carry0: Any,
    *, lengths: Array | None = None, reverse: bool = False, unroll: int | bool = 1,
    k: int | None = None,
) -> tuple[Any, Array]:  # fmt: skip
    """The loop of :func:`rnn` on checked, time-major inputs.

    Args:
        choice: from :func:`jaxrnn.backends.select`.
        cell, params: the cell.
        inputs: ``[T, B, D]``, or an :class:`Embedded` with ids ``[T, B]``.
        carry0: leaves ``[B, ...]``.
        lengths: ``[B]`` int in ``[0, T]`` or ``None``. The steps past a sequence's length
            run on zeros (their values never reach the results or the gradients); the final
            carry is each sequence's state at its length and ``ys`` are zero past it.
        reverse: from the last step to the first (with ``lengths``, from each sequence's
            own last step); ``ys`` in the original time order.
        unroll: steps per iteration of the loops of ``scan`` and ``xla``.
        k: steps per checkpointed segment (:func:`scan_segments`), or ``None``.

    Returns:
        ``(final_carry, ys [T, B, H])``.
    """
    T = _time_length(inputs)
    if reverse:
        flip = (lambda a: a[::-1]) if lengths is None else (lambda a: reverse_padded(a, lengths))
        inputs = _map_time(flip, inputs)
    if lengths is not None:
        alive = jnp.arange(T)[:, None] < lengths[None, :]  # [T, B]
        if isinstance(inputs, Embedded):
            inputs = Embedded(inputs.embedding, jnp.where(alive, inputs.ids, 0))
        else:  # selected, not multiplied: any value in the padding gives the same gradients
            inputs = jnp.where(alive[:, :, None], inputs, jnp.zeros_like(inputs))

    table = inputs.embedding if isinstance(inputs, Embedded) else None

    def segment(carry, seg):
        x, ts = seg  # x: [n, B, D] (or ids [n, B]); ts: [n] the steps' indices
        if choice.name == "linear":  # the cell's scan holds each state past its length itself
            if table is not None:
                x = jnp.take(table, x, axis=0)  # [n, B, D]
            n = x.shape[0]
            seg_lengths = None if lengths is None else jnp.clip(lengths - ts[0], 0, n)
            final, ys = choice.scan(params, jnp.swapaxes(x, 0, 1), carry, lengths=seg_lengths)
            return final, jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)  # [n, B, H]
        if table is not None:  # the table is whole in every segment: only the ids are cut
            x = Embedded(table, x)
        if lengths is None:
            _, final, ys = _steps(choice, cell, params, x, carry, unroll, states=False)
            return final, ys
        loop, picked = carry
        all_states, final, ys = _steps(choice, cell, params, x, loop, unroll, states=True)
        picked = state_at(all_states, picked, jnp.clip(lengths - ts[0], 0, ts.shape[0]))
        return (final, picked), ys

    paired = lengths is not None and choice.name != "linear"  # (running, picked) carries
    start = (carry0, carry0) if paired else carry0
    seq = (inputs.ids if table is not None else inputs, jnp.arange(T))
    carry, ys = segment(start, seq) if k is None else scan_segments(segment, start, seq, k)
    if paired:
        carry = carry[1]
    if lengths is not None:
        alive = jnp.arange(T)[:, None] < lengths[None, :]
        ys = jax.tree.map(
            lambda y: jnp.where(
                alive.reshape(*alive.shape, *([1] * (y.ndim - 2))), y, jnp.zeros_like(y)
            ),
            ys,
        )
    if reverse:
        flip = (lambda a: a[::-1]) if lengths is None else (lambda a: reverse_padded(a, lengths))
        ys = jax.tree.map(flip, ys)
    return carry, ys


def rnn(
    cell: Cell,
    params: Any,
    xs: Array | Embedded,
    h0: Any = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    time_major: bool = False,
    remat: int | str | None = None,
    backend: str | backends.Backend = "auto",
) -> tuple[Any, Any]:
    """Runs ``cell`` over the time axis of ``xs``.

    Works under every JAX transformation (``jit``, ``grad`` = backpropagation through time,
    ``vmap``, ``jvp``, ``jacfwd``, ``hessian``, ...) on every backend.

    Args:
        cell: a function ``cell(params, carry, x) -> (carry, y)`` (see :mod:`jaxrnn.cells`).
        params: the cell's parameters.
        xs: ``[B, T, D]``; ``[T, B, D]`` with ``time_major=True``; or ``[T, D]`` unbatched.
            Or :class:`Embedded` ``(embedding [V, D], ids [B, T])``: ``xs = embedding[ids]``.
        h0: initial carry (leaves ``[B, H]`` or ``[H]``); ``None`` for the cell's zero state.
        lengths: ``[B]`` int (a scalar for unbatched ``xs``): sequence ``b`` is
            ``xs[b, :lengths[b]]``. The final carry is each sequence's state at its own last
            step, the outputs past it are zeros, and nothing in the padding reaches the
            results or their gradients. Values must lie in ``[0, T]`` (checked when concrete;
            under ``jit`` larger values act as ``T``).
        reverse: run from the last step to the first (with ``lengths``: from each
            sequence's own last step). Outputs come back in the original time order.
        unroll: steps per iteration of the loops of the ``scan`` and ``xla`` backends (the
            kernels have none); ``True``: all.
        time_major: whether ``xs`` (and ``ys``) are ``[T, B, ...]``.
        remat: rematerialise for memory: ``k`` checkpoints the carry every ``k`` steps
            and recomputes each segment in the backward pass; ``"sqrt"`` uses
            ``k = ceil(sqrt(T))``. Same values and gradients, BPTT memory
            ``O(T / k + k)`` instead of ``O(T)``, about one more forward pass of compute.
        backend: ``"auto"`` (the fastest that can run the call), ``"scan"``, ``"xla"``,
            ``"native"``, ``"pallas"``, ``"linear"`` (the linear cells' associative scan), or
            a :class:`jaxrnn.backends.Backend`; see
            :mod:`jaxrnn.backends`. A named backend that cannot run the call is an error.

    Returns:
        ``(final_carry, ys)``: the carry after the last processed step, and the cell's
        outputs stacked over time in the layout of ``xs``: ``[B, T, H]`` / ``[T, B, H]`` / ``[T, H]``.

    Raises:
        ValueError, TypeError: at trace time, for a wrong rank, width, dtype, carry, lengths
            or backend.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import cells, rnn
        >>> params = cells.simple.init(jax.random.key(0), 32, 100)
        >>> xs = jnp.ones((250, 32), jnp.float32)          # one review: 250 steps of 32 features
        >>> h_last, hs = rnn(cells.simple.cell, params, xs)
        >>> h_last.shape, hs.shape                         # SimpleRNN(100) output, and return_sequences=True
        ((100,), (250, 100))
    """
    where = "rnn"
    unroll = _checks.unroll(where, unroll)
    remat = _checks.remat(where, remat)
    b = backends.resolve(backend)
    if isinstance(xs, Embedded):
        ids, batched = _checks.token_ids(where, xs.ids, time_major)
        E = _checks.floating(f"{where}: embedding", xs.embedding)
        if E.ndim != 2:
            raise ValueError(f"{where}: embedding must be [V, D]; got shape {tuple(E.shape)}")
        inputs: Array | Embedded = Embedded(E, ids)
        (T, B), (D, dtype) = ids.shape, (E.shape[1], E.dtype)
        shape = f"ids {tuple(xs.ids.shape)} into an embedding {tuple(E.shape)}"
    else:
        inputs, batched = _checks.sequence(where, xs, time_major)
        (T, B, D), dtype = inputs.shape, inputs.dtype
        shape = f"xs of shape {tuple(jnp.shape(xs))}"
    batch_shape = (B,) if batched else ()
    if lengths is not None:
        lengths = _checks.lengths(where, lengths, batch_shape, T).reshape((B,))
    h0_given = h0 is not None
    carry0 = _checks.initial_carry(where, cell, params, h0, batch_shape)
    if not batched:
        carry0 = jax.tree.map(lambda a: jnp.asarray(a)[None], carry0)
    layout = ("[T, B, D]" if time_major else "[B, T, D]") if batched else "[T, D]"
    context = (
        f"while running rnn over {shape}, read as {layout}; h0 was "
        f"{'given' if h0_given else 'None (zeros from cell.initial_carry)'}"
    )
    _checks.step(where, cell, params, carry0, jax.ShapeDtypeStruct((B, D), dtype), context)
    choice = backends.select(cell, params, dtype, b)
    if T == 0:  # nothing to run: the carry as given, no outputs
        y = jax.eval_shape(lambda c: cell(params, c, jnp.zeros((B, D), dtype))[1], carry0)
        ys = jnp.zeros((0, *y.shape), y.dtype)
        carry = carry0
    else:
        carry, ys = run(
            choice, cell, params, inputs, carry0, lengths=lengths, reverse=reverse,
            unroll=unroll, k=_checks.remat_segment(remat, T),
        )  # fmt: skip
    if not batched:
        carry = jax.tree.map(lambda a: a[0], carry)
        ys = jax.tree.map(lambda a: a[:, 0], ys)  # [T, 1, H] -> [T, H]
    elif not time_major:
        ys = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)  # [T, B, H] -> [B, T, H]
    return carry, ys
