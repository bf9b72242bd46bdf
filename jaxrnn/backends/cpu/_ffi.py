"""The native CPU kernels as JAX functions (XLA FFI custom calls on ``rnn_cpu.cc``).

::

    simple  forward   S[0] = h_0,  S[t + 1] = f(u_t + S[t] @ W_h)                  S: [T + 1, B, H]
            backward  D[T] = 0,    D[t] = (g_t + D[t + 1] @ W_h^T) * f'(S[t + 1])   D: [T + 1, B, H]
    LSTM    forward   S_h, S_c: [T + 1, B, H] and the gates G: [T, B, 4H] (per 16 units)
            backward  D[t] = dL/dz_t: [T + 1, B, 4H] and dL/dc_0
    GRU     forward   S: [T + 1, B, H] and z, r, n, u_n: [T, B, 4H] (per 16 units; reset_after)
            backward  dL/du, dL/da: [T + 1, B, 3H] and z_0 dL/dh_0

(``u_t = U[t]`` or ``table[idx[t]]``, ``g_t = dL/dh_{t+1}``). The backward calls also return
``dW_h = S^T D`` and, for a table, its gradient. Two more calls build such a table,
``E @ W_x + b``, and take its gradient; one more projects only the rows of given ids.
Batch rows never interact in a recurrence, so the rows are split over the threads of XLA's
CPU thread pool, each running all ``T`` steps on its rows: states do not depend on the thread
count. float32 only.

``JAXRNN_NATIVE=0`` turns the kernels off; ``JAXRNN_NATIVE=require`` makes a failed build or
load an error instead of one warning (the XLA loops run instead).
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.backends.cpu import _build
from jaxrnn.cells._common import Array

SWITCH = "JAXRNN_NATIVE"  # "0": off; unset / "1": where available; "require": build must work
ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "relu": 2, "identity": 3, "linear": 3}
_SYMBOLS = {
    "jaxrnn_simple_forward": "JaxrnnSimpleForward",
    "jaxrnn_simple_backward": "JaxrnnSimpleBackward",
    "jaxrnn_lstm_forward": "JaxrnnLstmForward",
    "jaxrnn_lstm_backward": "JaxrnnLstmBackward",
    "jaxrnn_gru_forward": "JaxrnnGruForward",
    "jaxrnn_gru_backward": "JaxrnnGruBackward",
    "jaxrnn_table_projection": "JaxrnnTableProjection",
    "jaxrnn_table_projection_backward": "JaxrnnTableProjectionBackward",
    "jaxrnn_rows_projection": "JaxrnnRowsProjection",
    "jaxrnn_rows_projection_backward": "JaxrnnRowsProjectionBackward",
}
# dW_h is accumulated inside the backward loop while each thread's [H, G H] partial sum fits
# in L2 with room to spare; above that the per-step read-modify-write of the partial costs
# more than one [H, T B] @ [T B, G H] matmul after the loop, which the caller then computes.
FUSED_DW_BYTES = 256 * 1024


def fuse_dw(H: int, G: int) -> bool:
    """Whether the backward kernels accumulate ``dW_h: [H, G H]`` themselves."""
    return H * G * H * 4 <= FUSED_DW_BYTES


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the kernels once; ``None`` on success, else the reason."""
    if os.environ.get(SWITCH, "1") == "0":
        return f"turned off ({SWITCH}=0)"
    try:
        # build() returns only a library it has checked (hash, owner, symbols): loading runs it
        lib = ctypes.cdll.LoadLibrary(str(_build.build(symbols=tuple(_SYMBOLS.values()))))
        handlers = {target: getattr(lib, symbol) for target, symbol in _SYMBOLS.items()}
    except (_build.BuildError, OSError, AttributeError, subprocess.SubprocessError) as e:
        if os.environ.get(SWITCH) == "require":
            raise _build.BuildError(str(e)) from e
        if _build.isa() is not None:  # a CPU the kernels are for, but the build failed: say so
            warnings.warn(
                f"jaxrnn: native CPU kernels unavailable, using XLA loops: {e}", stacklevel=3
            )
        return str(e)
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return None


