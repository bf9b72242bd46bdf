"""Parallel-in-time evaluation of recurrences: linear scans, and Newton's method for any cell.

A recurrence ``h_t = f(h_{t-1}, x_t)`` looks sequential, but its whole trajectory is the
root of ``T`` equations ``h_t - f(h_{t-1}, x_t) = 0`` that can be solved all at once:

* :func:`linear_scan` solves the *linear* recurrence ``h_t = a_t h_{t-1} + b_t`` in
  ``O(log T)`` parallel depth with ``jax.lax.associative_scan`` (Blelloch 1990), for
  diagonal (``a_t: [..., H]``) or dense (``a_t: [..., H, H]``) coefficients, real or
  complex. The linear cells (:mod:`jaxrnn.cells.lru`, :mod:`~jaxrnn.cells.mingru`,
  :mod:`~jaxrnn.cells.minlstm`) run on it.
* :func:`rnn` runs any cell (``cell(params, carry, x) -> (carry, y)``) by Newton's method
  over the whole trajectory: each iteration linearises every step around the current
  trajectory and solves the linear recurrence with :func:`linear_scan`, with the full step
  Jacobians (``"newton"``: DEER, Lim et al., "Parallelizing non-linear sequential models
  over the sequence length", ICLR 2024), their diagonals only (``"quasi"``: quasi-DEER), or
  as a damped Levenberg-Marquardt step solved by a parallel Kalman smoother (``"elk"``,
  ``"quasi_elk"``: Gonzalez et al., "Towards scalable and stable parallelization of
  nonlinear RNNs", NeurIPS 2024).

Gradients of :func:`rnn` come from implicit differentiation at the solution, never from
the iterations: the tangent of the trajectory obeys the linear recurrence
``dh_t = J_t dh_{t-1} + ∂f/∂(θ, x_t) · (dθ, dx_t)``, so forward mode is one
:func:`linear_scan` and reverse mode its transpose, one reversed :func:`linear_scan` with the
transposed Jacobians ``J_{t+1}^T``. ``grad``, ``jvp``, ``vmap``, ``jacfwd`` and ``hessian``
all work, and give the derivatives of :func:`jaxrnn.rnn`.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, parallel, rnn
    >>> params = cells.gru.init(jax.random.key(0), input_size=3, hidden_size=4)
    >>> xs = jax.random.normal(jax.random.key(1), (2, 50, 3), jnp.float32)  # [B, T, D]
    >>> h_T, ys, info = parallel.rnn(cells.gru.cell, params, xs, return_info=True)
    >>> bool(info.converged), ys.shape
    (True, (2, 50, 4))
    >>> h_ref, ys_ref = rnn(cells.gru.cell, params, xs)               # the sequential scan
    >>> bool(jnp.allclose(ys, ys_ref, atol=1e-5))
    True
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks

Array = jax.Array
Cell = Callable[[Any, Any, Array], tuple[Any, Any]]

METHODS = ("newton", "quasi", "elk", "quasi_elk")


class NotConvergedWarning(RuntimeWarning):
    """:func:`rnn` stopped before its residual reached ``tol``, or at a non-finite iterate."""


class ParallelInfo(NamedTuple):
    """How the parallel solve of :func:`rnn` went (scalars; batched under ``vmap``).

    Attributes:
        iterations: ``int32``, iterations run (ELK counts its rejected non-finite steps too).
        residual: the largest scaled residual ``|h_t - f(h_{t-1}, x_t)| / (1 + |f(h_{t-1}, x_t)|)``
            over steps, batch and carry entries, at the returned trajectory (before any fallback).
        converged: ``bool``, ``residual <= tol``, every accepted iterate finite.
        finite: ``bool``, no step was non-finite, or ELK recovered from it (Newton and
            quasi-Newton stop at the first such step and keep the last finite iterate; ELK
            rejects it and raises its damping).
        fell_back: ``bool``, the result is the sequential scan's (``fallback=True`` and the
            parallel solve had not converged).
    """

    iterations: Array
    residual: Array
    converged: Array
    finite: Array
    fell_back: Array


# --- validation (trace time, in Python) --------------------------------------------------------


def _alive(lengths: Array | None, T: int, batch_shape: tuple[int, ...]) -> Array:
    """``[T, *batch]`` bool: step ``t`` of sequence ``b`` is real (``t < lengths[b]``)."""
    if lengths is None:
        return jnp.ones((T, *batch_shape), bool)
    t = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
    return t < lengths[None]


# --- linear recurrences ----------------------------------------------------------------------


def _combine_diagonal(earlier, later):
    """Composes two affine maps ``h -> a h + b`` with diagonal ``a``: ``later ∘ earlier``."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _combine_dense(earlier, later):
    """Composes two affine maps ``h -> A h + b`` with dense ``A``: ``later ∘ earlier``."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2


def _apply(a: Array, h: Array, diagonal: bool) -> Array:
    """``A h`` for diagonal (``a ⊙ h``) or dense (``a @ h``) coefficients."""
    return a * h if diagonal else jnp.einsum("...ij,...j->...i", a, h)


def _transpose(a: Array, diagonal: bool) -> Array:
    return a if diagonal else jnp.swapaxes(a, -1, -2)


def _associative(a: Array, b: Array, diagonal: bool, reverse: bool) -> Array:
    """``h_t = A_t h_{t-1} + b_t`` from ``h = 0`` (time on axis 0; ``reverse``: from the end)."""
    combine = _combine_diagonal if diagonal else _combine_dense
    return jax.lax.associative_scan(combine, (a, b), reverse=reverse, axis=0)[1]


def _shift_in(h: Array, h0: Array, reverse: bool) -> Array:
    """Every step's previous state: ``h_{t-1}`` (``h_{t+1}`` in reverse), ``h0`` at the start."""
    if reverse:
        return jnp.concatenate([h[1:], h0[None]], axis=0)
    return jnp.concatenate([h0[None], h[:-1]], axis=0)


