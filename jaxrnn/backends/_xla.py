"""The hoisted XLA loops: a :class:`~jaxrnn.cells.Split` cell's recurrence on projected inputs.

::

    u_t = U[t]  (or table[ids[t]])            # projected before the loop: one matmul for all t
    r_t = h_{t-1} @ W_h + b_h                 # the loop's only product
    carry_t = update(params, carry_{t-1}, u_t, r_t)

Forward mode and second derivatives differentiate :func:`loop` itself. Reverse mode runs
:func:`loop_saving`, which keeps each step's pullback of ``update`` (``jax.vjp``'s
residuals), and :func:`backward`: a reversed loop that applies them, with
``dW_h = [h_0 .. h_{T-1}]^T [dr_1 .. dr_T]`` as one product after the loop instead of a small
one accumulated in every step. The pullback is taken under ``jax.checkpoint`` with a policy
that saves the activations' outputs and recomputes the arithmetic on them (for the LSTM, 5
``[B, H]`` residuals a step instead of 11) where that saves fewer bytes, and a residual that
is the step's incoming carry is read from the saved states, not stored twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells._common import Array, carry_output, with_output

Update = Callable[[Any, Array, Array], Any]  # (carry, u, r) -> carry, params bound


def step_inputs(U: Array, ids: Array | None) -> Array:
    """What the loop scans: ``U [T, B, G H]`` itself, or the ids ``[T, B]`` into a table."""
    return U if ids is None else ids


def step_input(U: Array, ids: Array | None, x: Array) -> Array:
    """``u_t: [B, G H]`` from the scanned ``x``: ``U[t]``, or the table's rows ``U[ids[t]]``."""
    return x if ids is None else jnp.take(U, x, axis=0)


def _input_at(U: Array, ids: Array | None, t: Array) -> Array:
    """``u_t: [B, G H]`` at step ``t`` of what the loop scans."""
    return step_input(U, ids, _row(step_inputs(U, ids), t))


def recurrent(carry: Any, W_h: Array, b_h: Array | None) -> Array:
    """``r = h @ W_h + b_h: [B, G H]`` from the carry's ``h [B, H]``."""
    r = carry_output(carry) @ W_h
    return r if b_h is None else r + b_h


def loop(
    update: Update, W_h: Array, b_h: Array | None, U: Array, ids: Array | None, carry0: Any,
    unroll: int | bool = 1,
) -> tuple[Any, Any]:  # fmt: skip
    """``(states, final)``: the carry after every step (leaves ``[T, B, ...]``) and the last.

    Differentiable in every argument but ``ids`` (plain ``lax.scan``).
    """

    def step(carry, x):
        carry = update(carry, step_input(U, ids, x), recurrent(carry, W_h, b_h))
        return carry, carry

    final, states = jax.lax.scan(step, carry0, step_inputs(U, ids), unroll=unroll)
    return states, final


def _row(buf: Array, t: Array) -> Array:
    return jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)


def _set_row(buf: Array, value: Array, t: Array) -> Array:
    return jax.lax.dynamic_update_index_in_dim(buf, value, t, 0)


# Arithmetic that a step's backward recomputes from saved values rather than reading back: the
# saved residuals are then the activations' outputs, not also ``1 - s`` or ``s (1 - s)``.
_RECOMPUTED = frozenset(
    {"add", "add_any", "sub", "mul", "neg", "reduce_precision", "convert_element_type"}
)


def _save_all_but_arithmetic(prim: Any, *_: Any, **__: Any) -> bool:
    return prim.name not in _RECOMPUTED


class _Layout(NamedTuple):
    """How a step's pullback is stored: the same for every step of a loop.

    Attributes:
        shapes: ``ShapeDtypeStruct`` of each leaf the loop saves (``[B, ...]``).
        tree: the pullback's tree (all its leaves, saved or not).
        carry_leaf: per pullback leaf, the index of the carry leaf it is (read back from the
            states instead of saved twice), else ``None``.
        du_is_dr: the update sees ``u`` and ``r`` only through ``u + r`` (one cotangent).
        remat: the pullback is that of the update under ``jax.checkpoint``
            (:func:`_save_all_but_arithmetic`).
    """

    shapes: tuple
    tree: Any
    carry_leaf: tuple
    du_is_dr: bool
    remat: bool


def _step_pullback(
    update: Update, carry: Any, u: Array, r: Array, remat: bool
) -> tuple[Any, list, Any]:
    """One step's new carry and its pullback (``jax.vjp``) as leaves and their tree."""
    f = jax.checkpoint(update, policy=_save_all_but_arithmetic) if remat else update
    new, pullback = jax.vjp(f, carry, u, r)
    leaves, tree = jax.tree.flatten(pullback)
    return new, leaves, tree


