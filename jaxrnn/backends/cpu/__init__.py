"""The ``"native"`` backend: hand-written CPU kernels for the simple, LSTM and GRU recurrences.

Each recurrence's forward and backward loop runs as one XLA FFI call (``rnn_cpu.cc``,
:mod:`._ffi`), the batch rows split over XLA's CPU threads, each step a register-blocked
product with the cell's update applied in registers. An embedding folded into the input
projection gets two more calls (:func:`project_table`, :func:`project_rows`). Built on first
use for the CPU at hand (:mod:`._build`); float32. Where they or the XLA loops run on a CPU,
glibc is asked to keep the memory a step frees for the next step (:func:`keep_freed_memory`;
``JAXRNN_HOST_TUNABLES=0``: not).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.backends import _linear
from jaxrnn.backends._recurrence import Impl
from jaxrnn.backends.cpu import _ffi, _memory
from jaxrnn.cells._common import Array

KINDS = ("simple", "lstm", "gru")


def unsupported(kind: str, activation: str, dtype: Any, H: int, G: int) -> str | None:
    """Why the kernels do not run this recurrence (``None``: they do)."""
    if kind not in KINDS:
        return f"no native kernel computes this cell (kernels: {', '.join(KINDS)})"
    if kind == "simple" and activation not in _ffi.ACTIVATIONS:
        return f"the simple cell's kernels take activations {sorted(_ffi.ACTIVATIONS)}; got {activation!r}"
    if jnp.dtype(dtype) != jnp.float32:
        return f"the native kernels are float32; got {jnp.dtype(dtype)}"
    if H * G * H * 4 > _ffi.MAX_WEIGHT_BYTES:
        return (
            f"W_h [{H}, {G * H}] is {H * G * H * 4 / 2**20:.1f} MiB, above the "
            f"{_ffi.MAX_WEIGHT_BYTES / 2**20:.0f} MiB the kernels take on this CPU"
        )
    reason = _ffi.unavailable_reason()
    return None if reason is None else f"the native kernels are unavailable: {reason}"


def available() -> bool:
    """Whether the kernels are built and registered (builds them on the first call)."""
    return _ffi.available()


def _g_hidden(g_states: Any, g_final: Any, like: Array) -> Array:
    """The kernels' ``g``: cotangents of every ``h_t`` ``[T, B, H]`` (the final one added to
    the last row), or of ``h_T`` alone ``[B, H]``."""
    if g_states is None:
        return jnp.zeros_like(like) if g_final is None else g_final
    return g_states if g_final is None else g_states.at[-1].add(g_final)


def _rows(ids: Array | None) -> str:
    # dense inputs: D[:T] is dU itself; a table: only D[0] leaves the call (for dh0)
    return "inputs" if ids is None else "first"


def _input_cotangent(D: Array, T: int, ids: Array | None, dTable: Array | None) -> Array:
    return (D if D.shape[0] == T else D[:T]) if ids is None else dTable


def _simple(activation: str, threads: int) -> Impl:
    def forward(update, W_h, b_h, U, ids, h0, unroll):
        S = _ffi.simple_forward(U, ids, W_h, h0, activation, threads)  # [T + 1, B, H]
        return S[1:], S[-1], S

    def backward(update, W_h, b_h, U, ids, h0, states, S, g_states, g_final, unroll):
        T = S.shape[0] - 1
        g = _g_hidden(g_states, g_final, h0)
        vocab = 0 if ids is None else U.shape[0]
        D, dW_h, dTable = _ffi.simple_backward(
            S, W_h, g, activation, ids, vocab, threads, rows=_rows(ids)
        )
        return dW_h, None, _input_cotangent(D, T, ids, dTable), D[0] @ W_h.T

    return Impl("native", forward, backward)


def _lstm(threads: int) -> Impl:
    def forward(update, W_h, b_h, U, ids, carry0, unroll):
        h0, c0 = carry0
        S_h, S_c, G = _ffi.lstm_forward(U, ids, W_h, h0, c0, threads)
        tree = jax.tree.structure(carry0)
        states = jax.tree.unflatten(tree, [S_h[1:], S_c[1:]])
        return states, jax.tree.unflatten(tree, [S_h[-1], S_c[-1]]), (S_h, S_c, G)

    def backward(update, W_h, b_h, U, ids, carry0, states, private, g_states, g_final, unroll):
        S_h, S_c, G = private
        T = G.shape[0]
        tree = jax.tree.structure(carry0)
        g_hs, g_cs = [None, None] if g_states is None else tree.flatten_up_to(g_states)
        g_hT, g_cT = [None, None] if g_final is None else tree.flatten_up_to(g_final)
        g_hT = jnp.zeros_like(carry0[0]) if g_hT is None else g_hT
        g_cT = jnp.zeros_like(carry0[1]) if g_cT is None else g_cT
        vocab = 0 if ids is None else U.shape[0]
        D, dW_h, dc0, dTable = _ffi.lstm_backward(
            S_h, S_c, G, W_h, g_hs, g_hT, g_cT, ids, vocab, threads, rows=_rows(ids), g_cs=g_cs
        )
        dcarry0 = jax.tree.unflatten(tree, [D[0] @ W_h.T, dc0])
        return dW_h, None, _input_cotangent(D, T, ids, dTable), dcarry0

    return Impl("native", forward, backward)


def _gru(threads: int) -> Impl:
    def forward(update, W_h, b_h, U, ids, h0, unroll):
        b = jnp.zeros((W_h.shape[1],), W_h.dtype) if b_h is None else b_h
        S, Sv = _ffi.gru_forward(U, ids, W_h, b, h0, threads)
        return S[1:], S[-1], (S, Sv)

    def backward(update, W_h, b_h, U, ids, h0, states, private, g_states, g_final, unroll):
        S, Sv = private
        T = Sv.shape[0]
        g = _g_hidden(g_states, g_final, h0)
        vocab = 0 if ids is None else U.shape[0]
        D, A, carry, dW_h, db_h, dTable = _ffi.gru_backward(
            S, Sv, W_h, g, ids, vocab, threads, rows=_rows(ids), d_rows="first"
        )
        dU = _input_cotangent(A, T, ids, dTable)
        return dW_h, (None if b_h is None else db_h), dU, carry + D[0] @ W_h.T

    return Impl("native", forward, backward)


def keep_freed_memory() -> bool:
    """Asks glibc to keep the memory a CPU step frees for the next step (:mod:`._memory`),
    once per process; whether that is in effect (``JAXRNN_HOST_TUNABLES=0``: not)."""
    return _memory.keep_freed_memory()


@functools.cache
def impl(kind: str, activation: str = "", threads: int = 0) -> Impl:
    """The kernels of ``kind`` (``"simple"`` with an ``activation``, ``"lstm"``, ``"gru"``)
    as an :class:`~jaxrnn.backends._recurrence.Impl`; ``threads``: row chunks run in
    parallel (0: the size of XLA's CPU thread pool). The first call keeps freed memory in
    the process's heaps (:mod:`._memory`)."""
    keep_freed_memory()
    if kind == "simple":
        return _simple(activation, threads)
    return _lstm(threads) if kind == "lstm" else _gru(threads)


def project_table(E: Array, W_x: Array, b: Array | None) -> Array:
    """``E @ W_x (+ b): [V, D] -> [V, G H]`` in one call (and its gradient in one pass over
    ``dTable``): an embedding folded into the input projection."""

    def forward(E, W_x, b):
        return _ffi.table_projection(E, W_x, b), ()

    def backward(args, out, private, g):
        E, W_x, b = args
        if g is None:
            return None, None, None
        dE, dW_x, db = _ffi.table_projection_backward(g, E, W_x)
        return dE, dW_x, (None if b is None else db.astype(b.dtype))

    def reference(E, W_x, b):
        return E @ W_x if b is None else E @ W_x + b

    return _linear.differentiable(forward, backward, reference)(E, W_x, b)[0]


def project_rows(E: Array, ids: Array, W_x: Array, b: Array | None) -> Array:
    """``E[ids] @ W_x (+ b): [V, D], [T, B] -> [T, B, G H]`` in one call: the step inputs of a
    batch with fewer tokens than the vocabulary (an id outside ``[0, V)`` gives NaN, as
    ``jnp.take``)."""

    def forward(E, ids, W_x, b):
        return _ffi.rows_projection(E, ids, W_x, b), ()

    def backward(args, out, private, g):
        E, ids, W_x, b = args
        if g is None:
            return None, None, None, None
        dE, dW_x, db = _ffi.rows_projection_backward(g, E, ids, W_x)
        return dE, None, dW_x, (None if b is None else db.astype(b.dtype))

    def reference(E, ids, W_x, b):
        u = jnp.take(E, ids, axis=0) @ W_x
        return u if b is None else u + b

    return _linear.differentiable(forward, backward, reference)(E, ids, W_x, b)[0]


__all__ = ["KINDS", "available", "impl", "project_rows", "project_table", "unsupported"]