def available() -> bool:
    """Whether the kernels are built and registered (builds them on the first call)."""
    return _load() is None


def unavailable_reason() -> str | None:
    """Why :func:`available` is ``False`` (``None`` when it is ``True``)."""
    return _load()


MAX_WEIGHT_BYTES = _build.max_weight_bytes()


def supports(dtype, activation: str = "tanh", H: int = 0, G: int = 1) -> bool:
    """Whether the kernels run for this dtype, simple-cell activation and ``W_h: [H, G H]``
    (float32, built, ``W_h`` within :data:`MAX_WEIGHT_BYTES`)."""
    return (
        jnp.dtype(dtype) == jnp.float32
        and activation in ACTIVATIONS
        and H * G * H * 4 <= MAX_WEIGHT_BYTES
        and available()
    )


def _table_ids(idx: Array | None) -> Array:
    return jnp.zeros((0,), jnp.int32) if idx is None else idx.astype(jnp.int32)


def _require(dtype, activation: str = "tanh") -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"native kernels: activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")  # fmt: skip
    if jnp.dtype(dtype) != jnp.float32:
        raise TypeError(f"native kernels: the kernels are float32; got {jnp.dtype(dtype)}")
    reason = _load()
    if reason is not None:
        raise _build.BuildError(reason)


def simple_forward(
    U: Array, idx: Array | None, W_h: Array, h0: Array, activation: str, threads: int = 0
) -> Array:
    """``S: [T + 1, B, H]`` with ``S[0] = h0`` and ``S[t + 1] = f(u_t + S[t] @ W_h)``.

    Args:
        U: ``[T, B, H]`` input projections; or, with ``idx``, a table ``[V, H]`` with
            ``u_t = U[idx[t]]`` (a row outside ``[0, V)`` reads as NaN, as ``jnp.take``).
        idx: ``None`` or ``[T, B]`` int row ids.
        W_h: ``[H, H]``.  h0: ``[B, H]``.  All float32.
        activation: ``tanh``, ``sigmoid``, ``relu``, ``identity`` / ``linear``.
        threads: row chunks to run in parallel (0: the XLA CPU thread pool's size).
    """
    _require(U.dtype, activation)
    B, H = h0.shape
    if idx is None:
        T = U.shape[0]
        if U.shape != (T, B, H):
            raise ValueError(f"native simple_forward: U must be [T, B, H] = [T, {B}, {H}]; got {U.shape}")  # fmt: skip
        idx = jnp.zeros((0,), jnp.int32)
    else:
        T = idx.shape[0]
        if U.ndim != 2 or U.shape[1] != H or idx.shape != (T, B):
            raise ValueError(f"native simple_forward: with idx, U must be a table [V, {H}] and idx [T, {B}]; got U {U.shape}, idx {idx.shape}")  # fmt: skip
        idx = idx.astype(jnp.int32)
    if W_h.shape != (H, H):
        raise ValueError(f"native simple_forward: W_h must be [{H}, {H}]; got {W_h.shape}")  # fmt: skip
    call = jax.ffi.ffi_call(
        ("jaxrnn_simple_forward"),
        jax.ShapeDtypeStruct((T + 1, B, H), jnp.float32),
        vmap_method="sequential",
    )
    return call(
        U, idx, W_h, h0, activation=np.int64(ACTIVATIONS[activation]), threads=np.int64(threads)
    )


ROWS = ("all", "first", "inputs")  # how a backward returns its [T + 1, B, G H] gradient


def _gradient_rows(rows: str, T: int, allowed: tuple[str, ...]) -> int:
    """Leading size of a backward's gradient result: ``"all"`` ``T + 1`` (``D[T] = 0``
    included), ``"first"`` 1 (``D[:1]``: the rest stays inside the call), ``"inputs"`` ``T``
    (``D[:T]``, the cotangent of ``U [T, B, G H]``, so XLA need not copy a slice of it). A
    layout not in ``allowed`` gives ``T + 1``."""
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS}; got {rows!r}")
    if rows not in allowed:
        return T + 1
    return {"all": T + 1, "first": 1, "inputs": T}[rows]


