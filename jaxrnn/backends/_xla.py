"""The hoisted XLA loops: a :class:`~jaxrnn.cells.Split` cell's recurrence on projected inputs.

::

    u_t = U[t]  (or table[ids[t]])            # projected before the loop: one matmul for all t
    r_t = h_{t-1} @ W_h + b_h                 # the loop's only product
    carry_t = update(params, carry_{t-1}, u_t, r_t)

Forward mode and second derivatives differentiate :func:`loop` itself. Reverse mode runs
:func:`loop_saving` and :func:`backward`: a reversed loop that linearises each step's
``update`` again from its saved inputs (``jax.vjp``), with
``dW_h = [h_0 .. h_{T-1}]^T [dr_1 .. dr_T]`` as one product after the loop instead of a small
one accumulated in every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def loop_saving(
    update: Update, W_h: Array, b_h: Array | None, U: Array, ids: Array | None, carry0: Any,
    unroll: int | bool = 1,
) -> tuple[Any, Any, tuple[Any, Array]]:  # fmt: skip
    """:func:`loop` that also returns what :func:`backward` reads: ``S`` (each carry leaf's
    ``[T + 1, B, ...]`` buffer, row 0 the initial carry) and ``R = [r_1 .. r_T]: [T, B, G H]``.

    The buffers are written in place, one row a step; the carry is carried as well, since
    reading a row back from the buffer it was written to makes XLA copy the buffer.
    """
    T = ids.shape[0] if ids is not None else U.shape[0]
    S = jax.tree.map(lambda c: jnp.zeros((T + 1, *c.shape), c.dtype).at[0].set(c), carry0)
    B = carry_output(carry0).shape[0]
    R = jnp.zeros((T, B, W_h.shape[1]), W_h.dtype)

    def body(t, state):
        carry, S, R = state
        u = _row(U, t) if ids is None else jnp.take(U, _row(ids, t), axis=0)
        r = recurrent(carry, W_h, b_h)
        carry = update(carry, u, r)
        S = jax.tree.map(lambda buf, c: _set_row(buf, c, t + 1), S, carry)
        return carry, S, _set_row(R, r, t)

    final, S, R = jax.lax.fori_loop(0, T, body, (carry0, S, R), unroll=unroll)
    return jax.tree.map(lambda buf: buf[1:], S), final, (S, R)


def backward(
    W_h: Array, b_h: Array | None, U: Array, ids: Array | None, carry0: Any, states: Any,
    saved: tuple[Any, Array], g_states: Any, g_final: Any, update: Update,
    unroll: int | bool = 1,
) -> tuple[Array, Array | None, Array, Any]:  # fmt: skip
    """``(dW_h, db_h, dU, dcarry0)`` from the cotangents of :func:`loop_saving`'s outputs.

    ``g_states`` (like ``states``) and ``g_final`` (like ``carry0``) may be ``None`` (zero).
    Each step's ``update`` is linearised again from its saved inputs (``jax.vjp``), so the
    cell's maths is written once, in the cell.
    """
    S, R = saved
    T, B, GH = R.shape
    W_hT = W_h.T  # [G H, H]
    D = jnp.zeros((T + 1, B, GH), R.dtype)  # D[t] = dL/dr_t; row T stays 0

    def body(j, state):
        t = T - 1 - j
        dcarry, D, DU = state
        if g_states is not None:
            g_leaves = carry_tree.flatten_up_to(g_states)
            dcarry = jax.tree.unflatten(carry_tree, [
                d if g is None else d + _row(g, t)
                for d, g in zip(jax.tree.leaves(dcarry), g_leaves, strict=True)
            ])  # fmt: skip
        c_prev = jax.tree.map(lambda buf: _row(buf, t), S)
        u = _row(U, t) if ids is None else jnp.take(U, _row(ids, t), axis=0)
        _, pullback = jax.vjp(update, c_prev, u, _row(R, t))
        dc_prev, du, dr = pullback(dcarry)
        dc_prev = with_output(dc_prev, carry_output(dc_prev) + dr @ W_hT)
        D = _set_row(D, dr, t)
        if DU is not None:
            DU = _set_row(DU, du, t)
        return dc_prev, D, DU

    # an update that sees u and r only through u + r has du = dr: one buffer serves both
    c0 = jax.tree.map(lambda buf: buf[0], S)
    probe = jax.vjp(update, c0, U[0] if ids is None else jnp.take(U, ids[0], axis=0), R[0])[1]
    _, du0, dr0 = probe(jax.tree.map(jnp.zeros_like, c0))  # dead code to XLA
    DU = None if du0 is dr0 else jnp.zeros((T + 1, B, GH), R.dtype)
    carry_tree = jax.tree.structure(carry0)
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