def _pullback_layout(
    update: Update, W_h: Array, b_h: Array | None, U: Array, ids: Array | None, carry0: Any,
    fallback: bool = False,
) -> _Layout:  # fmt: skip
    """The :class:`_Layout` of a step's pullback, traced abstractly on the loop's own arguments
    (a step traced on placed arrays holds its constants as residuals; one traced on bare shapes
    does not): of the plain pullback and the one that recomputes arithmetic, the one that saves
    fewer bytes per step. ``fallback``: the plain pullback with every residual saved as it
    comes."""
    found = {}

    def probe(W_h, b_h, U, ids, carry, remat):
        u, r = _input_at(U, ids, jnp.int32(0)), recurrent(carry, W_h, b_h)
        _, leaves, tree = _step_pullback(update, carry, u, r, remat)
        _, du, dr = jax.tree.unflatten(tree, leaves)(carry)
        at = {id(c): i for i, c in enumerate(jax.tree.leaves(carry))}
        found[remat] = (tree, tuple(at.get(id(x)) for x in leaves), du is dr)
        return leaves

    layouts = []
    for remat in (False, True):
        shapes = jax.eval_shape(functools.partial(probe, remat=remat), W_h, b_h, U, ids, carry0)
        shapes = tuple(jax.ShapeDtypeStruct(s.shape, s.dtype) for s in shapes)
        tree, carry_leaf, du_is_dr = found[remat]
        if fallback:
            return _Layout(shapes, tree, (None,) * len(shapes), du_is_dr, False)
        saved = tuple(s for s, i in zip(shapes, carry_leaf, strict=True) if i is None)
        # whether du is dr is the update's property; only the plain pullback shows it
        layouts.append(_Layout(saved, tree, carry_leaf, found[False][2], remat))
    nbytes = [sum(s.size * s.dtype.itemsize for s in lay.shapes) for lay in layouts]
    return layouts[1] if nbytes[1] < nbytes[0] else layouts[0]


class _Mismatch(Exception):
    """A loop body traced to another pullback than its layout's abstract trace."""


@jax.tree_util.register_static
class _Stored:
    """The :class:`_Layout` a loop stored its pullbacks by, handed to :func:`backward` in the
    saved buffers as a pytree without leaves. Equal by layout, not by the traced pullback
    tree, which is a new object in every trace of the same function."""

    def __init__(self, layout: _Layout):
        self.layout = layout

    def _key(self) -> tuple:
        lay = self.layout
        shapes = tuple((s.shape, s.dtype) for s in lay.shapes)
        return shapes, lay.carry_leaf, lay.du_is_dr, lay.remat

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Stored) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _to_save(layout: _Layout, incoming: list, leaves: list) -> list | None:
    """The leaves of a traced step's pullback that ``layout`` stores, or ``None`` where the
    trace does not match ``layout``."""
    if len(leaves) != len(layout.carry_leaf):
        return None
    pairs = list(zip(leaves, layout.carry_leaf, strict=True))
    saved = [x for x, i in pairs if i is None]
    same = all(i is None or x is incoming[i] for x, i in pairs) and all(
        jnp.shape(x) == s.shape and jnp.result_type(x) == s.dtype
        for x, s in zip(saved, layout.shapes, strict=True)
    )
    return saved if same else None


def loop_saving(
    update: Update, W_h: Array, b_h: Array | None, U: Array, ids: Array | None, carry0: Any,
    unroll: int | bool = 1,
) -> tuple[Any, Any, tuple[Any, list, _Stored]]:  # fmt: skip
    """:func:`loop` that also returns what :func:`backward` reads: ``S`` (each carry leaf's
    ``[T + 1, B, ...]`` buffer, row 0 the initial carry), ``P``, every step's pullback of
    ``update`` (its residuals, each leaf a ``[T, ...]`` buffer, but those that are the step's
    incoming carry, which ``S`` holds), so the backward pass computes none of the forward's
    activations again, and the layout ``P`` is stored by.

    The buffers are written in place, one row a step; the carry is carried as well, since
    reading a row back from the buffer it was written to makes XLA copy the buffer.
    """
    args = (W_h, b_h, U, ids, carry0)
    layout = _pullback_layout(update, *args)
    try:
        states, final, (S, P) = _loop_saving(layout, update, *args, unroll)
    except _Mismatch:
        # a loop body that traces otherwise than the probe: every residual of the plain pullback
        layout = _pullback_layout(update, *args, fallback=True)
        states, final, (S, P) = _loop_saving(layout, update, *args, unroll)
    return states, final, (S, P, _Stored(layout))