def simple_backward(
    S: Array,
    W_h: Array,
    g: Array,
    activation: str,
    idx: Array | None = None,
    vocab: int = 0,
    threads: int = 0,
    rows: str = "all",
) -> tuple[Array, Array, Array | None]:
    """``(D, dW_h, dTable)`` for the backward pass of :func:`simple_forward`.

    * ``D: [T + 1, B, H]``, ``D[T] = 0``, ``D[t] = (g_t + D[t + 1] @ W_h^T) * f'(S[t + 1])``
      (``D[t] = dL/du_t``, the cotangent of the step's input projection);
    * ``dW_h = S^T D: [H, H]``, accumulated inside the loop while ``S[t]`` and ``D[t]`` are
      in cache (one partial sum per thread, added in a fixed order);
    * with ``idx``: ``dTable: [vocab, H]``, ``dTable[v] = sum of D[t, b] where idx[t, b] = v``
      (the cotangent of the table ``U`` of :func:`simple_forward`; ids outside the table add
      nothing); else ``None``.

    Args:
        S: ``[T + 1, B, H]`` from :func:`simple_forward` (``T >= 1``).
        W_h: ``[H, H]``.
        g: ``[T, B, H]`` cotangents of ``S[1:]``; or ``[B, H]``, the cotangent of ``S[T]`` only.
        activation: as in :func:`simple_forward`.
        idx: ``None`` or the ``[T, B]`` row ids given to :func:`simple_forward`.
        vocab: rows ``V`` of that table (with ``idx``).
        threads: as in :func:`simple_forward`.
        rows: ``"all"``: ``D [T + 1, B, H]``; ``"inputs"``: ``D[:T]`` only, ``[T, B, H]``;
            ``"first"``: ``D[:1]`` only, ``[1, B, H]`` (what ``dL/dh_0`` needs where the
            table's gradient is all that uses ``D``: the call then keeps just two rows of it).
            The last two where ``dW_h`` is accumulated in the call (:func:`fuse_dw`;
            otherwise all rows).
    """
    _require(S.dtype, activation)
    T, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
    if T < 1 or W_h.shape != (H, H) or g.shape not in ((T, B, H), (B, H)):
        raise ValueError(f"native simple_backward: expected S [T + 1, B, H] with T >= 1, W_h [H, H], g [T, B, H] or [B, H]; got S {S.shape}, W_h {W_h.shape}, g {g.shape}")  # fmt: skip
    if idx is None:
        V, idx = 0, jnp.zeros((0,), jnp.int32)
    else:
        if idx.shape != (T, B) or vocab < 1:
            raise ValueError(f"native simple_backward: idx must be [T, B] = [{T}, {B}] with vocab >= 1; got idx {idx.shape}, vocab {vocab}")  # fmt: skip
        V, idx = int(vocab), idx.astype(jnp.int32)
    fused = fuse_dw(H, 1)
    n = _gradient_rows(rows, T, ROWS if fused else ("all",))
    call = jax.ffi.ffi_call(
        ("jaxrnn_simple_backward"),
        (
            jax.ShapeDtypeStruct((n, B, H), jnp.float32),  # D (or D[:T] or D[:1])
            jax.ShapeDtypeStruct((H, H), jnp.float32),  # dW_h
            jax.ShapeDtypeStruct((V, H), jnp.float32),  # dTable
        ),
        vmap_method="sequential",
    )
    D, dW_h, dTable = call(
        S, W_h, g.astype(jnp.float32), idx, activation=np.int64(ACTIVATIONS[activation]),
        threads=np.int64(threads), fuse_dw=np.int64(fused),
    )  # fmt: skip
    if not fused:
        dW_h = S.reshape(-1, H).T @ D.reshape(-1, H)
    return D, dW_h, (dTable if V else None)