def _solve_linear(a: Array, b: Array, diagonal: bool, reverse: bool) -> Array:
    """``h_t = A_t h_{t-1} + b_t`` from ``h = 0`` (time on axis 0), as the linear system
    ``(I - S_A) h = b`` with ``(S_A h)_t = A_t h_{t-1}``.

    ``lax.custom_linear_solve`` gives it a JVP (another solve, with ``b``'s tangent plus
    ``dA_t h_{t-1}``) and a transpose (the adjoint recurrence ``λ_t = g_t + A_{t+1}^T λ_{t+1}``,
    one reversed associative scan), so a gradient costs one scan; autodiff through the
    scan's tree of partial products measured slower (``benchmarks/parallel.py grad``).
    """
    zero = jnp.zeros_like(b[0])

    def matvec(h):
        return h - _apply(a, _shift_in(h, zero, reverse), diagonal)

    def solve(_, rhs):
        return _associative(a, rhs, diagonal, reverse)

    def transpose_solve(_, rhs):
        # (I - S_A)^T λ = g  <=>  λ_t = g_t + A_{t+1}^T λ_{t+1}: the recurrence run the other
        # way, each step's coefficient taken from its successor (none past the end).
        a_t = _transpose(a, diagonal)
        pad = jnp.zeros_like(a_t[:1])
        succ = jnp.concatenate([pad, a_t[:-1]]) if reverse else jnp.concatenate([a_t[1:], pad])
        return _associative(succ, rhs, diagonal, not reverse)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)


@functools.partial(jax.jit, static_argnames=("diagonal", "reverse"))
def _linear_scan_tm(a: Array, b: Array, h0: Array | None, diagonal: bool, reverse: bool) -> Array:
    """The recurrence on time-major arrays (time on axis 0), ``h0`` folded into the first step;
    compiled as one program, so that a call outside ``jit`` does not dispatch the scan's
    ``O(log T)`` levels op by op."""
    if h0 is not None:  # b_1 + A_1 h0 (b_T + A_T h0 in reverse)
        i = -1 if reverse else 0
        b = b.at[i].add(_apply(a[i], h0, diagonal))
    return _solve_linear(a, b, diagonal, reverse)


def linear_scan(
    a: Array,
    b: Array,
    h0: Array | None = None,
    *,
    reverse: bool = False,
    lengths: Array | None = None,
) -> Array:
    """Solves the linear recurrence ``h_t = a_t h_{t-1} + b_t`` for all ``t`` at once.

    With ``jax.lax.associative_scan`` over the affine maps ``h -> a_t h + b_t``, whose
    composition is associative, ``(a_j, b_j) ∘ (a_i, b_i) = (a_j a_i, a_j b_i + b_j)``: ``O(T)``
    work in ``O(log T)`` parallel depth (Blelloch 1990; the scan of Martin & Cundy 2018 and of
    the LRU, Orvieto et al. 2023). Its gradient is one more scan, the adjoint recurrence run
    backwards.

    Args:
        a: the coefficients: diagonal, ``b``'s shape (``h_t = a_t ⊙ h_{t-1} + b_t``), or dense,
            ``[..., T, H, H]`` (``h_t = a_t @ h_{t-1} + b_t``, that is
            ``h_t[i] = Σ_j a_t[i, j] h_{t-1}[j] + b_t[i]``). Floating or complex.
        b: ``[B, T, H]`` batched (any leading batch axes) or ``[T, H]`` unbatched.
        h0: ``[B, H]`` (``[H]``), the state before the first step; ``None``: zeros.
        reverse: run from the last step to the first, ``h_t = a_t h_{t+1} + b_t`` from
            ``h_{T+1} = h0``; the result keeps the original time order.
        lengths: optional ``[B]`` int (a scalar when unbatched): steps ``t >= lengths[b]``
            leave the state unchanged (``a = 1``, ``b = 0`` there), so ``hs[b, T - 1]`` is the
            state after sequence ``b``'s own last step; with ``reverse`` each sequence runs
            from its own last step ``lengths[b] - 1`` down to ``0``, as in :func:`jaxrnn.rnn`.

    Returns:
        ``hs``, ``b``'s shape: the state after every step ``t``.

    Raises:
        ValueError, TypeError: at trace time, for shapes, ranks or dtypes that do not fit.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxrnn import parallel
        >>> a = jnp.full((4, 1), 0.5)                      # [T, H]: h_t = 0.5 h_{t-1} + 1
        >>> parallel.linear_scan(a, jnp.ones((4, 1)))[:, 0].tolist()
        [1.0, 1.5, 1.75, 1.875]
        >>> parallel.linear_scan(a, jnp.ones((4, 1)), reverse=True)[:, 0].tolist()
        [1.875, 1.75, 1.5, 1.0]
    """
    for name, x in (("a", a), ("b", b)):
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"linear_scan: {name} must have a floating or complex dtype; got {dtype}"
            )
    a, b = jnp.asarray(a), jnp.asarray(b)
    if b.ndim < 2:
        raise ValueError(
            f"linear_scan: b must be [B, T, H] or [T, H] (rank >= 2); got shape {list(b.shape)}"
        )
    H = b.shape[-1]
    if a.shape == b.shape:
        diagonal = True
    elif a.shape == (*b.shape, H):
        diagonal = False
    else:
        raise ValueError(
            f"linear_scan: a must have b's shape {list(b.shape)} (diagonal) or "
            f"{list((*b.shape, H))} (dense); got shape {list(a.shape)}"
        )
    if not isinstance(reverse, bool):
        raise TypeError(f"linear_scan: reverse must be a bool; got {reverse!r}")
    dtype = jnp.result_type(a, b)
    batch_shape, T = b.shape[:-2], b.shape[-2]
    a_tm = jnp.moveaxis(a, b.ndim - 2, 0)  # [T, *batch, H] or [T, *batch, H, H]
    b_tm = jnp.moveaxis(b, -2, 0).astype(dtype)  # [T, *batch, H]
    a_tm = a_tm.astype(dtype)
    if h0 is not None:
        h0_dtype = jnp.result_type(h0)
        if not jnp.issubdtype(h0_dtype, jnp.inexact):
            raise TypeError(
                f"linear_scan: h0 must have a floating or complex dtype; got {h0_dtype}"
            )
        h0 = jnp.asarray(h0)
        if h0.shape != (*batch_shape, H):
            raise ValueError(
                f"linear_scan: h0 must have shape {list((*batch_shape, H))} (b without its time "
                f"axis); got shape {list(h0.shape)}"
            )
        h0 = h0.astype(dtype)
    if lengths is not None:
        lengths = _checks.lengths("linear_scan", lengths, batch_shape, T)
        alive = _alive(lengths, T, batch_shape)[..., None]  # [T, *batch, 1]
        if diagonal:
            a_tm = jnp.where(alive, a_tm, 1)
        else:
            a_tm = jnp.where(alive[..., None], a_tm, jnp.eye(H, dtype=dtype))
        b_tm = jnp.where(alive, b_tm, 0)
    hs = _linear_scan_tm(a_tm, b_tm, h0, diagonal, reverse)  # [T, *batch, H]
    return jnp.moveaxis(hs, 0, -2)


