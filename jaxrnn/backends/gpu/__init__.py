"""The ``"pallas"`` backend: each recurrence as one persistent Pallas kernel on a CUDA GPU.

The forward and backward loops of the simple cell (``tanh``), the LSTM and the GRU
(``reset_after``) run inside one kernel each (:mod:`._pallas`); ``dW_h`` and the inputs'
gradient are then single XLA products. float32, ``H <= 128``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn.backends._recurrence import Impl
from jaxrnn.backends.gpu import _pallas
from jaxrnn.backends.gpu._pallas import Config
from jaxrnn.cells._common import Array

KINDS = ("simple", "lstm", "gru")


def unsupported(
    kind: str, activation: str, dtype, H: int, config: Config = _pallas.DEFAULT
) -> str | None:
    """Why the kernels do not run this recurrence (``None``: they do)."""
    if kind not in KINDS:
        return f"no GPU kernel computes this cell (kernels: {', '.join(KINDS)})"
    if kind == "simple" and activation != "tanh":
        return f"the simple cell's GPU kernels are for tanh; got {activation!r}"
    return _pallas.unsupported(dtype, H, kind, config)


def _dense(U: Array, ids: Array | None) -> Array:
    """``[T, B, G H]`` step inputs: ``U`` itself, or the rows ``U[ids]`` of a table."""
    return U if ids is None else jnp.take(U, ids, axis=0)


def _dU(D: Array, U: Array, ids: Array | None) -> Array:
    """``dL/dU`` from ``D = dL/du: [T, B, G H]``: ``D``, or its rows added into the table."""
    if ids is None:
        return D
    return jnp.zeros_like(U).at[ids.reshape(-1)].add(D.reshape(-1, U.shape[-1]))


def _dW(S: Array, D: Array) -> Array:
    """``dW_h = sum_t h_{t-1}^T D_t``: one ``[H, T B] @ [T B, G H]`` matmul."""
    H = S.shape[-1]
    return S[:-1].reshape(-1, H).T @ D.reshape(-1, D.shape[-1])


def _g_hidden(g_states, g_final, like):
    if g_states is None:
        return jnp.zeros_like(like) if g_final is None else g_final
    return g_states if g_final is None else g_states.at[-1].add(g_final)


@functools.cache
def impl(kind: str, config: Config = _pallas.DEFAULT) -> Impl:
    """The kernels of ``kind`` (``"simple"``, ``"lstm"``, ``"gru"``) as an
    :class:`~jaxrnn.backends._recurrence.Impl`."""
    if kind == "simple":

        def forward(update, W_h, b_h, U, ids, h0, unroll):
            S = _pallas.simple_forward(_dense(U, ids), W_h, h0, config=config)
            return S[1:], S[-1], S

        def backward(update, W_h, b_h, U, ids, h0, states, S, g_states, g_final, unroll):
            g = _g_hidden(g_states, g_final, h0)
            D = _pallas.simple_backward(S, W_h, g, g_states is None, config=config)
            return _dW(S, D), None, _dU(D, U, ids), D[0] @ W_h.T

    elif kind == "lstm":

        def forward(update, W_h, b_h, U, ids, carry0, unroll):
            S_h, S_c, Gs = _pallas.lstm_forward(_dense(U, ids), W_h, *carry0, config=config)
            tree = jax.tree.structure(carry0)
            states = jax.tree.unflatten(tree, [S_h[1:], S_c[1:]])
            return states, jax.tree.unflatten(tree, [S_h[-1], S_c[-1]]), (S_h, S_c, Gs)

        def backward(update, W_h, b_h, U, ids, carry0, states, private, g_states, g_final, unroll):
            S_h, S_c, Gs = private
            tree = jax.tree.structure(carry0)
            g_hs, g_cs = [None, None] if g_states is None else tree.flatten_up_to(g_states)
            g_hT, g_cT = [None, None] if g_final is None else tree.flatten_up_to(g_final)
            g_hT = jnp.zeros_like(carry0[0]) if g_hT is None else g_hT
            g_cT = jnp.zeros_like(carry0[1]) if g_cT is None else g_cT
            D, dc0 = _pallas.lstm_backward(S_c, Gs, W_h, g_hs, g_hT, g_cT, g_cs, config=config)
            dcarry0 = jax.tree.unflatten(tree, [D[0] @ W_h.T, dc0])
            return _dW(S_h, D), None, _dU(D, U, ids), dcarry0

    else:

        def forward(update, W_h, b_h, U, ids, h0, unroll):
            b = jnp.zeros((W_h.shape[1],), W_h.dtype) if b_h is None else b_h
            S, Sv = _pallas.gru_forward(_dense(U, ids), W_h, b, h0, config=config)
            return S[1:], S[-1], (S, Sv)

        def backward(update, W_h, b_h, U, ids, h0, states, private, g_states, g_final, unroll):
            S, Sv = private
            H = W_h.shape[0]
            g = _g_hidden(g_states, g_final, h0)
            D, N, dh0 = _pallas.gru_backward(S, Sv, W_h, g, g_states is None, config=config)
            dA = jnp.concatenate([D[..., : 2 * H], N], axis=-1)  # dL/dU [T, B, 3H]
            db = None if b_h is None else D.sum(axis=(0, 1))
            return _dW(S, D), db, _dU(dA, U, ids), dh0

    return Impl("pallas", forward, backward)


__all__ = ["Config", "KINDS", "impl", "unsupported"]