def lstm_forward(
    U: Array, idx: Array | None, W_h: Array, h0: Array, c0: Array, threads: int = 0
) -> tuple[Array, Array, Array]:
    """The LSTM recurrence (gate order ``i, f, g, o``; sigmoid / tanh) on input projections.

    ``z_t = u_t + h_{t-1} W_h``, ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.

    Args:
        U: ``[T, B, 4H]``; or, with ``idx``, a table ``[V, 4H]`` (``u_t = U[idx[t]]``).
        idx: ``None`` or ``[T, B]`` int row ids.
        W_h: ``[H, 4H]``.  h0, c0: ``[B, H]``.  All float32.
        threads: as in :func:`simple_forward`.

    Returns:
        ``(S_h, S_c, G)``: states ``[T + 1, B, H]`` each (row 0 the initial one) and the gate
        activations ``G: [T, B, 4H]`` (what the backward pass reads), stored per group of 16
        units as the kernel computes them (:func:`gate_blocks` gives ``[i | f | g | o]``).
    """
    _require(U.dtype)
    B, H = h0.shape
    T = U.shape[0] if idx is None else idx.shape[0]
    want = (U.shape[0], 4 * H) if idx is not None else (T, B, 4 * H)
    if U.shape != want or W_h.shape != (H, 4 * H) or c0.shape != (B, H) or (idx is not None and idx.shape != (T, B)):  # fmt: skip
        raise ValueError(f"native lstm_forward: expected U [T, B, 4H] (or a table [V, 4H] with idx [T, B]), W_h [H, 4H], h0 and c0 [B, H] with B, H = {B}, {H}; got U {U.shape}, idx {None if idx is None else idx.shape}, W_h {W_h.shape}, c0 {c0.shape}")  # fmt: skip
    f32 = jnp.float32
    call = jax.ffi.ffi_call(
        ("jaxrnn_lstm_forward"),
        (
            jax.ShapeDtypeStruct((T + 1, B, H), f32),
            jax.ShapeDtypeStruct((T + 1, B, H), f32),
            jax.ShapeDtypeStruct((T, B, 4 * H), f32),
        ),
        vmap_method="sequential",
    )
    return call(U, _table_ids(idx), W_h, h0, c0, threads=np.int64(threads))


def gate_blocks(G: Array, H: int, gates: int = 4) -> Array:
    """``[..., gates H]`` in gate blocks (``[i | f | g | o]`` for the LSTM) from the layout of
    :func:`lstm_forward`'s ``G``: per group of 16 units ``j .. j + w - 1`` (``w = min(16,
    H - j)``), ``gates x w`` floats at ``gates j``, gate ``q`` at ``gates j + q w``."""
    if G.shape[-1] != gates * H:
        raise ValueError(f"native gate_blocks: expected [..., {gates} x H = {gates * H}]; got {G.shape}")  # fmt: skip
    u = np.arange(H)
    j = u // 16 * 16
    w = np.minimum(16, H - j)
    src = np.concatenate([gates * j + q * w + (u - j) for q in range(gates)])
    return G[..., src]