def _loop_saving(layout, update, W_h, b_h, U, ids, carry0, unroll):
    T = ids.shape[0] if ids is not None else U.shape[0]
    S = jax.tree.map(lambda c: jnp.zeros((T + 1, *c.shape), c.dtype).at[0].set(c), carry0)
    P = [jnp.zeros((T, *a.shape), a.dtype) for a in layout.shapes]

    def body(t, state):
        carry, S, P = state
        u, r = _input_at(U, ids, t), recurrent(carry, W_h, b_h)
        incoming = jax.tree.leaves(carry)
        carry, leaves, _ = _step_pullback(update, carry, u, r, layout.remat)
        saved = _to_save(layout, incoming, leaves)
        if saved is None:
            raise _Mismatch
        S = jax.tree.map(lambda buf, c: _set_row(buf, c, t + 1), S, carry)
        return carry, S, [_set_row(buf, x, t) for buf, x in zip(P, saved, strict=True)]

    final, S, P = jax.lax.fori_loop(0, T, body, (carry0, S, P), unroll=unroll)
    return jax.tree.map(lambda buf: buf[1:], S), final, (S, P)


def backward(
    W_h: Array, b_h: Array | None, U: Array, ids: Array | None, carry0: Any, states: Any,
    saved: tuple[Any, list, _Stored], g_states: Any, g_final: Any, unroll: int | bool = 1,
) -> tuple[Array, Array | None, Array, Any]:  # fmt: skip
    """``(dW_h, db_h, dU, dcarry0)`` from the cotangents of :func:`loop_saving`'s outputs.

    ``g_states`` (like ``states``) and ``g_final`` (like ``carry0``) may be ``None`` (zero).
    Each step applies the pullback of ``update`` saved by the forward loop, so the cell's
    maths is written once, in the cell.
    """
    S, P, stored = saved
    layout = stored.layout
    T = ids.shape[0] if ids is not None else U.shape[0]
    B = carry_output(carry0).shape[0]
    GH = W_h.shape[1]
    W_hT = W_h.T  # [G H, H]
    D = jnp.zeros((T + 1, B, GH), W_h.dtype)  # D[t] = dL/dr_t; row T stays 0
    # an update that sees u and r only through u + r has du = dr: one buffer serves both
    DU = None if layout.du_is_dr else jnp.zeros((T + 1, B, GH), W_h.dtype)
    carry_tree = jax.tree.structure(carry0)
    S_leaves = jax.tree.leaves(S)

    def body(j, state):
        t = T - 1 - j
        dcarry, D, DU = state
        if g_states is not None:
            g_leaves = carry_tree.flatten_up_to(g_states)
            dcarry = jax.tree.unflatten(carry_tree, [
                d if g is None else d + _row(g, t)
                for d, g in zip(jax.tree.leaves(dcarry), g_leaves, strict=True)
            ])  # fmt: skip
        rows = iter([_row(buf, t) for buf in P])
        leaves = [next(rows) if i is None else _row(S_leaves[i], t) for i in layout.carry_leaf]
        pullback = jax.tree.unflatten(layout.tree, leaves)
        dc_prev, du, dr = pullback(dcarry)
        dc_prev = with_output(dc_prev, carry_output(dc_prev) + dr @ W_hT)
        D = _set_row(D, dr, t)
        if DU is not None:
            DU = _set_row(DU, du, t)
        return dc_prev, D, DU

    g_final = (
        [None] * carry_tree.num_leaves if g_final is None else carry_tree.flatten_up_to(g_final)
    )
    dcarry = jax.tree.unflatten(carry_tree, [
        jnp.zeros_like(c) if g is None else g for c, g in zip(jax.tree.leaves(carry0), g_final, strict=True)
    ])  # fmt: skip
    dcarry0, D, DU = jax.lax.fori_loop(0, T, body, (dcarry, D, DU), unroll=unroll)
    H = W_h.shape[0]
    dW_h = carry_output(S).reshape(-1, H).T @ D.reshape(-1, GH)  # [H, (T+1) B] @ [(T+1) B, G H]
    db_h = None if b_h is None else D.sum(axis=(0, 1))
    dA = D if DU is None else DU  # [T + 1, B, G H], row T zero
    if ids is None:
        dU = dA[:T]
    else:  # the table's rows, scattered once: the zero row T goes to row 0 and adds nothing
        ids_ext = jnp.concatenate([ids, jnp.zeros((1, B), ids.dtype)])
        dU = jnp.zeros_like(U).at[ids_ext.reshape(-1)].add(dA.reshape(-1, GH))
    return dW_h, db_h, dU, dcarry0