def _combine_log(earlier, later):
    """Composes ``h -> a h + b`` for positive ``a, b`` held as logarithms: ``later ∘ earlier``."""
    la1, lb1 = earlier
    la2, lb2 = later
    return la1 + la2, jnp.logaddexp(la2 + lb1, lb2)


def log_linear_scan(
    log_a: Array,
    log_b: Array,
    h0: Array | None = None,
    *,
    reverse: bool = False,
    lengths: Array | None = None,
) -> Array:
    """:func:`linear_scan` for positive diagonal ``a_t, b_t`` given by their logarithms.

    The log-space scan of minGRU and minLSTM (Feng et al. 2024, after Heinsen 2023): the
    zero-state part of ``h_t = a_t ⊙ h_{t-1} + b_t`` is computed as ``log h_t`` by an
    associative scan in the log semiring, ``(la_j, lb_j) ∘ (la_i, lb_i) =
    (la_i + la_j, logaddexp(la_j + lb_i, lb_j))``, so products of many small ``a_t`` never
    underflow; ``h0`` (any sign) adds ``exp(Σ_{k <= t} log a_k) ⊙ h0``. Heinsen's closed form,
    ``exp(A_t + logcumsumexp(log b - A))`` with ``A_t = Σ_{k <= t} log a_k``, subtracts two
    numbers that grow with ``t`` and loses ``|A_t| eps`` of relative accuracy (about 1e-2 at
    ``T = 32768`` in float32); the scan keeps the accuracy of :func:`linear_scan`.

    Args:
        log_a: ``[B, T, H]`` or ``[T, H]``, real: ``log a_t``.
        log_b: ``log_a``'s shape: ``log b_t``.
        h0: ``[B, H]`` (``[H]``), any sign; ``None``: zeros.
        reverse: ``h_t = a_t ⊙ h_{t+1} + b_t`` from ``h_{T+1} = h0``, results in time order.
        lengths: as in :func:`linear_scan`.

    Returns:
        ``hs``, ``log_b``'s shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxrnn import parallel
        >>> log_a = jnp.log(jnp.full((4, 1), 0.5))          # h_t = 0.5 h_{t-1} + 1
        >>> hs = parallel.log_linear_scan(log_a, jnp.zeros((4, 1)))
        >>> [round(v, 4) for v in hs[:, 0].tolist()]
        [1.0, 1.5, 1.75, 1.875]
    """
    for name, x in (("log_a", log_a), ("log_b", log_b)):
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"log_linear_scan: {name} must have a real floating dtype; got {dtype}")
    log_a, log_b = jnp.asarray(log_a), jnp.asarray(log_b)
    if log_b.ndim < 2 or log_a.shape != log_b.shape:
        raise ValueError(
            "log_linear_scan: log_a and log_b must share one shape [B, T, H] or [T, H]; got "
            f"shapes {list(log_a.shape)} and {list(log_b.shape)}"
        )
    if not isinstance(reverse, bool):
        raise TypeError(f"log_linear_scan: reverse must be a bool; got {reverse!r}")
    dtype = jnp.result_type(log_a, log_b)
    log_a, log_b = log_a.astype(dtype), log_b.astype(dtype)
    batch_shape, T, H = log_b.shape[:-2], log_b.shape[-2], log_b.shape[-1]
    if h0 is not None:
        h0 = jnp.asarray(h0)
        if h0.shape != (*batch_shape, H) or not jnp.issubdtype(h0.dtype, jnp.floating):
            raise ValueError(
                f"log_linear_scan: h0 must be a real array of shape {list((*batch_shape, H))}; "
                f"got {h0.dtype} of shape {list(h0.shape)}"
            )
    if lengths is not None:
        lengths = _checks.lengths("log_linear_scan", lengths, batch_shape, T)
        alive = jnp.moveaxis(_alive(lengths, T, batch_shape), 0, -1)[..., None]  # [*batch, T, 1]
        log_a = jnp.where(alive, log_a, 0)  # a = 1
        # b = 0 as a finite logarithm: an infinite one would give 0 * inf gradients
        log_b = jnp.where(alive, log_b, jnp.finfo(dtype).min / 4)
    return _log_linear_scan(log_a, log_b, h0, reverse)