def lstm_backward(
    S_h: Array,
    S_c: Array,
    G: Array,
    W_h: Array,
    g_hs: Array | None,
    g_hT: Array,
    g_cT: Array,
    idx: Array | None = None,
    vocab: int = 0,
    threads: int = 0,
    rows: str = "all",
    g_cs: Array | None = None,
) -> tuple[Array, Array, Array, Array | None]:
    """``(D, dW_h, dc0, dTable)`` for the backward pass of :func:`lstm_forward`.

    ``G`` as :func:`lstm_forward` returns it. ``D: [T + 1, B, 4H]`` = ``dL/dz_t`` (gate
    blocks ``[i | f | g | o]``; ``D[T] = 0``), ``dW_h = S_h^T D: [H, 4H]``,
    ``dc0 = dL/dc_0: [B, H]`` and, with ``idx``, ``dTable: [vocab, 4H]`` (as in
    :func:`simple_backward`; else ``None``). ``g_hs``: ``[T, B, H]`` cotangents of
    ``S_h[1:]`` or ``None``; ``g_cs``: ``[T, B, H]`` cotangents of ``S_c[1:]`` (where the cell
    states are outputs too) or ``None``; ``g_hT, g_cT``: ``[B, H]`` cotangents of ``h_T, c_T``.
    ``rows="first"``: ``D`` is returned as ``D[:1]: [1, B, 4H]`` (what ``dL/dh_0`` needs
    when the table's gradient is all that uses ``D``): the call keeps just the two rows a
    step writes and reads, out of XLA's per-step memory; ``rows="inputs"``:
    ``D[:T]: [T, B, 4H]``, the cotangent of ``U`` as it is. Both only where ``dW_h`` is
    accumulated in the call (:func:`fuse_dw`; otherwise ``D`` is needed for it and returned
    whole).
    """
    _require(S_h.dtype)
    T, B, H = S_h.shape[0] - 1, S_h.shape[1], S_h.shape[2]
    ok = (
        T >= 1 and S_c.shape == S_h.shape and G.shape == (T, B, 4 * H)
        and W_h.shape == (H, 4 * H) and g_hT.shape == (B, H) and g_cT.shape == (B, H)
        and (g_hs is None or g_hs.shape == (T, B, H))
        and (g_cs is None or g_cs.shape == (T, B, H))
        and (idx is None or (idx.shape == (T, B) and vocab >= 1))
    )  # fmt: skip
    if not ok:
        raise ValueError(f"native lstm_backward: expected S_h, S_c [T + 1, B, H] (T >= 1), G [T, B, 4H], W_h [H, 4H], g_hs, g_cs [T, B, H] or None, g_hT, g_cT [B, H], idx [T, B] with vocab >= 1; got S_h {S_h.shape}, S_c {S_c.shape}, G {G.shape}, W_h {W_h.shape}, g_hs {None if g_hs is None else g_hs.shape}, g_cs {None if g_cs is None else g_cs.shape}, g_hT {g_hT.shape}, g_cT {g_cT.shape}, idx {None if idx is None else idx.shape}, vocab {vocab}")  # fmt: skip
    V = 0 if idx is None else int(vocab)
    f32 = jnp.float32
    fused = fuse_dw(H, 4)
    n = _gradient_rows(rows, T, ROWS if fused else ("all",))
    call = jax.ffi.ffi_call(
        ("jaxrnn_lstm_backward"),
        (
            jax.ShapeDtypeStruct((n, B, 4 * H), f32),  # D (or its first / first T rows)
            jax.ShapeDtypeStruct((H, 4 * H), f32),  # dW_h
            jax.ShapeDtypeStruct((B, H), f32),  # dc0
            jax.ShapeDtypeStruct((V, 4 * H), f32),  # dTable
        ),
        vmap_method="sequential",
    )
    hs = jnp.zeros((0,), f32) if g_hs is None else g_hs.astype(f32)
    cs = jnp.zeros((0,), f32) if g_cs is None else g_cs.astype(f32)
    D, dW_h, dc0, dTable = call(
        S_h, S_c, G, W_h, hs, cs, g_hT.astype(f32), g_cT.astype(f32), _table_ids(idx),
        threads=np.int64(threads), fuse_dw=np.int64(fused),
    )  # fmt: skip
    if not fused:
        dW_h = S_h.reshape(-1, H).T @ D.reshape(-1, 4 * H)
    return D, dW_h, dc0, (dTable if V else None)


