"""Fast recurrences: the same numbers as :func:`jaxrnn.rnn`, computed with fewer, bigger steps.

:func:`jaxrnn.rnn` is the plain formulation: one ``lax.scan`` over ``cell(params, h, x_t)``
and ``jax.grad`` through it. Here the same maths is rearranged so that every
matrix product that does not sit on the sequential path is one large matmul
outside the loop, and the loop body keeps only what must be sequential::

    U  = x W_x + b                       # [T, B, G H]  one matmul before the scan (hoisted)
    h_t = cell_update(U_t + h_{t-1} W_h)  # the scan: one small matmul per step
    -- backward (custom VJP) --
    dA_t, dh_{t-1} = cell_backward(dh_t, saved_t) ; dh_{t-1} += dA_t W_h^T    # the scan
    dW_h = H_prev^T dA                   # ONE matmul [H, T B] @ [T B, G H] after the loop
    dW_x = X^T dA,  dx = dA W_x^T,  db = sum dA   # by autodiff of the hoisted matmul

The loops write into preallocated buffers in place: ``S = [h_0, h_1, ..., h_T]:
[T + 1, B, H]`` in the forward pass (step ``t`` reads row ``t``, writes row ``t + 1``),
``D = [dA_0, ..., dA_{T-1}, 0]`` in the backward pass; so ``h_prev = S[:-1]`` needs no
concatenation and ``dW_h = S^T D`` is one matmul over both whole buffers (the zero row
adds nothing). On XLA:CPU this measured ~4% faster on the seed training step than
stacking ``lax.scan`` outputs (one copy per step fewer, no ``[T, B, H]`` concatenation).

Autodiff of the plain scan instead accumulates ``dW_h`` with a small
``[H, B] @ [B, G H]`` product in every backward step, carries it through the
loop and saves the per-step residuals it needs. For the seed model the input
projection goes one step further: ``x_t W_x + b = (E W_x + b)[w_t]`` — project
the ``[V, E]`` embedding table once (``V E G H`` instead of ``T B E G H``
multiply-adds) and gather rows of the projected table.

For float32 on a CPU with AVX-512 the simple, LSTM and GRU loops (forward and backward,
with ``dW_h`` and the table's gradient) run as hand-written kernels instead,
:mod:`jaxrnn.native` (XLA FFI custom calls, chosen per platform with
``lax.platform_dependent``; the seed training step 7.4 -> 4.8 ms here,
benchmarks/RESULTS.md). On an NVIDIA GPU, for float32 and H <= 128, the simple cell's and the
GRU's loops run as persistent Pallas kernels instead, :mod:`jaxrnn.gpu` (the seed step 2.45
-> 1.02 ms on an H100, the GRU's 4.07 -> 2.84). Every other dtype / backend / cell runs the
XLA loops below.

Everything here is checked against the plain path in float64 (outputs and
gradients; ``tests/test_fast.py``; the kernels in float32, ``tests/test_native.py``).
``lengths`` and ``reverse`` run on the same loops (all ``T`` steps; each sequence's carry
is picked at its length, outputs past it zeroed; reversal is a reindexing of the inputs
and outputs). What is not covered falls back to :func:`jaxrnn.rnn`: cells other than
simple / LSTM / GRU (reset_after), activations without an output-based derivative,
dropout masks. The seed classifier (:func:`classifier_logits`) covers post-padded
reviews and input dropout (the masked word vectors are projected); only recurrent
dropout falls back there.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, fast, rnn
    >>> p = cells.simple.init(jax.random.key(0), 8, 16)
    >>> xs = jax.random.normal(jax.random.key(1), (4, 20, 8), jnp.float32)   # [B, T, D]
    >>> h_T, ys = fast.rnn(cells.simple.cell, p, xs)
    >>> ys.shape, bool(jnp.allclose(h_T, rnn(cells.simple.cell, p, xs)[0], atol=1e-5))
    ((4, 20, 16), True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells, gpu, models, native
from jaxrnn import dropout as dropout_lib
from jaxrnn.cells._common import Array
from jaxrnn.layer import carry_output, check_lengths, remat_segment, reverse_padded, scan_segments
from jaxrnn.layer import rnn as plain_rnn

# Steps per iteration of the XLA loops. ``None`` (the default): 1 where JAX's default backend
# is the CPU (unrolling did not pay on XLA:CPU here, RESULTS.md), GPU_UNROLL elsewhere: on an
# H100 the seed training step's XLA loops ran 3.85 ms at 1, 2.44 ms at 10 (per-iteration
# launch overhead; GPU section of RESULTS.md). The GPU kernels (:mod:`jaxrnn.gpu`) and the
# native CPU kernels have no unroll.
DEFAULT_UNROLL = None
GPU_UNROLL = 10

# Activations whose derivative is a function of the output h = f(a): f'(a) = d(h).
_DERIV_FROM_OUTPUT: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda h: 1.0 - h * h,
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
    "identity": lambda h: jnp.ones_like(h),
    "linear": lambda h: jnp.ones_like(h),
}
_ACT = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "identity": lambda a: a,
    "linear": lambda a: a,
}


# ----------------------------------------------------------------------------- simple cell


def divisor_unroll(T: int, unroll: int | None) -> int:
    """The largest divisor of ``T`` not above ``unroll`` (``None``: see :data:`DEFAULT_UNROLL`).

    A scan whose length is not a multiple of ``unroll`` gets a remainder loop, and on
    XLA:CPU the reversed (backward) scan with a remainder ran 2-3x slower here
    (benchmarks/RESULTS.md), so the fast path only unrolls by divisors of ``T``.

    >>> divisor_unroll(250, 8), divisor_unroll(256, 8), divisor_unroll(97, 8)
    (5, 8, 1)
    """
    if unroll is None:
        unroll = 1 if jax.default_backend() == "cpu" else GPU_UNROLL
    return max(d for d in range(1, max(1, min(unroll, T)) + 1) if T % d == 0)


def _per_platform(xla: Callable, cpu: Callable | None = None, cuda: Callable | None = None):
    """``xla()``, or ``lax.platform_dependent`` over it and the kernels that apply: ``cpu`` the
    native kernels (:mod:`jaxrnn.native`), ``cuda`` the Pallas ones (:mod:`jaxrnn.gpu`).
    Only the branch of the platform compiled for is lowered."""
    branches = {name: f for name, f in (("cpu", cpu), ("cuda", cuda)) if f is not None}
    return jax.lax.platform_dependent(**branches, default=xla) if branches else xla()


def _use_gpu(x: Array, W_h: Array, cell: str) -> bool:
    """Whether a cell's loops get a GPU kernel (:func:`jaxrnn.gpu.supports`)."""
    return gpu.supports(x.dtype, W_h.shape[0], cell)


def _dense(U: Array, idx: Array | None) -> Array:
    """``[T, B, G H]`` step inputs: ``U`` itself, or the rows ``U[idx]`` of a table (the GPU
    kernels read dense inputs; the gather is one XLA op)."""
    return U if idx is None else jnp.take(U, idx, axis=0)


def _dU_of(D: Array, U: Array, idx: Array | None) -> Array:
    """``dL/dU`` from ``D = dL/du: [N, B, G H]``: ``D`` itself, or scattered onto the rows
    ``idx: [N, B]`` of a table ``U: [V, G H]``."""
    if idx is None:
        return D
    return jnp.zeros_like(U).at[idx.reshape(-1)].add(D.reshape(-1, U.shape[-1]))