@functools.partial(jax.jit, static_argnames=("reverse",))
def _log_linear_scan(log_a: Array, log_b: Array, h0: Array | None, reverse: bool) -> Array:
    """The log-space scan on ``[*batch, T, H]``, compiled as one program (see ``_linear_scan_tm``)."""
    axis = log_b.ndim - 2
    log_A, log_h = jax.lax.associative_scan(
        _combine_log, (log_a, log_b), reverse=reverse, axis=axis
    )
    hs = jnp.exp(log_h)  # [*batch, T, H], from h0 = 0
    if h0 is not None:
        hs = hs + jnp.exp(log_A) * h0[..., None, :].astype(log_b.dtype)
    return hs


# --- the parallel Kalman smoother of ELK ----------------------------------------------------


def _kalman_mean(J: Array, u: Array, alive: Array, damping: float, diagonal: bool) -> Array:
    """The Levenberg-Marquardt step of ELK: the smoothed mean of a linear-Gaussian model.

    Minimises over ``δ_1..δ_T`` (``δ_0 = 0``) the objective
    ``Σ_t |δ_t - J_t δ_{t-1} - u_t|^2 + λ Σ_t |δ_t|^2`` (``λ = damping``): the dynamics
    ``δ_t = J_t δ_{t-1} + u_t + w_t``, ``w ~ N(0, I)``, observed as ``0 = δ_t + v_t``,
    ``v ~ N(0, I / λ)``. With ``λ -> 0`` it is the DEER step. Steps that are not
    ``alive`` (past a sequence's length) are exact, unobserved copies ``δ_t = δ_{t-1} + u_t``
    (``J_t = I`` there), so padding neither pulls on the step nor slows it down. The filter
    is the parallel Kalman filter of Särkkä & García-Fernández (2021, "Temporal
    parallelization of Bayesian smoothers"), its elements ``(A, b, C, η, J)`` written out
    for these dynamics; the smoother's mean is then one reversed linear scan.

    Args:
        J: ``[T, ..., N, N]`` (dense) or ``[T, ..., N]`` (diagonal) dynamics.
        u: ``[T, ..., N]`` offsets.
        alive: ``[T, ...]`` bool.
        damping: ``λ > 0``.
        diagonal: whether ``J`` is diagonal.

    Returns:
        ``[T, ..., N]``, the minimiser ``δ``.
    """
    N = u.shape[-1]
    if diagonal:

        def add_eye(x):
            return x + 1

        def mm(x, y):
            return x * y

        def mv(x, v):
            return x * v

        def inv(x):
            return 1.0 / x

        def tr(x):
            return x

        def mat(c):  # [T, ...] scalars as [T, ..., N] diagonals
            return c[..., None]
    else:

        def add_eye(x):
            return x + jnp.eye(N, dtype=x.dtype)

        def mm(x, y):
            return x @ y

        def mv(x, v):
            return jnp.einsum("...ij,...j->...i", x, v)

        def inv(x):
            return jnp.linalg.inv(x)

        def tr(x):
            return jnp.swapaxes(x, -1, -2)

        def mat(c):  # [T, ...] scalars as [T, ..., 1, 1]
            return c[..., None, None]

    # The Kalman gain is κ I (H = Q = I, R = I / λ) on live steps, 0 on copied ones (Q = 0,
    # no observation). Step 1 starts from the exact δ_0 = 0, so its A, η and J vanish.
    kappa = jnp.where(alive, damping / (1.0 + damping), 0.0).astype(u.dtype)  # [T, ...]
    first = (jnp.arange(u.shape[0]) == 0).reshape((-1,) + (1,) * (alive.ndim - 1))
    A = jnp.where(mat(first), 0.0, mat(1.0 - kappa) * J)
    bb = (1.0 - kappa[..., None]) * u
    C = mat(jnp.where(alive, 1.0 - kappa, 0.0)) * add_eye(jnp.zeros_like(J))
    eta = jnp.where(first[..., None], 0.0, -kappa[..., None] * mv(tr(J), u))
    JJ = jnp.where(mat(first), 0.0, mat(kappa) * mm(tr(J), J))

    def combine(earlier, later):
        A_i, b_i, C_i, eta_i, J_i = earlier
        A_j, b_j, C_j, eta_j, J_j = later
        M = inv(add_eye(mm(C_i, J_j)))  # (I + C_i J_j)^{-1}
        AM = mm(A_j, M)
        A_ij = mm(AM, A_i)
        b_ij = mv(AM, b_i + mv(C_i, eta_j)) + b_j
        C_ij = mm(mm(AM, C_i), tr(A_j)) + C_j
        AiMt = mm(tr(A_i), tr(M))  # (I + J_j C_i)^{-1} = M^T: C and J are symmetric
        eta_ij = mv(AiMt, eta_j - mv(J_j, b_i)) + eta_i
        J_ij = mm(mm(AiMt, J_j), A_i) + J_i
        return A_ij, b_ij, C_ij, eta_ij, J_ij

    _, m, P, _, _ = jax.lax.associative_scan(combine, (A, bb, C, eta, JJ), axis=0)
    # Rauch-Tung-Striebel: δ_t = E_t δ_{t+1} + g_t, E_t = P_t J'^T (J' P_t J'^T + I)^{-1} with
    # J' = J_{t+1}; a copied step t+1 gives δ_t = δ_{t+1} - u_{t+1}; the last step, δ_T = m_T.
    J_next = jnp.concatenate([J[1:], jnp.zeros_like(J[:1])])
    u_next = jnp.concatenate([u[1:], jnp.zeros_like(u[:1])])
    copied_next = jnp.concatenate([~alive[1:], jnp.zeros_like(alive[:1])])
    E = mm(mm(P, tr(J_next)), inv(add_eye(mm(mm(J_next, P), tr(J_next)))))
    E = jnp.where(mat(copied_next), add_eye(jnp.zeros_like(E)), E)
    g = jnp.where(copied_next[..., None], -u_next, m - mv(E, mv(J_next, m) + u_next))
    return _associative(E, g, diagonal, reverse=True)