def gru_forward(
    U: Array, idx: Array | None, W_h: Array, b_h: Array, h0: Array, threads: int = 0
) -> tuple[Array, Array]:
    """The GRU recurrence, ``reset_after`` (gate order ``z, r, n``), on input projections.

    ``[u_z, u_r, u_n] = h_{t-1} W_h + b_h``, ``z = sigmoid(a_z + u_z)``,
    ``r = sigmoid(a_r + u_r)``, ``n = tanh(a_n + r u_n)``, ``h_t = z h_{t-1} + (1 - z) n``.

    Args:
        U: ``[T, B, 3H]`` (``a_t = x_t W_x + b_x``); or, with ``idx``, a table ``[V, 3H]``.
        idx: ``None`` or ``[T, B]`` int row ids.
        W_h: ``[H, 3H]``.  b_h: ``[3H]``.  h0: ``[B, H]``.  All float32.
        threads: as in :func:`simple_forward`.

    Returns:
        ``(S, Sv)``: states ``[T + 1, B, H]`` (row 0 = ``h0``) and ``z, r, n, u_n``:
        ``[T, B, 4H]`` per step (what the backward pass reads), stored per group of 16 units
        as :func:`lstm_forward`'s ``G`` (:func:`gate_blocks` gives ``[z | r | n | u_n]``).
    """
    _require(U.dtype)
    B, H = h0.shape
    T = U.shape[0] if idx is None else idx.shape[0]
    want = (U.shape[0], 3 * H) if idx is not None else (T, B, 3 * H)
    if U.shape != want or W_h.shape != (H, 3 * H) or b_h.shape != (3 * H,) or (idx is not None and idx.shape != (T, B)):  # fmt: skip
        raise ValueError(f"native gru_forward: expected U [T, B, 3H] (or a table [V, 3H] with idx [T, B]), W_h [H, 3H], b_h [3H], h0 [B, H] with B, H = {B}, {H}; got U {U.shape}, idx {None if idx is None else idx.shape}, W_h {W_h.shape}, b_h {b_h.shape}")  # fmt: skip
    f32 = jnp.float32
    call = jax.ffi.ffi_call(
        ("jaxrnn_gru_forward"),
        (jax.ShapeDtypeStruct((T + 1, B, H), f32), jax.ShapeDtypeStruct((T, B, 4 * H), f32)),
        vmap_method="sequential",
    )
    return call(U, _table_ids(idx), W_h, b_h, h0, threads=np.int64(threads))


def gru_backward(
    S: Array,
    Sv: Array,
    W_h: Array,
    g: Array,
    idx: Array | None = None,
    vocab: int = 0,
    threads: int = 0,
    rows: str = "all",
    d_rows: str = "all",
) -> tuple[Array, Array, Array, Array, Array, Array | None]:
    """``(D, A, carry, dW_h, db_h, dTable)`` for the backward pass of :func:`gru_forward`.

    ``D = dL/du: [T + 1, B, 3H]`` (the recurrent pre-activations, ``D[T] = 0``),
    ``A = dL/da: [T + 1, B, 3H]`` (the input projections; they differ in the ``n`` block by
    the factor ``r``), ``carry = z_0 dL/dh_0`` through the update gate (``dL/dh_0 = carry +
    D[0] W_h^T``), ``dW_h = S^T D: [H, 3H]``, ``db_h = D.sum((0, 1)): [3H]`` (one partial sum
    per thread, added in a fixed order) and, with ``idx``, ``dTable: [vocab, 3H]`` (the rows
    of ``A`` added by id; else ``None``). ``g``: ``[T, B, H]`` cotangents of ``S[1:]``, or
    ``[B, H]`` for ``S[T]`` only. ``rows="first"``: ``A`` is returned as ``A[:1]: [1, B, 3H]``
    and the rest stays inside the call (as in :func:`lstm_backward`; with a table, its
    gradient is all that needs ``A``); ``rows="inputs"``: ``A[:T]``, the cotangent of
    ``U [T, B, 3H]`` as it is. ``d_rows="first"``: ``D`` as ``D[:1]`` (what ``dL/dh_0``
    needs; the call keeps two rows of it), where ``dW_h`` is accumulated in the call
    (:func:`fuse_dw`; otherwise ``D`` comes back whole).
    """
    _require(S.dtype)
    T, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
    ok = (
        T >= 1 and Sv.shape == (T, B, 4 * H) and W_h.shape == (H, 3 * H)
        and g.shape in ((T, B, H), (B, H))
        and (idx is None or (idx.shape == (T, B) and vocab >= 1))
    )  # fmt: skip
    if not ok:
        raise ValueError(f"native gru_backward: expected S [T + 1, B, H] (T >= 1), Sv [T, B, 4H], W_h [H, 3H], g [T, B, H] or [B, H], idx [T, B] with vocab >= 1; got S {S.shape}, Sv {Sv.shape}, W_h {W_h.shape}, g {g.shape}, idx {None if idx is None else idx.shape}, vocab {vocab}")  # fmt: skip
    V = 0 if idx is None else int(vocab)
    f32 = jnp.float32
    fused = fuse_dw(H, 3)
    n_d = _gradient_rows(d_rows, T, ("all", "first") if fused else ("all",))
    call = jax.ffi.ffi_call(
        ("jaxrnn_gru_backward"),
        (
            jax.ShapeDtypeStruct((n_d, B, 3 * H), f32),  # D (or D[:1])
            jax.ShapeDtypeStruct((_gradient_rows(rows, T, ROWS), B, 3 * H), f32),  # A
            jax.ShapeDtypeStruct((B, H), f32),  # carry
            jax.ShapeDtypeStruct((H, 3 * H), f32),  # dW_h
            jax.ShapeDtypeStruct((3 * H,), f32),  # db_h
            jax.ShapeDtypeStruct((V, 3 * H), f32),  # dTable
        ),
        vmap_method="sequential",
    )
    D, A, carry, dW_h, db_h, dTable = call(
        S, Sv, W_h, g.astype(f32), _table_ids(idx), threads=np.int64(threads),
        fuse_dw=np.int64(fused),
    )  # fmt: skip
    if not fused:
        dW_h = S.reshape(-1, H).T @ D.reshape(-1, 3 * H)
    return D, A, carry, dW_h, db_h, (dTable if V else None)