def _dW_of(S: Array, D: Array) -> Array:
    """``dW_h = sum_t h_{t-1}^T D_t``: ``S: [T + 1, B, H]``, ``D: [T, B, G H]`` -> ``[H, G H]``,
    one ``[H, T B] @ [T B, G H]`` matmul."""
    H = S.shape[-1]
    return S[:-1].reshape(-1, H).T @ D.reshape(-1, D.shape[-1])


def _input_cotangent(dZ: Array, U: Array, idx: Array | None) -> Array:
    """The cotangent of ``U`` from an XLA loop's gradient buffer ``dZ: [T + 1, B, G H]``
    (``dZ[t] = dL/du_t``, ``dZ[T] = 0``).

    For ``U: [T, ...]`` the zero row is dropped; for a table it is scattered too (onto
    row 0, adding nothing) so the ``[T B, G H]`` updates are not sliced out of the buffer.
    """
    if idx is None:
        return dZ[:-1]
    idx_ext = jnp.concatenate([idx, jnp.zeros((1, *idx.shape[1:]), idx.dtype)])  # [T + 1, B]
    return _dU_of(dZ, U, idx_ext)  # [V, G H]


def _drop_zero_row(D: Array, S: Array) -> Array:
    """``D[:T]`` of a kernel's gradient buffer: itself where the kernel returned ``T`` rows
    (``rows="inputs"``), else sliced (``S: [T + 1, ...]`` gives ``T``)."""
    return D if D.shape[0] == S.shape[0] - 1 else D[:-1]


def _row(buf: Array, t: Array) -> Array:
    """``buf[t]`` for a traced ``t``: ``[N, ...] -> [...]``."""
    return jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)


def _set_row(buf: Array, value: Array, t: Array) -> Array:
    """``buf.at[t].set(value)`` for a traced ``t`` (in place inside a loop)."""
    return jax.lax.dynamic_update_index_in_dim(buf, value, t, 0)


def _num_steps(U: Array, idx: Array | None) -> int:
    """``T``: rows of ``U: [T, B, G H]``, or of ``idx: [T, B]`` for a table ``U: [V, G H]``."""
    return U.shape[0] if idx is None else idx.shape[0]


def _state_buffer(x0: Array, T: int) -> Array:
    """``[T + 1, B, H]`` with row 0 = ``x0: [B, H]``; the loop writes rows 1..T in place."""
    return jnp.zeros((T + 1, *x0.shape), x0.dtype).at[0].set(x0)


def _step_input(U: Array, idx: Array | None, t: Array) -> Array:
    """``u_t: [B, G H]``: ``U[t]`` of ``U: [T, B, G H]``, or ``U[idx[t]]`` of a table ``[V, G H]``.

    With a table the rows are gathered inside the loop, so no ``[T, B, G H]`` tensor is
    ever built (on a CPU, filling and paging such buffers cost more than the gathers).
    """
    return _row(U, t) if idx is None else jnp.take(U, _row(idx, t), axis=0)


def _simple_forward(U, idx, W_h, h0, activation, unroll) -> Array:
    """``S[0] = h_0``, ``S[t + 1] = f(u_t + S[t] @ W_h)`` -> ``S: [T + 1, B, H]``.

    One buffer holds every state: step ``t`` reads row ``t`` and writes row ``t + 1``
    in place, so the activation is computed straight into the buffer (no separate
    copy per step), ``hs = S[1:]`` and ``h_prev = S[:-1]`` need no concatenation.
    This layout measured ~10% faster per forward loop than carrying ``h`` and stacking it
    (in-process A/B; the whole training step: 7.13 -> 6.82 ms, benchmarks/RESULTS.md).
    """
    return _per_platform(
        lambda: _simple_forward_xla(U, idx, W_h, h0, activation, unroll),
        cpu=(lambda: native.simple_forward(U, idx, W_h, h0, activation))
        if _use_native(U, W_h, activation)
        else None,
        cuda=(lambda: gpu.simple_forward(_dense(U, idx), W_h, h0))
        if activation == "tanh" and _use_gpu(U, W_h, "simple")
        else None,
    )