# --- carries as flat real vectors -----------------------------------------------------------


class _Flat(NamedTuple):
    """How one example's carry pytree maps to a flat real vector (complex leaves as re, im)."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    real_dtype: Any

    def ravel(self, carry: Any) -> Array:
        parts = []
        for leaf in jax.tree.leaves(carry):
            leaf = jnp.ravel(leaf)
            if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
                parts += [leaf.real, leaf.imag]
            else:
                parts.append(leaf)
        return jnp.concatenate([p.astype(self.real_dtype) for p in parts])

    def unravel(self, s: Array) -> Any:
        leaves, i = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            n = math.prod(shape)
            if jnp.issubdtype(dtype, jnp.complexfloating):
                leaf = jax.lax.complex(s[i : i + n], s[i + n : i + 2 * n])
                i += 2 * n
            else:
                leaf = s[i : i + n]
                i += n
            leaves.append(leaf.astype(dtype).reshape(shape))
        return jax.tree.unflatten(self.treedef, leaves)


def _flat_spec(carry_example: Any) -> _Flat:
    leaves, treedef = jax.tree.flatten(carry_example)
    dtypes = tuple(jnp.result_type(x) for x in leaves)
    real = jnp.result_type(*[jnp.finfo(d).dtype for d in dtypes])  # complex64 -> float32
    return _Flat(treedef, tuple(tuple(jnp.shape(x)) for x in leaves), dtypes, real)


# --- the parallel solve of a nonlinear recurrence --------------------------------------------


def _cell_attr(cell: Cell, name: str) -> Any:
    """An attribute of the cell, or of the function inside a ``functools.partial``."""
    for obj in (cell, getattr(cell, "func", None)):
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


class _Problem(NamedTuple):
    """The flattened recurrence ``s_t = f(s_{t-1}, x_t)`` of one call, time-major.

    ``xs: [T, B, D]``, states ``[T, B, N]``, ``alive: [T, B]``; a step that is not alive
    is the identity, so the state past a sequence's length stays put.
    """

    cell: Cell
    flat: _Flat
    reverse: bool

    def step(self, params, s, x):  # one example: s [N], x [D] -> (s' [N], y)
        carry, y = self.cell(params, self.flat.unravel(s), x)
        return self.flat.ravel(carry), y

    def f(self, params, prev, xs, alive):  # prev [T, B, N] -> (next states [T, B, N], ys)
        s, y = jax.vmap(jax.vmap(self.step, (None, 0, 0)), (None, 0, 0))(params, prev, xs)
        s = jnp.where(alive[..., None], s, prev)
        y = jax.tree.map(
            lambda a: jnp.where(alive.reshape(alive.shape + (1,) * (a.ndim - 2)), a, 0), y
        )
        return s, y

    def next_states(self, params, prev, xs, alive):
        return self.f(params, prev, xs, alive)[0]

    def _jacobians(self, params, prev, xs):  # ∂s_t/∂s_{t-1}: [T, B, N, N], N jvps a step
        jac = jax.jacfwd(lambda s, x: self.step(params, s, x)[0])
        return jax.vmap(jax.vmap(jac))(prev, xs)

    def jacobians(self, params, prev, xs, alive):  # [T, B, N, N], the identity where not alive
        J = self._jacobians(params, prev, xs)
        return jnp.where(alive[..., None, None], J, jnp.eye(J.shape[-1], dtype=J.dtype))

    def diagonals(self, params, prev, xs, alive):  # [T, B, N], one where not alive
        hook = _cell_attr(self.cell, "jacobian_diagonal")
        if hook is not None:  # the cell knows its diagonal: no N x N Jacobian is formed

            def diag(s, x):
                return self.flat.ravel(hook(params, self.flat.unravel(s), x))

            d = jax.vmap(jax.vmap(diag))(prev, xs)
        else:
            d = jnp.diagonal(self._jacobians(params, prev, xs), axis1=-2, axis2=-1)
        return jnp.where(alive[..., None], d, 1)

    def sequential(self, params, xs, h0, alive):  # the plain scan: the fallback
        def body(s, inp):
            x, live = inp  # [B, D], [B]
            s_new = jax.vmap(lambda s_b, x_b: self.step(params, s_b, x_b)[0])(s, x)
            s_new = jnp.where(live[:, None], s_new, s)
            return s_new, s_new

        return jax.lax.scan(body, h0, (xs, alive), reverse=self.reverse)[1]


def _residual(S: Array, F: Array) -> Array:
    return jnp.max(jnp.abs(S - F) / (1 + jnp.abs(F)))


class _Iterate(NamedTuple):
    k: Array  # iterations run
    S: Array  # [T, B, N] the trajectory
    F: Array  # [T, B, N] f(S shifted): what every step gives from its predecessor
    res: Array  # scaled residual of S
    finite: Array  # no non-finite iterate met (Newton); ELK rejects those steps instead
    damping: Array  # ELK's current λ


def _solve(prob: _Problem, params, xs, h0, alive, method, max_iters, tol, damping):
    """Iterates from ``s_t = h0`` until the residual is below ``tol``; returns ``(S, info)``.

    Every finite step is taken: the steps need not lower the residual, but after ``k`` of
    them the first ``k`` time steps are (nearly) exact. Newton and quasi-Newton stop at a
    non-finite step; ELK rejects it and damps ten times harder.
    """
    diagonal = method in ("quasi", "quasi_elk")
    elk = method in ("elk", "quasi_elk")
    rev = prob.reverse
    dtype = h0.dtype

    def evaluate(S):
        F = prob.next_states(params, _shift_in(S, h0, rev), xs, alive)
        return F, _residual(S, F)

    def cond(it: _Iterate):
        return (it.k < max_iters) & (it.res > tol) & it.finite

    def body(it: _Iterate):
        prev = _shift_in(it.S, h0, rev)
        if diagonal:
            J = prob.diagonals(params, prev, xs, alive)
        else:
            J = prob.jacobians(params, prev, xs, alive)
        # Newton in correction form: δ_t = J_t δ_{t-1} + (f_t - s_t), δ_0 = 0, s <- s + δ; its
        # rounding error scales with the shrinking correction rather than with the states.
        if elk:
            flip = (lambda a: jnp.flip(a, 0)) if rev else (lambda a: a)
            delta = flip(
                _kalman_mean(flip(J), flip(it.F - it.S), flip(alive), it.damping, diagonal)
            )
        else:
            delta = _solve_linear(J, it.F - it.S, diagonal, rev)
        S = it.S + delta
        F, res = evaluate(S)
        ok = jnp.isfinite(res) & jnp.all(jnp.isfinite(S))
        # ELK keeps its damping but answers a non-finite trial step with a tenfold one.
        damping = jnp.where(ok, it.damping, it.damping * 10) if elk else it.damping
        return _Iterate(
            it.k + 1,
            jnp.where(ok, S, it.S),
            jnp.where(ok, F, it.F),
            jnp.where(ok, res, it.res),
            it.finite & (ok | elk),
            jnp.minimum(damping, 1e30).astype(dtype),
        )

    S0 = jnp.broadcast_to(h0, (xs.shape[0], *h0.shape))  # [T, B, N]
    F0, res0 = evaluate(S0)
    init = _Iterate(jnp.int32(0), S0, F0, res0, jnp.isfinite(res0), jnp.asarray(damping, dtype))
    it = jax.lax.while_loop(cond, body, init)
    return it.S, (it.k, it.res, it.finite & (it.res <= tol), it.finite)


def _implicit(prob: _Problem):
    """``attach(S, params, xs, h0, alive) = S``, with the derivative of the solution.

    ``S`` solves ``s_t = f(s_{t-1}, x_t; θ)``, ``s_0 = h0``, so its tangent solves the linear
    recurrence ``ds_t = J_t ds_{t-1} + ∂_{θ, x_t} f · (dθ, dx_t)``, ``ds_0 = dh0``: one
    linear scan, whose transpose (reverse mode) is one reversed scan with ``J_{t+1}^T``.
    """

    @jax.custom_jvp
    def attach(S, params, xs, h0, alive):
        return S

    @attach.defjvp
    def attach_jvp(primals, tangents):
        S, params, xs, h0, alive = primals
        _, d_params, d_xs, d_h0, _ = tangents
        S = attach(S, params, xs, h0, alive)  # so that second derivatives see S move too
        prev = _shift_in(S, h0, prob.reverse)
        J = prob.jacobians(params, prev, xs, alive)  # the full Jacobians, whatever the method
        _, r = jax.jvp(
            lambda p, x: prob.next_states(p, prev, x, alive), (params, xs), (d_params, d_xs)
        )
        return S, _linear_scan_tm(J, r, d_h0, diagonal=False, reverse=prob.reverse)

    return attach


def _default_tol(dtype: Any) -> float:
    # A hundred roundings of the state's own size (float32: 1.2e-5), at most 1e-11 (float64),
    # where the gap to the sequential scan is far below what tests and training can see.
    return float(max(100 * jnp.finfo(dtype).eps, 1e-11))


def rnn(
    cell: Cell,
    params: Any,
    xs: Array,
    h0: Any = None,
    *,
    method: str = "newton",
    lengths: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    max_iters: int | None = None,
    tol: float | None = None,
    damping: float = 1e-6,
    fallback: bool = False,
    return_info: bool = False,
) -> tuple[Any, Any] | tuple[Any, Any, ParallelInfo]:
    """Runs ``cell`` over the time axis of ``xs``, all steps at once, by Newton's method.

    The trajectory ``s_1..s_T`` (each ``s_t`` the carry, flattened) is the root of
    ``s_t - f(s_{t-1}, x_t) = 0``. Each iteration linearises every step around the current
    trajectory, ``J_t = ∂f/∂s`` at ``s_{t-1}``, and solves the linear recurrence
    ``δ_t = J_t δ_{t-1} + (f(s_{t-1}, x_t) - s_t)`` with :func:`linear_scan`:

    * ``"newton"``: the full Jacobians (DEER, Lim et al. 2024); quadratic convergence near
      the solution; ``O(N^3)`` work per step and iteration for ``N`` carry entries.
    * ``"quasi"``: their diagonals only (quasi-DEER, Gonzalez et al. 2024); ``O(N)`` scans,
      more iterations. A cell with a ``jacobian_diagonal(params, carry, x)`` attribute (the
      diagonal of ``∂carry'/∂carry``, shaped as the carry) gives it without the full Jacobian.
    * ``"elk"`` / ``"quasi_elk"``: Levenberg-Marquardt steps (ELK, Gonzalez et al. 2024) with
      the full / diagonal Jacobians, solved by a parallel Kalman smoother: each step
      minimises the linearised residual plus ``λ |δ|^2`` (``λ = damping``). Where the
      linearisation grows without bound along the sequence (unstable or chaotic dynamics,
      where Newton's step overflows), the damping bounds the step; a non-finite step is
      rejected and ``λ`` raised tenfold. With a small ``λ`` it takes as many iterations as
      Newton where Newton works.

    Newton and quasi-Newton reach the exact trajectory in at most ``T`` iterations (after
    ``k`` of them the first ``k`` steps are exact), far fewer where the cell forgets quickly.
    The carry may be any pytree (an LSTM's ``(h, c)``; complex leaves count as their real and
    imaginary parts).

    The result is :func:`jaxrnn.rnn`'s up to ``tol`` (amplified by how far errors travel along
    the recurrence). Derivatives are those of the solution, by implicit differentiation (see
    the module docstring), never through the iterations; they need the full Jacobians at the
    solution whatever the method, ``T B N^2`` numbers and a dense scan.

    Args:
        cell: ``cell(params, carry, x) -> (carry, y)`` (see :mod:`jaxrnn.cells`).
        params: the cell's parameters.
        xs: ``[B, T, D]``; ``[T, B, D]`` with ``time_major=True``; or ``[T, D]`` unbatched.
        h0: initial carry (leaves ``[B, ...]``, unbatched ``[...]``); ``None``:
            ``cell.initial_carry``.
        method: ``"newton"``, ``"quasi"``, ``"elk"`` or ``"quasi_elk"``.
        lengths: ``[B]`` int (a scalar for unbatched ``xs``), as in :func:`jaxrnn.rnn`: steps
            past a sequence's length leave its carry unchanged and give zero outputs.
        reverse: run from the last step to the first (with ``lengths``: from each sequence's
            own last step); outputs keep the original time order.
        time_major: whether ``xs`` and ``ys`` are ``[T, B, ...]``.
        max_iters: the most iterations; ``None``: ``T`` for ``"newton"`` and ``"quasi"``
            (always enough), ``max(T, 100)`` for the ELK methods.
        tol: stop once every ``|s_t - f(s_{t-1}, x_t)| <= tol (1 + |f(s_{t-1}, x_t)|)``;
            ``None``: ``100 eps`` of the carry's dtype (``1.2e-5`` in float32), ``1e-11`` in
            float64.
        damping: ELK's ``λ > 0``: larger is steadier and slower; unused by ``"newton"`` and
            ``"quasi"``.
        fallback: where the solve has not converged, return the sequential scan's result
            (``info.fell_back``); under ``vmap`` both are computed.
        return_info: also return a :class:`ParallelInfo`.

    Returns:
        ``(final_carry, ys)`` as :func:`jaxrnn.rnn` returns them, or
        ``(final_carry, ys, info)`` with ``return_info=True``. Outside ``jit`` an
        unconverged solve (without ``fallback``) warns with :class:`NotConvergedWarning`,
        naming the residual; under ``jit``, ask for ``info``.

    Raises:
        ValueError, TypeError: at trace time, for wrong shapes, dtypes, carries, lengths or
            options, naming what was expected and what was received.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import cells, parallel
        >>> params = cells.lstm.init(jax.random.key(0), 3, 4)
        >>> xs = jax.random.normal(jax.random.key(1), (100, 3), jnp.float32)  # [T, D]
        >>> (h, c), ys, info = parallel.rnn(cells.lstm.cell, params, xs, method="quasi",
        ...                                 return_info=True)
        >>> h.shape, ys.shape, bool(info.converged), int(info.iterations) < 100
        ((4,), (100, 4), True, True)
    """
    name = getattr(getattr(cell, "func", cell), "cell_name", None) or getattr(
        getattr(cell, "func", cell), "__name__", "cell"
    )
    where = f"parallel.rnn({name})"
    _check_options(where, method, max_iters, tol, damping, reverse, time_major, fallback)
    xs = jnp.asarray(xs)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"{where}: xs must have a floating dtype (e.g. float32); got {xs.dtype}")
    if xs.ndim not in (2, 3):
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(
            f"{where}: xs must be {layout} (batched) or [T, D] (unbatched); "
            f"got rank {xs.ndim} with shape {list(xs.shape)}"
        )
    batched = xs.ndim == 3
    if not batched:
        xs_tm = xs[:, None, :]  # [T, 1, D]
    elif time_major:
        xs_tm = xs  # [T, B, D]
    else:
        xs_tm = jnp.swapaxes(xs, 0, 1)  # [B, T, D] -> [T, B, D]
    T, B = xs_tm.shape[:2]
    if T == 0:
        raise ValueError(
            f"{where}: xs must have at least one time step; got shape {list(xs.shape)}"
        )
    batch_shape = (B,) if batched else ()
    if lengths is not None:
        lengths = _checks.lengths(where, lengths, batch_shape, T).reshape((B,))
    alive = _alive(lengths, T, (B,))  # [T, B]

    if h0 is None:
        init_fn = _cell_attr(cell, "initial_carry")
        if init_fn is None:
            raise ValueError(f"{where}: h0=None needs cell.initial_carry, which {name!r} lacks")
        h0 = init_fn(params, batch_shape)
    carry0 = h0 if batched else jax.tree.map(lambda a: jnp.asarray(a)[None], h0)  # leaves [B, ..]
    _check_carry(where, cell, params, carry0, xs_tm, h0 is None)

    flat = _flat_spec(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), carry0))
    if max_iters is None:  # Newton's bound; damped steps have none, so ELK gets some slack
        max_iters = max(T, 100) if method in ("elk", "quasi_elk") else T
    tol = _default_tol(flat.real_dtype) if tol is None else float(tol)
    carry, ys, info = _run(
        params,
        xs_tm,
        carry0,
        alive,
        prob=_Problem(cell, flat, reverse),
        method=method,
        max_iters=max_iters,
        tol=tol,
        damping=float(damping),
        fallback=fallback,
    )
    if not fallback:
        _warn_if_unconverged(where, info, tol, method)
    if not batched:
        carry = jax.tree.map(lambda a: a[0], carry)
        ys = jax.tree.map(lambda a: a[:, 0], ys)  # [T, 1, H] -> [T, H]
    elif not time_major:
        ys = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)  # [T, B, H] -> [B, T, H]
    return (carry, ys, info) if return_info else (carry, ys)


@functools.partial(
    jax.jit, static_argnames=("prob", "method", "max_iters", "tol", "damping", "fallback")
)
def _run(params, xs, carry0, alive, *, prob, method, max_iters, tol, damping, fallback):
    """The solve and its outputs on time-major ``xs [T, B, D]``: one compiled program for each
    cell and set of options, so that calls outside ``jit`` do not dispatch op by op."""
    h0 = jax.vmap(prob.flat.ravel)(carry0)  # [B, N]
    # The solve sees no derivatives; `attach` gives its solution the implicit ones.
    p_, x_, h_ = jax.lax.stop_gradient((params, xs, h0))
    S, (k, res, converged, finite) = _solve(
        prob, p_, x_, h_, alive, method, max_iters, tol, damping
    )
    fell_back = jnp.asarray(False)
    if fallback:
        fell_back = ~converged
        S = jax.lax.cond(converged, lambda: S, lambda: prob.sequential(p_, x_, h_, alive))
    S = _implicit(prob)(S, params, xs, h0, alive)
    _, ys = prob.f(params, _shift_in(S, h0, prob.reverse), xs, alive)  # ys leaves [T, B, H]
    carry = jax.vmap(prob.flat.unravel)(S[0] if prob.reverse else S[-1])  # leaves [B, ...]
    return carry, ys, ParallelInfo(k, res, converged, finite, fell_back)


def _check_options(where, method, max_iters, tol, damping, reverse, time_major, fallback) -> None:
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {list(METHODS)}; got {method!r}")
    if max_iters is not None and (
        isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1
    ):
        raise ValueError(f"{where}: max_iters must be a positive int or None; got {max_iters!r}")
    for opt, value in (("tol", tol), ("damping", damping)):
        if opt == "tol" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{where}: {opt} must be a positive number; got {value!r}")
    for opt, value in (("reverse", reverse), ("time_major", time_major), ("fallback", fallback)):
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {opt} must be a bool; got {value!r}")


def _check_carry(
    where: str, cell: Cell, params: Any, carry0: Any, xs_tm: Array, h0_none: bool
) -> None:
    """Traces one step, so that a wrong width or carry is reported here with the shapes."""
    x_step = jax.ShapeDtypeStruct((xs_tm.shape[1], xs_tm.shape[2]), xs_tm.dtype)
    try:
        carry_out, _ = jax.eval_shape(lambda c, x: cell(params, c, x), carry0, x_step)
    except (ValueError, TypeError) as e:
        raise type(e)(
            f"{e}\n  (while checking one step of {where} on xs steps of shape "
            f"{list(x_step.shape)}; h0 {'from cell.initial_carry' if h0_none else 'given'})"
        ) from None
    c_in = jax.tree.map(lambda a: (tuple(jnp.shape(a)), jnp.result_type(a)), carry0)
    c_out = jax.tree.map(lambda a: (tuple(a.shape), a.dtype), carry_out)
    if c_in != c_out:
        raise TypeError(
            f"{where}: the cell turns a carry of (shape, dtype) {c_in} into {c_out}; they must "
            "match (give xs and h0 the parameters' dtype)"
        )
    for leaf in jax.tree.leaves(carry0):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"{where}: every carry leaf must be floating or complex; got {jnp.result_type(leaf)}"
            )


def _warn_if_unconverged(where: str, info: ParallelInfo, tol: float, method: str) -> None:
    """Warns outside ``jit``, where the values are known; under ``jit`` the info tells."""
    if any(isinstance(v, jax.core.Tracer) for v in info) or bool(info.converged):
        return
    if not bool(info.finite):
        why, hint = "a non-finite iterate", "try method='elk'"
    else:
        why, hint = "max_iters", "raise max_iters"
        if method in ("elk", "quasi_elk"):
            hint += " or lower damping"
    warnings.warn(
        f"{where}: method {method!r} did not converge: residual {float(info.residual):.3g} > "
        f"tol {tol:.3g} after {int(info.iterations)} iterations (stopped by {why}); {hint}, "
        "or pass fallback=True for the sequential result",
        NotConvergedWarning,
        stacklevel=3,
    )


__all__ = [
    "METHODS",
    "NotConvergedWarning",
    "ParallelInfo",
    "linear_scan",
    "log_linear_scan",
    "rnn",
]