def _projection_ok(E: Array, W: Array, b: Array | None) -> bool:
    """float32 ``E: [V, K]``, ``W: [K, N]`` and ``b: [N]`` or ``None`` (both projections)."""
    ok = E.ndim == 2 and W.ndim == 2 and W.shape[0] == E.shape[1]
    ok = ok and (b is None or b.shape == (W.shape[1],))
    dtypes = (E.dtype, W.dtype) + (() if b is None else (b.dtype,))
    return ok and all(d == jnp.float32 for d in dtypes)


def table_projection(E: Array, W: Array, b: Array | None = None, threads: int = 0) -> Array:
    """``table = E @ W (+ b): [V, N]`` for ``E: [V, K]``, ``W: [K, N]``, ``b: [N]`` (float32;
    an embedding folded into an input projection)."""
    _require(E.dtype)
    if not _projection_ok(E, W, b):
        raise ValueError(f"native table_projection: expected float32 E [V, K], W [K, N], b [N] or None; got E {E.shape} {E.dtype}, W {W.shape} {W.dtype}, b {None if b is None else (b.shape, b.dtype)}")  # fmt: skip
    call = jax.ffi.ffi_call(
        ("jaxrnn_table_projection"),
        jax.ShapeDtypeStruct((E.shape[0], W.shape[1]), jnp.float32),
        vmap_method="sequential",
    )
    bias = jnp.zeros((0,), jnp.float32) if b is None else b
    return call(E, W, bias, threads=np.int64(threads))


def rows_projection(
    E: Array, ids: Array, W: Array, b: Array | None = None, threads: int = 0
) -> Array:
    """``E[ids] @ W (+ b): [..., N]`` for ``E: [V, K]``, int ``ids: [...]``, ``W: [K, N]``,
    ``b: [N]`` (float32; the step inputs of a batch with fewer tokens than the vocabulary,
    ``ids = tokens.T: [T, B]``, in one call instead of XLA's gather, product and bias add).
    An id outside ``[0, V)`` gives a NaN row, as ``jnp.take(E, ids, axis=0) @ W`` does."""
    _require(E.dtype)
    if not (_projection_ok(E, W, b) and jnp.issubdtype(ids.dtype, jnp.integer)):
        raise ValueError(f"native rows_projection: expected float32 E [V, K], integer ids, W [K, N], b [N] or None; got E {E.shape} {E.dtype}, ids {ids.shape} {ids.dtype}, W {W.shape} {W.dtype}, b {None if b is None else (b.shape, b.dtype)}")  # fmt: skip
    call = jax.ffi.ffi_call(
        ("jaxrnn_rows_projection"),
        jax.ShapeDtypeStruct((*ids.shape, W.shape[1]), jnp.float32),
        vmap_method="sequential",
    )
    bias = jnp.zeros((0,), jnp.float32) if b is None else b
    return call(E, ids.astype(jnp.int32), W, bias, threads=np.int64(threads))