def _use_native(x: Array, W_h: Array, activation: str = "tanh") -> bool:
    """Whether a cell's loops go to :mod:`jaxrnn.native` (float32, AVX-512 CPU, built, ``W_h:
    [H, G H]`` small enough: :func:`jaxrnn.native.supports`)."""
    H = W_h.shape[0]
    return native.supports(x.dtype, activation, H, W_h.shape[1] // H)


def _simple_forward_xla(U, idx, W_h, h0, activation, unroll) -> Array:
    """:func:`_simple_forward` as an XLA loop (any dtype, any backend)."""
    f = _ACT[activation]
    T = _num_steps(U, idx)
    S = _state_buffer(h0, T)  # [T + 1, B, H]

    def step(t, S):
        return _set_row(S, f(_step_input(U, idx, t) + _row(S, t) @ W_h), t + 1)

    return jax.lax.fori_loop(0, T, step, S, unroll=divisor_unroll(T, unroll))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def simple_scan(
    U: Array,
    W_h: Array,
    h0: Array,
    idx: Array | None = None,
    activation: str = "tanh",
    unroll: int | None = DEFAULT_UNROLL,
    last_only: bool = False,
) -> Array:
    """The simple-cell recurrence on pre-projected inputs, with a hand-written BPTT.

    .. math:: h_t = f(U_t + h_{t-1} W_h)

    Backward: ``da_t = (g_t + da_{t+1} W_h^T) * f'(h_t)`` in a reversed loop, then
    ``dW_h = [h_0 .. h_{T-1}]^T dA`` as one ``[H, T B] @ [T B, H]`` matmul.

    Args:
        U: ``[T, B, H]`` input projections ``x_t W_x + b`` (time-major); or, with
            ``idx``, a projected table ``[V, H]`` with ``u_t = U[idx[t]]``.
        W_h: ``[H, H]`` recurrent kernel.
        h0: ``[B, H]`` initial state.
        idx: ``None`` or ``[T, B]`` int rows of ``U``.
        activation: one of ``tanh``, ``sigmoid``, ``relu``, ``identity``/``linear``.
        unroll: steps per loop iteration of the XLA loops (rounded down to a divisor of ``T``;
            ``None``: :data:`DEFAULT_UNROLL`).
        last_only: return only ``h_T`` (then the backward pass reads no ``[T, B, H]``
            cotangent).

    Returns:
        ``hs: [T, B, H]``, every state; or ``h_T: [B, H]`` with ``last_only``.
    """
    S = _simple_forward(U, idx, W_h, h0, activation, unroll)
    return S[-1] if last_only else S[1:]


def _simple_scan_fwd(U, W_h, h0, idx, activation, unroll, last_only):
    S = _simple_forward(U, idx, W_h, h0, activation, unroll)
    return (S[-1] if last_only else S[1:]), (S, W_h, U, idx)


def _simple_scan_bwd(activation, unroll, last_only, res, g):
    S, W_h, U, idx = res  # S: [T + 1, B, H] = [h_0, ..., h_T]

    # D[t] = dL/da_t (a_t the pre-activation of step t), D[T] = 0: one buffer written in
    # place, row t from row t + 1, like the forward pass.
    def xla():
        D, dW_h = _simple_backward_xla(S, W_h, g, activation, unroll, last_only)
        return D[0], dW_h, _input_cotangent(D, U, idx)

    def cpu():  # one call: the loop, dW_h and (for a table) the scatter into dU
        vocab = 0 if idx is None else U.shape[0]
        # without a table D[:T] is dU itself: asked for as such, it needs no slicing in XLA;
        # with one only D[0] leaves the call (for dh0)
        rows = "inputs" if idx is None else "first"
        D, dW_h, dTable = native.simple_backward(S, W_h, g, activation, idx, vocab, rows=rows)
        return D[0], dW_h, (_drop_zero_row(D, S) if idx is None else dTable)

    def cuda():  # the reversed loop in one kernel; dW_h and dU in XLA
        D = gpu.simple_backward(S, W_h, g, last_only)  # [T, B, H]
        return D[0], _dW_of(S, D), _dU_of(D, U, idx)

    D0, dW_h, dU = _per_platform(
        xla,
        cpu=cpu if _use_native(S, W_h, activation) else None,
        cuda=cuda if activation == "tanh" and _use_gpu(S, W_h, "simple") else None,
    )
    dh0 = D0 @ W_h.T  # [B, H]
    didx = None if idx is None else np.zeros(idx.shape, jax.dtypes.float0)
    return dU, dW_h, dh0, didx


def _simple_backward_xla(S, W_h, g, activation, unroll, last_only) -> Array:
    """``(D, dW_h)``: ``D: [T + 1, B, H]`` (``D[t] = dL/da_t``, ``D[T] = 0``) from an XLA
    loop, and ``dW_h = S^T D: [H, H]``."""
    d = _DERIV_FROM_OUTPUT[activation]
    W_hT = W_h.T  # [H, H]
    T = S.shape[0] - 1
    D = jnp.zeros_like(S)  # [T + 1, B, H]
    if last_only:  # g = dL/dh_T: [B, H]; the last step is peeled off
        D = D.at[T - 1].set(g * d(S[T]))

        def step(j, D):
            t = T - 2 - j
            return _set_row(D, (_row(D, t + 1) @ W_hT) * d(_row(S, t + 1)), t)

        n = T - 1
    else:  # g = dL/dhs: [T, B, H]

        def step(j, D):
            t = T - 1 - j
            return _set_row(D, (_row(g, t) + _row(D, t + 1) @ W_hT) * d(_row(S, t + 1)), t)

        n = T
    D = jax.lax.fori_loop(0, n, step, D, unroll=divisor_unroll(max(n, 1), unroll))
    H = W_h.shape[0]
    # dW_h = sum_t h_{t-1}^T da_t = S^T D over all T + 1 rows (D[T] = 0): ONE matmul
    # [H, (T + 1) B] @ [(T + 1) B, H], with no slice of either buffer copied.
    return D, S.reshape(-1, H).T @ D.reshape(-1, H)


simple_scan.defvjp(_simple_scan_fwd, _simple_scan_bwd)


# ------------------------------------------------------------------------------ LSTM cell


def _lstm_gate_affine(H: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(half, shift): [4H]`` with ``gates = tanh(z * half) * half + shift`` for the blocks
    ``i, f, g, o``: ``sigmoid(z) = (1 + tanh(z / 2)) / 2`` for ``i, f, o``, ``tanh(z)`` for ``g``.
    One ``[B, 4H]`` element-wise pass instead of four slices (~12% off the forward loop on CPU)."""
    half = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], dtype), H)
    shift = np.repeat(np.array([0.5, 0.5, 0.0, 0.5], dtype), H)
    return half, shift


def _lstm_forward(U, idx, W_h, h0, c0, unroll):
    """``(S_h, S_c, Gs)``: :func:`jaxrnn.native.lstm_forward` for float32 on an AVX-512 CPU,
    :func:`jaxrnn.gpu.lstm_forward` on a GPU where :func:`jaxrnn.gpu.supports` it, else
    :func:`_lstm_forward_xla`."""
    return _per_platform(
        lambda: _lstm_forward_xla(U, idx, W_h, h0, c0, unroll),
        cpu=(lambda: native.lstm_forward(U, idx, W_h, h0, c0)) if _use_native(U, W_h) else None,
        cuda=(lambda: gpu.lstm_forward(_dense(U, idx), W_h, h0, c0))
        if _use_gpu(U, W_h, "lstm")
        else None,
    )


def _lstm_forward_xla(U, idx, W_h, h0, c0, unroll):
    """LSTM recurrence on ``u_t = x_t W_x + b`` -> buffers ``S_h, S_c: [T + 1, B, H]``
    (``S[0]`` the initial state, ``S[t + 1]`` the state after step ``t``) and the gate
    activations ``Gs: [T, B, 4H]``, each written in place like :func:`_simple_forward`."""
    H = W_h.shape[0]
    T = _num_steps(U, idx)
    half, shift = _lstm_gate_affine(H, W_h.dtype)  # one tanh over all four gate blocks
    S_h, S_c = _state_buffer(h0, T), _state_buffer(c0, T)  # [T + 1, B, H] each
    Gs = jnp.zeros((T, h0.shape[0], 4 * H), h0.dtype)  # [T, B, 4H]

    def step(t, carry):
        c_prev, S_h, S_c, Gs = carry
        z = _step_input(U, idx, t) + _row(S_h, t) @ W_h  # [B, 4H]
        gates = jnp.tanh(z * half) * half + shift  # [B, 4H]: sigmoid | sigmoid | tanh | sigmoid
        i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        # c_{t-1} is carried, not read back from S_c: a read and an in-place write of the same
        # buffer in two fusions made XLA copy the whole buffer every step
        c = f * c_prev + i * g  # [B, H]
        h = o * jnp.tanh(c)
        return c, _set_row(S_h, h, t + 1), _set_row(S_c, c, t + 1), _set_row(Gs, gates, t)

    _, S_h, S_c, Gs = jax.lax.fori_loop(
        0, T, step, (c0, S_h, S_c, Gs), unroll=divisor_unroll(T, unroll)
    )
    return S_h, S_c, Gs


def _lstm_outputs(S_h, S_c, last_only, with_cells):
    final = (S_h[-1], S_c[-1])
    if last_only:
        return final
    return (S_h[1:], final, S_c[1:]) if with_cells else (S_h[1:], final)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def lstm_scan(U, W_h, h0, c0, idx=None, unroll=DEFAULT_UNROLL, last_only=False, with_cells=False):
    """The LSTM recurrence (Keras gate order ``i, f, g, o``) with a hand-written BPTT.

    .. math::
        [z_i, z_f, z_g, z_o] = U_t + h_{t-1} W_h, \\quad
        c_t = \\sigma(z_f) c_{t-1} + \\sigma(z_i) \\tanh(z_g), \\quad
        h_t = \\sigma(z_o) \\tanh(c_t)

    Args:
        U: ``[T, B, 4H]`` input projections ``x_t W_x + b``, or a table ``[V, 4H]`` with ``idx``.
        W_h: ``[H, 4H]``.
        h0, c0: ``[B, H]``.
        idx: ``None`` or ``[T, B]`` int rows of ``U``.
        unroll: steps per XLA loop iteration (a divisor of ``T``; ``None``: :data:`DEFAULT_UNROLL`).
        last_only: return only ``(h_T, c_T)``.
        with_cells: also return the cell states ``cs [T, B, H]`` (``c_1 .. c_T``; differentiable),
            e.g. to pick each sequence's carry at its own length.

    Returns:
        ``(hs [T, B, H], (h_T, c_T))``; ``(h_T, c_T)`` with ``last_only``;
        ``(hs, (h_T, c_T), cs [T, B, H])`` with ``with_cells``.
    """
    S_h, S_c, _ = _lstm_forward(U, idx, W_h, h0, c0, unroll)
    return _lstm_outputs(S_h, S_c, last_only, with_cells)


def _lstm_scan_fwd(U, W_h, h0, c0, idx, unroll, last_only, with_cells):
    S_h, S_c, Gs = _lstm_forward(U, idx, W_h, h0, c0, unroll)
    return _lstm_outputs(S_h, S_c, last_only, with_cells), (S_h, S_c, Gs, W_h, U, idx)


def _lstm_scan_bwd(unroll, last_only, with_cells, res, g):
    S_h, S_c, Gs, W_h, U, idx = res
    g_cs = None
    if last_only:
        g_hs, (g_hT, g_cT) = None, g
    elif with_cells:
        g_hs, (g_hT, g_cT), g_cs = g
    else:
        g_hs, (g_hT, g_cT) = g

    def xla():
        D, dW_h, dc0 = _lstm_backward_xla(S_h, S_c, Gs, W_h, g_hs, g_hT, g_cT, unroll, g_cs)
        return D[0], dW_h, dc0, _input_cotangent(D, U, idx)

    def cpu():  # one call: the loop, dW_h and (for a table) the scatter into dU
        vocab = 0 if idx is None else U.shape[0]
        # with a table only D[0] leaves the call (for dh0): 26 MB less per seed step; without
        # one D[:T] is dU itself (no slicing in XLA)
        D, dW_h, dc0, dTable = native.lstm_backward(
            S_h, S_c, Gs, W_h, g_hs, g_hT, g_cT, idx, vocab,
            rows="inputs" if idx is None else "first", g_cs=g_cs,
        )  # fmt: skip
        return D[0], dW_h, dc0, (_drop_zero_row(D, S_h) if idx is None else dTable)

    def cuda():  # the reversed loop in one kernel; dW_h and dU in XLA
        D, dc0 = gpu.lstm_backward(S_c, Gs, W_h, g_hs, g_hT, g_cT, g_cs)  # [T, B, 4H], [B, H]
        return D[0], _dW_of(S_h, D), dc0, _dU_of(D, U, idx)

    D0, dW_h, dc0, dU = _per_platform(
        xla,
        cpu=cpu if _use_native(S_h, W_h) else None,
        cuda=cuda if _use_gpu(S_h, W_h, "lstm") else None,
    )
    dh0 = D0 @ W_h.T  # [B, H]
    didx = None if idx is None else np.zeros(idx.shape, jax.dtypes.float0)
    return dU, dW_h, dh0, dc0, didx


def _lstm_backward_xla(S_h, S_c, Gs, W_h, g_hs, g_hT, g_cT, unroll, g_cs=None):
    """``(D, dW_h, dc0)``: ``D = dL/dz: [T + 1, B, 4H]`` (``D[T] = 0``) from an XLA loop,
    ``dW_h = S_h^T D: [H, 4H]`` and ``dc0 = dL/dc_0: [B, H]``. ``g_hs``, ``g_cs``: ``[T, B, H]``
    cotangents of every ``h_t`` / ``c_t``, or ``None``."""
    H = W_h.shape[0]
    T = Gs.shape[0]
    W_hT = W_h.T  # [4H, H]

    half, shift = _lstm_gate_affine(H, W_h.dtype)

    def dz_of(dh, dc, t):
        """dL/dz_t [B, 4H] and dL/dc_{t-1} from dL/dh_t, the dL/dc_t carried from t + 1."""
        gt, c, c_prev = _row(Gs, t), _row(S_c, t + 1), _row(S_c, t)
        i, f, gg, o = gt[:, :H], gt[:, H : 2 * H], gt[:, 2 * H : 3 * H], gt[:, 3 * H :]
        tc = jnp.tanh(c)
        dc = dc + dh * o * (1.0 - tc * tc)  # [B, H]
        # dL/d(gates) [B, 4H] times d(gates)/dz in one expression (one fusion on CPU):
        # gates = tanh(z half) half + shift, so d(gates)/dz = half^2 - (gates - shift)^2,
        # i.e. s (1 - s) for the sigmoid blocks and 1 - g^2 for the tanh block
        d_gates = jnp.concatenate([dc * gg, dc * c_prev, dc * i, dh * tc], axis=-1)
        q = gt - shift
        return d_gates * (half * half - q * q), dc * f

    # D[t] = dL/dz_t, D[T] = 0, written in place; step T - 1 (where the cotangents of
    # h_T, c_T enter) is peeled off, the loop runs t = T - 2 .. 0.
    D = jnp.zeros((T + 1, *Gs.shape[1:]), Gs.dtype)  # [T + 1, B, 4H]
    dh_last = g_hT if g_hs is None else g_hT + g_hs[T - 1]
    dc_last = g_cT if g_cs is None else g_cT + g_cs[T - 1]
    dz, dc = dz_of(dh_last, dc_last, T - 1)
    D = D.at[T - 1].set(dz)

    def step(j, carry):
        D, dc = carry
        t = T - 2 - j
        dh = _row(D, t + 1) @ W_hT  # [B, H]
        if g_hs is not None:
            dh = dh + _row(g_hs, t)
        if g_cs is not None:
            dc = dc + _row(g_cs, t)
        dz, dc = dz_of(dh, dc, t)
        return _set_row(D, dz, t), dc

    n = T - 1
    D, dc0 = jax.lax.fori_loop(0, n, step, (D, dc), unroll=divisor_unroll(max(n, 1), unroll))
    # dW_h = sum_t h_{t-1}^T dz_t = S_h^T D over all T + 1 rows (D[T] = 0): one matmul
    dW_h = S_h.reshape(-1, H).T @ D.reshape(-1, 4 * H)  # [H, (T+1) B] @ [(T+1) B, 4H]
    return D, dW_h, dc0


lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


# ------------------------------------------------------------------------------- GRU cell


def _gru_forward(U, idx, W_h, b_h, h0, unroll):
    """``(S, Sv)``: :func:`jaxrnn.native.gru_forward` for float32 on an AVX-512 CPU,
    :func:`jaxrnn.gpu.gru_forward` on a GPU where :func:`jaxrnn.gpu.supports` it, else
    :func:`_gru_forward_xla`."""
    return _per_platform(
        lambda: _gru_forward_xla(U, idx, W_h, b_h, h0, unroll),
        cpu=(lambda: native.gru_forward(U, idx, W_h, b_h, h0)) if _use_native(U, W_h) else None,
        cuda=(lambda: gpu.gru_forward(_dense(U, idx), W_h, b_h, h0))
        if _use_gpu(U, W_h, "gru")
        else None,
    )


def _gru_forward_xla(U, idx, W_h, b_h, h0, unroll):
    """GRU (reset_after) on ``a_t = x_t W_x + b_x`` -> states ``S: [T + 1, B, H]``
    (``S[0] = h_0``) and ``Sv: [T, B, 4H]`` = ``[z, r, n, u_h]`` of every step, written
    in place (``h`` is carried too: the update reads ``h_{t-1}`` element-wise)."""
    H = W_h.shape[0]
    T = _num_steps(U, idx)
    S = _state_buffer(h0, T)  # [T + 1, B, H]
    Sv = jnp.zeros((T, h0.shape[0], 4 * H), h0.dtype)  # [T, B, 4H]

    def step(t, carry):
        h, S, Sv = carry
        a = _step_input(U, idx, t)  # [B, 3H]
        u = h @ W_h + b_h  # [B, 3H]
        z = jax.nn.sigmoid(a[:, :H] + u[:, :H])
        r = jax.nn.sigmoid(a[:, H : 2 * H] + u[:, H : 2 * H])
        n = jnp.tanh(a[:, 2 * H :] + r * u[:, 2 * H :])
        h = z * h + (1.0 - z) * n  # [B, H]
        sv = jnp.concatenate([z, r, n, u[:, 2 * H :]], axis=-1)  # [B, 4H]
        return h, _set_row(S, h, t + 1), _set_row(Sv, sv, t)

    _, S, Sv = jax.lax.fori_loop(0, T, step, (h0, S, Sv), unroll=divisor_unroll(T, unroll))
    return S, Sv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def gru_scan(U, W_h, b_h, h0, idx=None, unroll=DEFAULT_UNROLL, last_only=False):
    """The GRU recurrence (``reset_after=True``, Keras gate order ``z, r, h``) with a
    hand-written BPTT.

    .. math::
        [u_z, u_r, u_h] = h_{t-1} W_h + b_h, \\quad z = \\sigma(U^z_t + u_z), \\quad
        r = \\sigma(U^r_t + u_r), \\quad n = \\tanh(U^h_t + r u_h), \\quad
        h_t = z h_{t-1} + (1 - z) n

    Args:
        U: ``[T, B, 3H]`` input projections ``x_t W_x + b_x``, or a table ``[V, 3H]`` with ``idx``.
        W_h: ``[H, 3H]``.
        b_h: ``[3H]`` recurrent bias.
        h0: ``[B, H]``.
        idx: ``None`` or ``[T, B]`` int rows of ``U``.
        unroll: steps per XLA loop iteration (a divisor of ``T``; ``None``: :data:`DEFAULT_UNROLL`).
        last_only: return only ``h_T``.

    Returns:
        ``hs: [T, B, H]``, or ``h_T: [B, H]`` with ``last_only``.
    """
    S, _ = _gru_forward(U, idx, W_h, b_h, h0, unroll)
    return S[-1] if last_only else S[1:]


def _gru_scan_fwd(U, W_h, b_h, h0, idx, unroll, last_only):
    S, Sv = _gru_forward(U, idx, W_h, b_h, h0, unroll)
    return (S[-1] if last_only else S[1:]), (S, Sv, W_h, U, idx)


def _gru_scan_bwd(unroll, last_only, res, g):
    S, Sv, W_h, U, idx = res

    def cpu():  # one call: the loop, dW_h and (for a table) the scatter into dU
        vocab = 0 if idx is None else U.shape[0]
        # with a table only A[0] leaves the call (A feeds just the table's gradient); without
        # one A[:T] is dU itself (no slicing in XLA); of D only D[0] (db_h is summed inside)
        D, A, carry, dW_h, db_h, dTable = native.gru_backward(
            S, Sv, W_h, g, idx, vocab, rows="inputs" if idx is None else "first", d_rows="first"
        )
        dU = A if idx is None else dTable
        return dU, dW_h, db_h, carry + D[0] @ W_h.T

    def cuda():  # the reversed loop in one kernel; dW_h, db_h and dU in XLA
        D, N, dh0 = gpu.gru_backward(S, Sv, W_h, g, last_only)  # [T, B, 3H], [T, B, H], [B, H]
        H = W_h.shape[0]
        dA = jnp.concatenate([D[..., : 2 * H], N], axis=-1)  # dL/dU [T, B, 3H]
        return _dU_of(dA, U, idx), _dW_of(S, D), D.sum(axis=(0, 1)), dh0

    dU, dW_h, db_h, dh0 = _per_platform(
        lambda: _gru_backward_xla(S, Sv, W_h, U, idx, g, unroll, last_only),
        cpu=cpu if _use_native(S, W_h) else None,
        cuda=cuda if _use_gpu(S, W_h, "gru") else None,
    )
    didx = None if idx is None else np.zeros(idx.shape, jax.dtypes.float0)
    return dU, dW_h, db_h, dh0, didx


def _gru_backward_xla(S, Sv, W_h, U, idx, g, unroll, last_only):
    """``(dU, dW_h, db_h, dh0)`` of the GRU from an XLA loop."""
    H = W_h.shape[0]
    T = Sv.shape[0]
    W_hT = W_h.T  # [3H, H]
    # D[t] = dL/du_t [B, 3H] and N[t] = dL/d(n_t pre-activation) [B, H]; row T stays 0;
    # both written in place
    D = jnp.zeros((T + 1, S.shape[1], 3 * H), S.dtype)  # [T + 1, B, 3H]
    N = jnp.zeros((T + 1, S.shape[1], H), S.dtype)  # [T + 1, B, H]

    def step(j, carry):
        dh, D, N = carry  # dh = dL/dh_t through h_{t+1} (last_only: g at t = T - 1)
        t = T - 1 - j
        if not last_only:
            dh = dh + _row(g, t)  # + the cotangent of output t
        sv, hp = _row(Sv, t), _row(S, t)
        z, r, n, u_h = sv[:, :H], sv[:, H : 2 * H], sv[:, 2 * H : 3 * H], sv[:, 3 * H :]
        dn = dh * (1.0 - z) * (1.0 - n * n)  # dL/d(pre-tanh)
        dz = dh * (hp - n) * z * (1.0 - z)  # dL/d(pre-sigmoid z)
        dr = dn * u_h * r * (1.0 - r)  # dL/d(pre-sigmoid r)
        du = jnp.concatenate([dz, dr, dn * r], axis=-1)  # [B, 3H]  dL/du
        dh = dh * z + du @ W_hT  # dL/dh_{t-1} through h_t
        return dh, _set_row(D, du, t), _set_row(N, dn, t)

    dh_T = g if last_only else jnp.zeros_like(S[0])
    dh0, D, N = jax.lax.fori_loop(0, T, step, (dh_T, D, N), unroll=divisor_unroll(T, unroll))
    dU_h = D
    dA = jnp.concatenate([D[..., : 2 * H], N], axis=-1)  # [T + 1, B, 3H]  dL/dU
    dW_h = S.reshape(-1, H).T @ D.reshape(-1, 3 * H)  # one matmul over T + 1 rows (D[T] = 0)
    db_h = dU_h.sum(axis=(0, 1))  # [3H]
    return _input_cotangent(dA, U, idx), dW_h, db_h, dh0


gru_scan.defvjp(_gru_scan_fwd, _gru_scan_bwd)


# ------------------------------------------------------------------------------- dispatch


ALL_KERNELS = frozenset({"simple", "lstm", "gru"})
# The default, "auto": every kernel (ALL_KERNELS). Until the fifth session the GRU's stopped at
# H = 128 (fast.rnn over a [64, 128, 64] sequence had measured 1.18x the plain time at H = 256);
# with the kernels' input-gradient rows and inline dispatch it is faster there too. Training
# step, float32, 2-core CPU, interleaved, medians (benchmarks/options.py --cells gru --hidden H
# --input 64 --steps-t 128): H = 256 (native kernels) 38.9 vs 49.0 ms plain, H = 512 (native,
# 3 MiB W_h) 122.6 vs 164.4; with the XLA loops (W_h past native.MAX_WEIGHT_BYTES, or no
# AVX-512) about equal to plain: H = 384 / 512 97.9 / 146.0 vs 96.9 / 151.3 ms. The seed
# classifier's GRU at H = 256: 66.9 vs 98.4 ms (benchmarks/RESULTS.md, fifth session).
KERNELS = "auto"


def _supported(cell: Callable, params: Any, kernels: Any = ALL_KERNELS) -> str | None:
    """The fast kernel for ``cell``/``params`` among ``kernels`` (a set of names, or
    ``"auto"``: see :data:`KERNELS`), or ``None`` (plain path)."""
    kind = _kernel_for(cell, params)
    if isinstance(kernels, str):
        if kernels != "auto":
            raise ValueError(f"kernels must be 'auto' or a set of {sorted(ALL_KERNELS)}; got {kernels!r}")  # fmt: skip
        return kind
    return kind if kind in kernels else None


def _kernel_for(cell: Callable, params: Any) -> str | None:
    name = getattr(getattr(cell, "func", cell), "cell_name", None)
    if isinstance(cell, functools.partial):  # dropout masks or other options bound
        return None
    if name == "simple" and params.activation in _DERIV_FROM_OUTPUT:
        return "simple"
    default_acts = (
        getattr(params, "activation", None) == "tanh"
        and getattr(params, "recurrent_activation", None) == "sigmoid"
    )
    if name == "lstm" and default_acts:
        return "lstm"
    if name == "gru" and default_acts and params.reset_after:
        return "gru"
    return None


def scan_projected(
    cell: Callable,
    params: Any,
    U: Array,
    h0: Any,
    *,
    unroll: int | None = DEFAULT_UNROLL,
    last_only: bool = False,
    idx: Array | None = None,
    states: bool = False,
) -> tuple[Any, ...]:
    """Runs a supported cell on input projections ``U = xs @ W_x (+ b): [T, B, G H]``
    (or, with ``idx [T, B]``, on rows ``U[idx[t]]`` of a projected table ``U: [V, G H]``).

    Returns ``(final_carry, ys [T, B, H])`` (time-major); ``ys`` is ``None`` with
    ``last_only`` (only the final carry is computed for differentiation). With ``states``,
    ``(final_carry, ys, carries)``: the carry after every step, leaves ``[T, B, H]`` (``ys``
    itself for the simple cell and the GRU, ``LSTMCarry(hs, cs)`` for the LSTM).
    """
    kind = _supported(cell, params)
    if kind == "lstm":
        from jaxrnn.cells.lstm import LSTMCarry

        h0_, c0_ = h0
        out = lstm_scan(U, params.W_h, h0_, c0_, idx, unroll, last_only, states)
        if last_only:
            return LSTMCarry(*out), None
        if states:
            hs, (h_T, c_T), cs = out
            return LSTMCarry(h_T, c_T), hs, LSTMCarry(hs, cs)
        hs, (h_T, c_T) = out
        return LSTMCarry(h_T, c_T), hs
    if kind == "simple":
        out = simple_scan(U, params.W_h, h0, idx, params.activation, unroll, last_only)
    elif kind == "gru":
        b_h = jnp.zeros(U.shape[-1], U.dtype) if params.b is None else params.b[1]
        out = gru_scan(U, params.W_h, b_h, h0, idx, unroll, last_only)
    else:
        raise ValueError(f"fast.scan_projected: no fast kernel for {cell!r}")
    if last_only:
        return out, None
    return (out[-1], out, out) if states else (out[-1], out)


def project(xs: Array, W_x: Array, b: Array | None) -> Array:
    """The hoisted input projection ``xs @ W_x (+ b)``: ``[T, B, D] -> [T, B, G H]``.

    Written as one 2-D matmul over ``[T B, D]``: autodiff then takes ``dW_x = X^T dU`` and
    ``dx = dU W_x^T`` as plain 2-D products. The 3-D form's gradient ran ~3x slower on
    XLA:CPU (a layout copy of the ``[T, B, G H]`` cotangent; benchmarks/RESULTS.md).
    """
    T, B, D = xs.shape
    U = xs.reshape(T * B, D) @ W_x  # [T B, D] @ [D, G H]
    if b is not None:
        U = U + b
    return U.reshape(T, B, W_x.shape[1])


def project_table(E: Array, W_x: Array, b: Array | None) -> Array:
    """The projected table ``E @ W_x (+ b)``: ``[V, D] -> [V, G H]`` (an embedding folded into
    the input projection; its rows are the step inputs of the tokens).

    Its gradient from ``dTable: [V, G H]`` is ``dE = dTable W_x^T``, ``dW_x = E^T dTable``,
    ``db = dTable.sum(0)``: on an AVX-512 CPU, for float32, one pass over ``dTable``
    (:func:`jaxrnn.native.table_projection_backward`; the seed LSTM's ``[5000, 400]`` table:
    ~1.7 ms against ~2.8 ms for XLA's two products and reduction, each reading all of it),
    and the table itself :func:`jaxrnn.native.table_projection`; elsewhere XLA operations.
    """
    if b is None:
        return _project_table(E, W_x, jnp.zeros((W_x.shape[1],), W_x.dtype), False)
    return _project_table(E, W_x, b, True)


def project_rows(E: Array, ids: Array, W_x: Array, b: Array | None) -> Array:
    """The projected rows of given ids, ``E[ids] @ W_x (+ b)``: ``[V, D]``, ``[T, B]`` ->
    ``[T, B, G H]`` (the step inputs of a batch with fewer tokens than the vocabulary, where
    projecting the whole table would cost more; an id outside ``[0, V)`` gives NaN, as
    ``jnp.take``). On an AVX-512 CPU, for float32, one call
    (:func:`jaxrnn.native.rows_projection`) instead of XLA's gather, product and bias add (at
    B = 1 ~45 us of a 165 us seed inference call here); elsewhere those. Its gradient, that of
    :func:`project` over ``jnp.take(E, ids, axis=0)``, the same way: one call
    (:func:`jaxrnn.native.rows_projection_backward`) or XLA's operations."""
    bias = jnp.zeros((W_x.shape[1],), W_x.dtype) if b is None else b
    return _project_rows(E, ids, W_x, bias, b is not None)


def _project_rows_xla(E: Array, ids: Array, W_x: Array, b: Array, with_bias: bool) -> Array:
    return project(jnp.take(E, ids, axis=0), W_x, b if with_bias else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _project_rows(E: Array, ids: Array, W_x: Array, b: Array, with_bias: bool) -> Array:
    xla = functools.partial(_project_rows_xla, E, ids, W_x, b, with_bias)
    bias = b if with_bias else None
    use = _native_f32(E, W_x, b)
    cpu = (lambda: native.rows_projection(E, ids, W_x, bias)) if use else None
    return _cpu_or_xla(xla, cpu)


def _project_rows_fwd(E, ids, W_x, b, with_bias):
    return _project_rows(E, ids, W_x, b, with_bias), (E, ids, W_x, b)


def _project_rows_bwd(with_bias, res, g):
    E, ids, W_x, b = res

    def xla():
        f = lambda E, W_x, b: _project_rows_xla(E, ids, W_x, b, with_bias)  # noqa: E731
        return jax.vjp(f, E, W_x, b)[1](g)  # the unused forward is dead code to XLA

    use = _native_f32(E, W_x, b, g)
    cpu = (lambda: native.rows_projection_backward(g, E, ids, W_x)) if use else None
    dE, dW_x, db = _cpu_or_xla(xla, cpu)
    return dE, None, dW_x, db.astype(b.dtype) if with_bias else jnp.zeros_like(b)


_project_rows.defvjp(_project_rows_fwd, _project_rows_bwd)


def _native_f32(*xs: Array) -> bool:
    return all(x.dtype == jnp.float32 for x in xs) and native.supports(jnp.float32)


def _cpu_or_xla(xla: Callable, cpu: Callable | None):
    """``cpu()`` on a CPU, ``xla()`` elsewhere (or everywhere when ``cpu`` is ``None``): for
    the table projection's kernels, which have no GPU counterpart (not :func:`_per_platform`,
    which dispatches the recurrences' loops)."""
    return jax.lax.platform_dependent(cpu=cpu, default=xla) if cpu is not None else xla()


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _project_table(E: Array, W_x: Array, b: Array, with_bias: bool) -> Array:
    def xla():
        table = E @ W_x  # [V, D] @ [D, G H]
        return table + b if with_bias else table

    bias = b if with_bias else None
    cpu = (lambda: native.table_projection(E, W_x, bias)) if _native_f32(E, W_x, b) else None
    return _cpu_or_xla(xla, cpu)


def _project_table_fwd(E, W_x, b, with_bias):
    return _project_table(E, W_x, b, with_bias), (E, W_x, b)


def _project_table_bwd(with_bias, res, g):
    E, W_x, b = res

    def xla():
        return g @ W_x.T, E.T @ g, g.sum(axis=0)

    use = _native_f32(E, W_x, b, g)
    cpu = (lambda: native.table_projection_backward(g, E, W_x)) if use else None
    dE, dW_x, db = _cpu_or_xla(xla, cpu)
    return dE, dW_x, db.astype(b.dtype) if with_bias else jnp.zeros_like(b)


_project_table.defvjp(_project_table_fwd, _project_table_bwd)


def input_bias(params: Any) -> Array | None:
    """The bias that goes into the hoisted input projection (``None`` when the cell has none).

    The GRU with ``reset_after`` has two biases ``b: [2, 3H]``; only ``b[0]`` goes in.
    """
    if params.b is not None and params.b.ndim == 2:
        return params.b[0]
    return params.b


def _run_projected(
    cell: Callable, params: Any, xs: Array, h0: Any, lengths: Array | None, k: int | None,
    unroll: int | None,
) -> tuple[Any, Array]:  # fmt: skip
    """:func:`rnn`'s loop on ``xs [T, B, D]`` (time-major, already reversed where asked):
    projected and run on the fast path, whole or (``k``, ``remat``) in checkpointed segments
    of ``k`` steps (:func:`jaxrnn.layer.scan_segments`), each projecting its own inputs.

    With ``lengths`` the loop runs through the padding and its carry is passed on beside the
    one picked so far: a run over steps ``[t0, t0 + n)`` picks its state after
    ``lengths - t0`` steps (clipped to ``[0, n]``: 0 keeps the earlier pick; rows whose length
    lies further on pick the run's last state, replaced in a later segment).

    Returns:
        ``(final_carry, ys [T, B, H])``: the carry at each row's length where ``lengths`` is given.
    """
    b = input_bias(params)

    def run(carry, seg):
        x, ts = seg  # [n, B, D], [n] the steps' indices
        U = project(x, params.W_x, b)  # [n, B, G H]: one matmul
        if lengths is None:
            return scan_projected(cell, params, U, carry, unroll=unroll)
        loop, picked = carry
        loop, ys, states = scan_projected(cell, params, U, loop, unroll=unroll, states=True)
        steps = jnp.clip(lengths - ts[0], 0, ts.shape[0])  # [B]
        picked = jax.tree.map(lambda s, p: state_at(s, p, steps), states, picked)
        return (loop, picked), ys

    carry0 = h0 if lengths is None else (h0, h0)
    inputs = (xs, jnp.arange(xs.shape[0]))
    carry, ys = run(carry0, inputs) if k is None else scan_segments(run, carry0, inputs, k)
    return (carry if lengths is None else carry[1]), ys


def rnn(
    cell: Callable,
    params: Any,
    xs: Array,
    h0: Any = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    unroll: int | None = DEFAULT_UNROLL,
    time_major: bool = False,
    remat: int | str | None = None,
    kernels: Any = KERNELS,
) -> tuple[Any, Any]:
    """:func:`jaxrnn.rnn` with the input projection hoisted and a hand-written BPTT.

    Same arguments, same results (up to floating-point rounding). Falls back to
    :func:`jaxrnn.rnn` where no fast kernel applies (unsupported cells or activations,
    bound dropout masks, unbatched ``[T, D]`` inputs, ``T = 0``).

    ``lengths`` (post-padded sequences): the loop runs over all ``T`` steps; the final
    carry is picked at each sequence's length (:func:`state_at`; the LSTM's cell states
    come out of the loop for that) and the outputs past it are zeroed, as the plain path
    returns them. The steps over padding then get exactly zero gradient, so gradients
    are the plain path's too. ``reverse``: the inputs are reversed in time (within each
    sequence's length, :func:`jaxrnn.layer.reverse_padded`), run forward, and the
    outputs reversed back.

    ``remat``: as in :func:`jaxrnn.rnn`, segments of ``k`` steps (``"sqrt"``: ``ceil(sqrt(T))``)
    under ``jax.checkpoint`` (:func:`jaxrnn.layer.scan_segments`), each projecting its own
    inputs and running the fast loop (the native kernels where they apply) over them, so
    neither the projections ``[T, B, G H]`` nor the loops' buffers are kept for all ``T``:
    memory ``O(T / k + k)`` for about one more forward pass, the same gradients.

    Args:
        cell, params, xs, h0, lengths, reverse, time_major, remat: as in :func:`jaxrnn.rnn`
            (``xs: [B, T, D]``, ``[T, B, D]`` with ``time_major``, or ``[T, D]``).
        unroll: steps per loop iteration of the XLA loops (``None``: :data:`DEFAULT_UNROLL`).
        kernels: which fast kernels may be used: ``"auto"`` (default, :data:`KERNELS`: all of
            them) or a set of names, e.g. ``{"simple", "lstm"}`` (the GRU then runs the plain path).

    Returns:
        ``(final_carry, ys)`` as :func:`jaxrnn.rnn`.
    """
    xs_arr = jnp.asarray(xs)
    remat_segment(remat, 1, "fast.rnn")  # validates the option
    if (
        _supported(cell, params, kernels) is None
        or xs_arr.ndim != 3
        or xs_arr.shape[0 if time_major else 1] == 0  # T = 0: nothing to run
    ):
        return plain_rnn(
            cell, params, xs, h0, lengths=lengths, reverse=reverse,
            unroll=1 if unroll is None else unroll, time_major=time_major, remat=remat,
        )  # fmt: skip
    # Let the plain path validate shapes/dtypes (traced, not compiled: its errors name xs).
    jax.eval_shape(
        lambda p, x, h: plain_rnn(cell, p, x, h, time_major=time_major), params, xs_arr, h0
    )
    xs_tm = xs_arr if time_major else jnp.swapaxes(xs_arr, 0, 1)  # [T, B, D]
    T, B = xs_tm.shape[:2]
    if lengths is not None:
        lengths = check_lengths(lengths, (B,), T)
    if reverse:  # [T, B, D] reversed in time (within each length)
        xs_tm = xs_tm[::-1] if lengths is None else reverse_padded(xs_tm, lengths)
    if h0 is None:
        h0 = cell.initial_carry(params, (B,))
    carry, ys = _run_projected(cell, params, xs_tm, h0, lengths, remat_segment(remat, T), unroll)
    if lengths is not None:
        alive = jnp.arange(T)[:, None] < lengths[None, :]  # [T, B]
        ys = jnp.where(alive[:, :, None], ys, jnp.zeros_like(ys))
    if reverse:
        ys = ys[::-1] if lengths is None else reverse_padded(ys, lengths)
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)  # [T, B, H] -> [B, T, H]
    return carry, ys


# ---------------------------------------------------------------------------- seed model


def classifier_logits(
    cfg: models.ClassifierConfig,
    params: dict[str, Any],
    tokens: Array,
    lengths: Array | None = None,
    *,
    key: Array | None = None,
    unroll: int | None = DEFAULT_UNROLL,
    kernels: Any = KERNELS,
) -> Array:
    """:func:`jaxrnn.models.classifier_logits` on the fast path (same arguments, same numbers
    up to rounding).

    The input projection is folded into the embedding: ``u_t = (E W_x + b)[tokens[:, t]]``
    (``[V, G H]`` table; rows gathered inside the scan), so no ``[B, T, E]`` or
    ``[T, B, G H]`` tensor is built and nothing is transposed. The rows used are projected
    instead (``[T, B, E] @ [E, G H]``) when the batch has fewer tokens than the vocabulary
    (``B T < V``, e.g. one review: :func:`project_rows`, gather and product in one call) or
    when input dropout is active (each review's mask scales its word vectors before ``W_x``,
    so no shared table exists: :func:`project`, one matmul).

    ``lengths`` (post-padded reviews): the loop runs over all ``T`` steps and the state
    after each review's last word, ``h[lengths[b]]``, is picked from the outputs. The
    plain path instead freezes the carry past the length; the states picked are the same,
    and the steps over padding get exactly zero gradient (nothing after them reaches the
    loss), so gradients are the same too.

    Falls back to the plain model where no fast kernel applies: recurrent dropout (a mask
    inside the recurrence), other cells, ``T = 0``.

    ``cfg.remat`` (rematerialised BPTT for long reviews): the word vectors ``[T, B, E]`` are
    gathered and run through :func:`rnn` with ``remat``, in checkpointed segments that each
    project their own inputs, so no ``[T, B, G H]`` tensor is kept either.

    Args:
        cfg: model settings.
        params: from :func:`jaxrnn.models.init_classifier`.
        tokens: ``[B, T]`` int word ids.
        lengths: optional ``[B]`` int true lengths of post-padded reviews, in ``[0, T]``.
        key: PRNG key for ``cfg.dropout`` / ``cfg.recurrent_dropout`` (the same masks as
            the plain model draws from it); ``None``: no dropout.
        unroll: steps per XLA loop iteration (``None``: :data:`DEFAULT_UNROLL`).
        kernels: which fast kernels may be used (see :func:`rnn`).

    Returns:
        ``[B]`` logits.
    """
    cell = cells.get(cfg.cell).cell
    p = params["rnn"]
    dropout = key is not None and bool(cfg.dropout or cfg.recurrent_dropout)
    if (
        (dropout and cfg.recurrent_dropout)
        or _supported(cell, p, kernels) is None
        or tokens.shape[-1] == 0
    ):
        return models.classifier_logits(cfg, params, tokens, lengths, key=key)
    models.check_tokens(tokens, cfg.vocab_size)
    B, T = tokens.shape
    if lengths is not None:
        lengths = check_lengths(lengths, (B,), T)
    h0 = cell.initial_carry(p, (B,))
    b = input_bias(p)
    last_only = lengths is None
    x_mask = None  # the plain model's input masks from the same key: [B, E], one per review
    if dropout:
        x_mask = dropout_lib.rnn_dropout_masks(
            key, cell, cfg.embed_dim, cfg.hidden_size, (B,), dropout=cfg.dropout,
            dtype=params["embedding"].dtype,
        ).x  # fmt: skip
    if cfg.remat is not None:  # checkpointed segments, each projecting its own word vectors
        xs = jnp.take(params["embedding"], tokens.T, axis=0)  # [T, B, E]
        xs = xs if x_mask is None else xs * x_mask
        carry, _ = rnn(
            cell, p, xs, h0, lengths=lengths, unroll=unroll, time_major=True, remat=cfg.remat,
            kernels=kernels,
        )  # fmt: skip
        h_T = carry_output(carry)  # [B, H]
        return (h_T @ params["W_o"] + params["b_o"])[:, 0]  # [B]
    if dropout or B * T < cfg.vocab_size:  # the rows used only: [T, B, E] @ [E, G H]
        if dropout:
            xs = jnp.take(params["embedding"], tokens.T, axis=0)  # [T, B, E]
            U = project(xs * x_mask, p.W_x, b)
        else:
            U = project_rows(params["embedding"], tokens.T, p.W_x, b)
        carry, ys = scan_projected(cell, p, U, h0, unroll=unroll, last_only=last_only)
    else:
        # project the table once (V E GH multiply-adds instead of T B E GH); its rows
        # table[tokens[:, t]] are gathered inside the scan: no [T, B, G H] tensor
        table = project_table(params["embedding"], p.W_x, b)  # [V, E] -> [V, G H]
        carry, ys = scan_projected(
            cell, p, table, h0, unroll=unroll, last_only=last_only, idx=tokens.T
        )
    if lengths is None:
        h_T = carry_output(carry)  # [B, H]: an LSTM carry (h, c) keeps h
    else:
        h_T = state_at(ys, carry_output(h0), lengths)
    return (h_T @ params["W_o"] + params["b_o"])[:, 0]  # [B]


def state_at(ys: Array, h0: Array, lengths: Array) -> Array:
    """The state after ``lengths[b]`` steps of row ``b``: ``[h_0; ys][lengths[b], b]``.

    Args:
        ys: ``[T, B, H]`` outputs ``h_1 .. h_T`` (time-major).
        h0: ``[B, H]`` initial state (picked where ``lengths[b] == 0``).
        lengths: ``[B]`` int in ``[0, T]`` (clipped to it under ``jit``, where the values
            are not checked: the plain path's mask ``t < lengths`` does the same).

    Returns:
        ``[B, H]``.
    """
    n = jnp.clip(lengths, 0, ys.shape[0])
    picked = ys[jnp.maximum(n - 1, 0), jnp.arange(ys.shape[1])]  # [B, H]
    return jnp.where((n > 0)[:, None], picked, h0)


def classifier_loss(
    cfg: models.ClassifierConfig,
    params: dict[str, Any],
    tokens: Array,
    labels: Array,
    lengths: Array | None = None,
    *,
    key: Array | None = None,
    unroll: int | None = DEFAULT_UNROLL,
    kernels: Any = KERNELS,
) -> Array:
    """:func:`jaxrnn.models.classifier_loss` on the fast path (mean BCE; ``key``: dropout)."""
    logits = classifier_logits(
        cfg, params, tokens, lengths, key=key, unroll=unroll, kernels=kernels
    )
    return models.binary_cross_entropy(logits, labels)