def _projection_gradient(name: str, E: Array, W: Array) -> Callable:
    """The FFI call of a projection's gradient: results ``dE`` like ``E: [V, K]``, ``dW`` like
    ``W: [K, N]`` and ``db: [N]``, float32."""
    f32 = jnp.float32
    return jax.ffi.ffi_call(
        name,
        (
            jax.ShapeDtypeStruct(E.shape, f32),  # dE
            jax.ShapeDtypeStruct(W.shape, f32),  # dW
            jax.ShapeDtypeStruct((W.shape[1],), f32),  # db
        ),
        vmap_method="sequential",
    )


def rows_projection_backward(
    dOut: Array, E: Array, ids: Array, W: Array, threads: int = 0
) -> tuple[Array, Array, Array]:
    """``(dE, dW, db)``: the gradient of projected rows ``out = E[ids] @ W + b`` from
    ``dOut: [..., N]`` (``ids: [...]`` into ``E: [V, K]``, ``W: [K, N]``): ``dE: [V, K]`` the
    rows ``dOut @ W^T`` added into the rows ``ids`` name (zeros elsewhere; an id outside
    ``[0, V)`` adds nothing), ``dW = E[ids]^T @ dOut: [K, N]`` (NaN where an id is outside
    ``[0, V)``, as ``jnp.take``'s NaN row gives) and ``db = dOut`` summed over rows ``[N]``;
    repeated ids add in row order. All float32. One call instead of XLA's gather, products,
    reduction, zero fill and scatter."""
    _require(dOut.dtype)
    ok = (
        _projection_ok(E, W, None) and jnp.issubdtype(ids.dtype, jnp.integer)
        and dOut.shape == (*ids.shape, W.shape[1])
    )  # fmt: skip
    if not ok:
        raise ValueError(f"native rows_projection_backward: expected float32 dOut [..., N] for integer ids [...], E [V, K], W [K, N]; got dOut {dOut.shape} {dOut.dtype}, ids {ids.shape} {ids.dtype}, E {E.shape} {E.dtype}, W {W.shape} {W.dtype}")  # fmt: skip
    call = _projection_gradient("jaxrnn_rows_projection_backward", E, W)
    return call(dOut, E, ids.astype(jnp.int32), W, threads=np.int64(threads))


def table_projection_backward(
    dTable: Array, E: Array, W: Array, threads: int = 0
) -> tuple[Array, Array, Array]:
    """``(dE, dW, db)``: the gradient of a projected table ``table = E @ W + b`` from
    ``dTable: [V, N]`` (``E: [V, K]``, ``W: [K, N]``), in one pass over ``dTable``:
    ``dE = dTable @ W^T: [V, K]``, ``dW = E^T @ dTable: [K, N]``, ``db = dTable.sum(0): [N]``
    (one partial ``dW`` and ``db`` per thread, added in a fixed order). All float32."""
    _require(dTable.dtype)
    ok = (
        dTable.ndim == 2 and E.ndim == 2 and W.ndim == 2
        and E.shape[0] == dTable.shape[0] and W.shape == (E.shape[1], dTable.shape[1])
    )  # fmt: skip
    if not ok or E.dtype != jnp.float32 or W.dtype != jnp.float32:
        raise ValueError(f"native table_projection_backward: expected float32 dTable [V, N], E [V, K], W [K, N]; got dTable {dTable.shape} {dTable.dtype}, E {E.shape} {E.dtype}, W {W.shape} {W.dtype}")  # fmt: skip
    call = _projection_gradient("jaxrnn_table_projection_backward", E, W)
    return call(dTable, E, W, threads=np.int64(threads))
