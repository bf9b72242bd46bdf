"""The dynamics of a recurrence: gradient flow through time, Jacobian and Lyapunov spectra,
fixed points.

Every function works on any cell ``cell(params, carry, x) -> (carry, y)`` (a cell of your
own included) and treats its carry, whatever its pytree, as one real state vector ``s`` of
``S`` entries (its leaves flattened and concatenated in ``jax.tree.leaves`` order, a complex
leaf as its real then imaginary part): ``S = H`` for the simple cell and the GRU, ``2H`` for
the LSTM (``h`` then ``c``). One step is the map ``s_t = F(s_{t-1}, x_t)``.

The inputs are read as :func:`jaxrnn.rnn` reads them: ``xs [B, T, D]``, or ``[T, D]`` for one
sequence (the results then have no ``B`` axis); ``h0=None`` is the cell's ``initial_carry``.
Entry ``t`` (0-based) of a ``[B, T]`` result belongs to the carry *after* step ``t``, the one
that ``ys[:, t]`` of :func:`jaxrnn.rnn` came with.

* :func:`carry_grad_norms`: ``||dL/ds_t||`` for every ``t``, by one reverse pass;
* :func:`step_jacobians`: ``ds_t/ds_{t-1}`` for every ``t``;
* :func:`jacobian_product_norms`: ``||ds_T/ds_t||_2`` for every ``t``;
* :func:`lyapunov_spectrum`: the Lyapunov exponents by the QR (Benettin) method;
* :func:`fixed_points`: the fixed points of ``F(., x)`` and their linearisation
  (Sussillo & Barak, "Opening the black box", Neural Computation 2013);
* :func:`line_attractor_summary` and :func:`input_projections`: whether fixed points form a
  line attractor, and how inputs move the state along it (Maheswaranathan et al. 2019).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, dynamics
    >>> params = cells.simple.init(jax.random.key(0), input_size=3, hidden_size=4)
    >>> xs = jax.random.normal(jax.random.key(1), (2, 50, 3), jnp.float32)    # [B, T, D]
    >>> dynamics.step_jacobians(cells.simple.cell, params, xs).shape          # [B, T, S, S]
    (2, 50, 4, 4)
    >>> dynamics.lyapunov_spectrum(cells.simple.cell, params, xs, k=2).shape  # [B, k]
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import _checks
from jaxrnn.parallel import _Flat, _flat_spec

Array = jax.Array
Cell = Callable[[Any, Any, Array], tuple[Any, Any]]


# --- inputs ------------------------------------------------------------------------------------


class _Problem(NamedTuple):
    """One call's inputs, checked: time-major ``xs``, the batched carry, the flattening."""

    xs_tm: Array  # [T, B, D]
    carry0: Any  # leaves [B, ...]
    flat: _Flat  # one example's carry <-> s [S]
    batched: bool

    @property
    def S(self) -> int:
        return _size(self.flat)

    def s0(self) -> Array:
        """``[B, S]``."""
        return jax.vmap(self.flat.ravel)(self.carry0)

    def out(self, a: Array) -> Array:
        """``a [B, ...]`` as returned: without the batch axis for unbatched ``xs``."""
        return a if self.batched else a[0]


def _prepare(where: str, cell: Cell, params: Any, xs: Any, h0: Any) -> _Problem:
    xs_tm, batched = _checks.sequence(where, xs, time_major=False)
    T, B, _ = xs_tm.shape
    if T == 0:
        raise ValueError(f"{where}: xs must have at least one step; got shape {tuple(xs.shape)}")
    if h0 is not None and not batched:  # one sequence's carry: give it the batch axis of B = 1
        h0 = jax.tree.map(lambda a: jnp.asarray(a)[None], h0)
    carry0 = _checks.initial_carry(where, cell, params, h0, (B,))
    for leaf in jax.tree.leaves(carry0):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"{where}: every carry leaf must be floating or complex; got {jnp.result_type(leaf)}"
            )
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != B:
            raise ValueError(
                f"{where}: every leaf of h0 must have the batch size {B} of xs as its first axis"
                f"{'' if batched else ' (unbatched xs: h0 without a batch axis)'}; got a leaf of "
                f"shape {tuple(jnp.shape(leaf)) if batched else tuple(jnp.shape(leaf))[1:]}"
            )
    layout = "[B, T, D]" if batched else "[T, D]"
    context = f"while checking one step of {where} on xs {layout} = {list(xs.shape)}"
    _checks.step(where, cell, params, carry0, xs_tm[0], context)
    example = jax.tree.map(lambda a: a[0], carry0)
    return _Problem(xs_tm, carry0, _flat_spec(example), batched)


def _step_fn(cell: Cell, params: Any, flat: _Flat) -> Callable[[Array, Array], Array]:
    """``F(s [S], x [D]) -> s' [S]``: one step of one example, on flat states."""

    def F(s, x):
        carry, _ = cell(params, flat.unravel(s), x)
        return flat.ravel(carry)

    return F


def _states(F: Callable, s0: Array, xs: Array) -> Array:
    """``s_1..s_T [T, S]`` of one example (``xs [T, D]``)."""

    def step(s, x):
        s = F(s, x)
        return s, s

    return jax.lax.scan(step, s0, xs)[1]


def visited_states(cell: Cell, params: Any, xs: Any, h0: Any = None) -> Array:
    """The flat state after every step, ``s_1 .. s_T`` (the carry's leaves concatenated).

    Args:
        cell, params, xs, h0: as in :func:`carry_grad_norms`.

    Returns:
        ``[B, T, S]`` (``[T, S]`` unbatched).
    """
    p = _prepare("dynamics.visited_states", cell, params, xs, h0)
    F = _step_fn(cell, params, p.flat)
    return p.out(jax.vmap(lambda s0, xs: _states(F, s0, xs), in_axes=(0, 1))(p.s0(), p.xs_tm))


# --- gradient flow -----------------------------------------------------------------------------


def carry_grad_norms(
    loss_fn: Callable[[Any, Any], Array], cell: Cell, params: Any, xs: Any, h0: Any = None
) -> Array:
    """``||dL/ds_t||_2`` for every step: how much of the loss's gradient reaches each carry.

    ``L = loss_fn(final_carry, ys)`` with ``final_carry, ys`` as :func:`jaxrnn.rnn` returns
    them for ``xs`` (batched: leaves ``[B, ...]`` and ``ys [B, T, ...]``; unbatched: without
    ``B``). ``dL/ds_t`` is the total derivative of ``L`` with respect to a perturbation
    added to the carry after step ``t``, before step ``t + 1`` reads it: every path through
    the later steps (their outputs, the final carry) counts; the output ``y_t`` that step
    ``t`` emitted alongside ``s_t`` does not depend on it. This is the vanishing/exploding
    gradient picture: for a loss on the final carry alone, ``||dL/ds_t||`` is
    ``||(ds_T/ds_t)^T dL/ds_T||``.

    One reverse pass (``jax.grad`` of a scan whose carry receives a zero perturbation
    ``eps_t`` at every step, ``dL/d eps_t = dL/ds_t``): no per-step Jacobian is stored, the
    memory is that of one gradient of the loss.

    Args:
        loss_fn: ``(final_carry, ys) -> scalar``.
        cell, params: as in :func:`jaxrnn.rnn`.
        xs: ``[B, T, D]`` or ``[T, D]``.
        h0: the initial carry (leaves ``[B, ...]``, or without ``B`` for unbatched ``xs``);
            ``None``: the cell's ``initial_carry``.

    Returns:
        ``[B, T]`` (``[T]`` unbatched), in the carry's real dtype.
    """
    where = "dynamics.carry_grad_norms"
    if not callable(loss_fn):
        raise TypeError(
            f"{where}: loss_fn must be a callable (final_carry, ys) -> scalar; got {loss_fn!r}"
        )
    p = _prepare(where, cell, params, xs, h0)
    unravel = jax.vmap(p.flat.unravel)

    def batch_major(tree):
        tree = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), tree)
        return tree if p.batched else jax.tree.map(lambda a: a[0], tree)

    def loss(eps):  # eps [T, B, S]
        def step(carry, inputs):
            x, e = inputs
            carry, y = cell(params, carry, x)
            return jax.tree.map(jnp.add, carry, unravel(e)), y

        final, ys = jax.lax.scan(step, p.carry0, (p.xs_tm, eps))
        if not p.batched:
            final = jax.tree.map(lambda a: a[0], final)
        value = loss_fn(final, batch_major(ys))
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{where}: loss_fn must return a scalar (shape ()); got shape {jnp.shape(value)}"
            )
        return jnp.real(value)

    T, B, _ = p.xs_tm.shape
    grads = jax.grad(loss)(jnp.zeros((T, B, p.S), p.flat.real_dtype))  # [T, B, S]
    return p.out(jnp.linalg.norm(grads, axis=-1).T)


# --- Jacobians ---------------------------------------------------------------------------------


def step_jacobians(cell: Cell, params: Any, xs: Any, h0: Any = None) -> Array:
    """The Jacobian of every step, ``J_t = ds_t/ds_{t-1}`` (row: entry of ``s_t``).

    For the simple cell ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)`` this is
    ``diag(1 - h_t^2) W_h^T``. Stores ``T S^2`` numbers per sequence: for long sequences use
    :func:`jacobian_product_norms` or :func:`lyapunov_spectrum`, which do not.

    Args:
        cell, params, xs, h0: as in :func:`carry_grad_norms`.

    Returns:
        ``[B, T, S, S]`` (``[T, S, S]`` unbatched).
    """
    p = _prepare("dynamics.step_jacobians", cell, params, xs, h0)
    F = _step_fn(cell, params, p.flat)
    jac = jax.jacfwd(F)

    def one(s0, xs):  # [S], [T, D]
        def step(s, x):
            return F(s, x), jac(s, x)

        return jax.lax.scan(step, s0, xs)[1]

    return p.out(jax.vmap(one, in_axes=(0, 1))(p.s0(), p.xs_tm))


def jacobian_product_norms(cell: Cell, params: Any, xs: Any, h0: Any = None) -> Array:
    """``||ds_T/ds_t||_2`` (the largest singular value) for every step ``t``; ``1`` at ``t = T``.

    A forward pass keeps the states ``[T, S]``; a reverse pass carries the product
    ``P_t = ds_T/ds_t = P_{t+1} J_{t+1}`` (``S`` vector-Jacobian products a step, never a
    stored Jacobian), rescaled each step with its scale kept as a logarithm so that long
    products neither overflow nor underflow before the norm is taken.

    Args:
        cell, params, xs, h0: as in :func:`carry_grad_norms`.

    Returns:
        ``[B, T]`` (``[T]`` unbatched).
    """
    p = _prepare("dynamics.jacobian_product_norms", cell, params, xs, h0)
    F = _step_fn(cell, params, p.flat)
    S = p.S

    def one(s0, xs):  # [S], [T, D]
        states = _states(F, s0, xs)  # s_1..s_T
        prev = jnp.concatenate([s0[None], states[:-1]])  # s_0..s_{T-1}

        def back(carry, inputs):  # from P_{t+1} (scaled) to P_t
            P, log_scale = carry
            s_prev, x = inputs  # the inputs of step t + 1
            _, vjp = jax.vjp(lambda s: F(s, x), s_prev)
            P = jax.vmap(lambda row: vjp(row)[0])(P)  # rows: P_{t+1} J_{t+1}
            scale = jnp.maximum(jnp.linalg.norm(P), jnp.finfo(P.dtype).tiny)
            P, log_scale = P / scale, log_scale + jnp.log(scale)
            return (P, log_scale), jnp.log(jnp.linalg.norm(P, ord=2)) + log_scale

        eye = jnp.eye(S, dtype=states.dtype)
        zero = jnp.zeros((), states.dtype)
        # step t + 1 for t = T-1 .. 1 maps s_t -> s_{t+1}; the product at t = T is I
        (_, _), logs = jax.lax.scan(back, (eye, zero), (prev[1:], xs[1:]), reverse=True)
        last = jnp.zeros((1,), states.dtype)  # log ||I||_2
        return jnp.exp(jnp.concatenate([logs, last]))

    return p.out(jax.vmap(one, in_axes=(0, 1))(p.s0(), p.xs_tm))


# --- Lyapunov exponents ------------------------------------------------------------------------


def lyapunov_spectrum(
    cell: Cell,
    params: Any,
    xs: Any,
    h0: Any = None,
    *,
    k: int | None = None,
    key: Array | None = None,
) -> Array:
    """The ``k`` largest Lyapunov exponents of the trajectory, by the QR (Benettin) method.

    A frame ``Q [S, k]`` of orthonormal tangent vectors rides along the trajectory: each step
    maps it by the step's Jacobian (``k`` Jacobian-vector products, ``jax.linearize`` once per
    step, never a stored Jacobian nor the product ``ds_T/ds_0``) and re-orthonormalises it by
    a QR factorisation with ``diag(R) > 0``. The exponents are the time averages of
    ``log diag(R)``: natural log per step, ``λ_i = lim 1/T log σ_i(ds_T/ds_0)``. The finite-``T``
    error falls like ``1/T`` (the frame's first steps); pass a ``xs`` with a warm-up, or drop
    it from the trajectory by starting at ``h0``, when the transient matters. A linear cell
    ``s_t = A s_{t-1}`` gives ``log |eig(A)|``.

    Memory: the state, the frame and ``k`` sums, whatever ``T``. Time: per step, ``k``
    Jacobian-vector products and a QR of ``[S, k]`` (``O(S k^2)``).

    Args:
        cell, params, xs, h0: as in :func:`carry_grad_norms`.
        k: how many exponents, ``1 <= k <= S``; ``None``: all ``S``.
        key: PRNG key of the random initial frame (the same for every sequence); ``None``:
            ``jax.random.key(0)``.

    Returns:
        ``[B, k]`` (``[k]`` unbatched), descending.
    """
    where = "dynamics.lyapunov_spectrum"
    p = _prepare(where, cell, params, xs, h0)
    S = p.S
    if k is None:
        k = S
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= S:
        raise ValueError(f"{where}: k must be an int in [1, S={S}] (or None for all); got {k!r}")
    k = int(k)
    F = _step_fn(cell, params, p.flat)
    dtype = p.flat.real_dtype
    key = jax.random.key(0) if key is None else key
    Q0, _ = jnp.linalg.qr(jax.random.normal(key, (S, k), dtype))

    def one(s0, xs):  # [S], [T, D]
        def step(carry, x):
            s, Q, logs = carry
            s, jvp = jax.linearize(lambda s: F(s, x), s)
            V = jax.vmap(jvp, in_axes=1, out_axes=1)(Q)  # J Q: [S, k]
            Q, R = jnp.linalg.qr(V)
            d = jnp.diagonal(R)
            sign = jnp.where(d < 0, -1.0, 1.0).astype(dtype)
            return (s, Q * sign, logs + jnp.log(jnp.abs(d))), None

        init = (s0, Q0, jnp.zeros((k,), dtype))
        (_, _, logs), _ = jax.lax.scan(step, init, xs)
        return jnp.sort(logs / xs.shape[0])[::-1]

    return p.out(jax.vmap(one, in_axes=(0, 1))(p.s0(), p.xs_tm))


# --- fixed points ------------------------------------------------------------------------------


class FixedPoints(NamedTuple):
    """Fixed points ``s = F(s, x)`` found by :func:`fixed_points`, one row per start.

    Attributes:
        points: ``[N, S]`` the minimisers of ``q`` (flat carries; :func:`unflatten` gives
            carries).
        residuals: ``[N]`` ``q(s) = 1/2 ||F(s, x) - s||^2`` at each point.
        converged: ``[N]`` bool, ``q < tol``: a fixed point to the tolerance.
        slow: ``[N]`` bool, not converged but ``q < slow_tol``: a *slow point*, where the
            state moves little per step without stopping (Sussillo & Barak 2013); a start that
            found neither is a local minimum of ``q`` away from any fixed point, or ran out of
            steps.
        eigenvalues: ``[N, S]`` complex, of the Jacobian ``dF/ds`` at each point, by
            decreasing modulus: a modulus above 1 is an unstable direction, one near 1 a slow
            (integrating) one.
    """

    points: Array
    residuals: Array
    converged: Array
    slow: Array
    eigenvalues: Array

    def unique(self, tol: float = 1e-6, *, converged_only: bool = True) -> FixedPoints:
        """The points with duplicates merged: points closer than ``tol`` (Euclidean) are one,
        the one with the smallest residual kept. Runs in NumPy (outside ``jit``).

        Args:
            tol: merge distance.
            converged_only: keep only the converged points (``False``: all, slow ones too).

        Returns:
            A :class:`FixedPoints` of ``M <= N`` rows, by increasing residual.
        """
        if not (isinstance(tol, int | float) and tol >= 0) or isinstance(tol, bool):
            raise ValueError(f"FixedPoints.unique: tol must be a number >= 0; got {tol!r}")
        points = np.asarray(self.points)
        residuals = np.asarray(self.residuals)
        rows = (
            np.flatnonzero(np.asarray(self.converged)) if converged_only else np.arange(len(points))
        )
        kept: list[int] = []
        for i in rows[np.argsort(residuals[rows], kind="stable")]:
            if all(np.linalg.norm(points[i] - points[j]) >= tol for j in kept):
                kept.append(int(i))
        idx = np.asarray(kept, dtype=int)
        return FixedPoints(*(np.asarray(a)[idx] for a in self))


def fixed_points(
    cell: Cell,
    params: Any,
    x: Any,
    h_inits: Any,
    *,
    tol: float | None = None,
    slow_tol: float = 1e-6,
    max_steps: int = 2000,
    learning_rate: float = 1e-2,
    newton_steps: int = 5,
) -> FixedPoints:
    """Fixed points of one step under a constant input: the states ``s`` with ``s = F(s, x)``.

    Minimises ``q(s) = 1/2 ||F(s, x) - s||^2`` from every start at once (``vmap``): ``max_steps``
    steps of Adam (optax), then ``newton_steps`` Newton steps on ``F(s, x) - s = 0``, each kept
    only where it lowers ``q`` (Newton converges quadratically near a fixed point, and is
    refused at a slow point, where ``dF/ds - I`` is near singular). Then the Jacobian at each
    point and its eigenvalues (``jnp.linalg.eig``, which JAX computes on the CPU).

    Args:
        cell, params: as in :func:`jaxrnn.rnn`.
        x: ``[D]`` the constant input (the zero vector: the autonomous dynamics).
        h_inits: the starts: ``[N, S]`` flat states, or a carry pytree whose leaves have a
            leading ``N`` axis (e.g. states visited by :func:`jaxrnn.rnn`, ``hs.reshape(-1, H)``).
            A flat ``[N, S]`` for a carry with several leaves needs ``cell.initial_carry`` (for
            the carry's structure).
        tol: ``q`` below which a point has converged; ``None``: ``1e-12`` for float32 (or
            lower precision), ``1e-20`` for float64.
        slow_tol: ``q`` below which an unconverged point is a slow point.
        max_steps: Adam steps.
        learning_rate: Adam's step size.
        newton_steps: Newton steps after Adam (``0``: none).

    Returns:
        :class:`FixedPoints` with ``N`` rows; :meth:`FixedPoints.unique` merges duplicates.
    """
    where = "dynamics.fixed_points"
    x = _checks.floating(f"{where}: x", x)
    if x.ndim != 1:
        raise ValueError(
            f"{where}: x must be one input [D] (no batch axis); got shape {tuple(x.shape)}"
        )
    for name, value, lo in (("max_steps", max_steps, 0), ("newton_steps", newton_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{where}: {name} must be an int >= {lo}; got {value!r}")
    for name, value in (("slow_tol", slow_tol), ("learning_rate", learning_rate), ("tol", tol)):
        if name == "tol" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{where}: {name} must be a positive number; got {value!r}")

    flat, s_inits = _starts(where, cell, params, x, h_inits)
    _checks.step(
        where, cell, params, flat.unravel(s_inits[0]), x,
        f"while checking one step of {where} on x [D] = {list(x.shape)}",
    )  # fmt: skip
    dtype = s_inits.dtype
    if tol is None:
        tol = 1e-20 if jnp.finfo(dtype).bits >= 64 else 1e-12
    F = _step_fn(cell, params, flat)

    def q(s):
        r = F(s, x) - s
        return 0.5 * jnp.vdot(r, r).real

    opt = optax.adam(learning_rate)

    def solve(s):
        def adam(carry, _):
            s, state = carry
            g = jax.grad(q)(s)
            updates, state = opt.update(g, state, s)
            return (optax.apply_updates(s, updates), state), None

        (s, _), _ = jax.lax.scan(adam, (s, opt.init(s)), None, length=max_steps)

        def newton(s, _):
            r = F(s, x) - s
            A = jax.jacfwd(F)(s, x) - jnp.eye(s.shape[0], dtype=s.dtype)
            # the least-norm step: where dF/ds - I is singular (a continuum of fixed points, a
            # line attractor) it does not move the point along the continuum
            rcond = jnp.sqrt(jnp.finfo(s.dtype).eps)
            s_new = s - jnp.linalg.lstsq(A, r, rcond=rcond)[0]
            ok = jnp.all(jnp.isfinite(s_new)) & (q(s_new) < q(s))
            return jnp.where(ok, s_new, s), None

        s, _ = jax.lax.scan(newton, s, None, length=newton_steps)
        eig = jnp.linalg.eigvals(jax.jacfwd(F)(s, x))
        eig = eig[jnp.argsort(-jnp.abs(eig))]
        return s, q(s), eig

    points, residuals, eigenvalues = jax.vmap(solve)(s_inits)
    converged = residuals < tol
    slow = ~converged & (residuals < slow_tol)
    return FixedPoints(points, residuals, converged, slow, eigenvalues)


def _starts(where: str, cell: Cell, params: Any, x: Array, h_inits: Any) -> tuple[_Flat, Array]:
    """The flattening of one carry and the starts as flat states ``[N, S]``."""
    try:
        example = _checks.initial_carry(where, cell, params, None, ())
    except ValueError:  # no initial_carry: h_inits gives the carry's structure
        example = None
    plain = isinstance(h_inits, jax.Array | np.ndarray)
    if example is not None and plain:
        flat = _flat_spec(example)
        leaves = jax.tree.leaves(example)
        if len(leaves) == 1 and tuple(h_inits.shape[1:]) == tuple(jnp.shape(leaves[0])):
            h_inits = jax.tree.unflatten(jax.tree.structure(example), [h_inits])
        else:  # flat states [N, S]
            S = _size(flat)
            s = _checks.floating(f"{where}: h_inits", h_inits)
            if s.ndim != 2 or s.shape[1] != S or s.shape[0] < 1:
                raise ValueError(
                    f"{where}: h_inits must be flat states [N, S] with S = {S} (the carry's "
                    f"size) and N >= 1, or a carry with a leading N axis; got shape "
                    f"{tuple(s.shape)}"
                )
            return flat, s.astype(flat.real_dtype)
    leaves = jax.tree.leaves(h_inits)
    if example is not None and jax.tree.structure(h_inits) != jax.tree.structure(example):
        raise ValueError(
            f"{where}: h_inits must be [N, S] or a carry like {jax.tree.structure(example)} with "
            f"a leading N axis; got {jax.tree.structure(h_inits)}"
        )
    got = [tuple(jnp.shape(a)) for a in leaves]
    if not leaves or any(len(g) < 1 or g[0] != got[0][0] or g[0] < 1 for g in got):
        raise ValueError(
            f"{where}: every leaf of h_inits must have the same leading axis N >= 1 (one row a "
            f"start); got leaves of shapes {got}"
        )
    if example is not None:
        want = [tuple(jnp.shape(a)) for a in jax.tree.leaves(example)]
        if [g[1:] for g in got] != want:
            raise ValueError(
                f"{where}: h_inits must have leaves [N, *shape] with the carry's shapes {want}; "
                f"got leaves of shapes {got}"
            )
    for a in leaves:
        _checks.floating(f"{where}: h_inits", a)
    flat = _flat_spec(jax.tree.map(lambda a: jnp.asarray(a)[0], h_inits))
    return flat, jax.vmap(flat.ravel)(h_inits)


def _size(flat: _Flat) -> int:
    """``S``, the number of real entries of a flattened carry."""
    return sum(
        int(np.prod(shape)) * (2 if jnp.issubdtype(dtype, jnp.complexfloating) else 1)
        for shape, dtype in zip(flat.shapes, flat.dtypes, strict=True)
    )


def unflatten(cell: Cell, params: Any, s: Any) -> Any:
    """The carry of flat states ``s [..., S]`` (e.g. :attr:`FixedPoints.points`), for a cell
    with ``initial_carry``: leaves ``[..., *shape]``."""
    example = _checks.initial_carry("dynamics.unflatten", cell, params, None, ())
    flat = _flat_spec(example)
    s = jnp.asarray(s)
    lead = s.shape[:-1]
    out = jax.vmap(flat.unravel)(s.reshape(-1, s.shape[-1]))
    return jax.tree.map(lambda a: a.reshape(*lead, *a.shape[1:]), out)


# --- line attractors ---------------------------------------------------------------------------


class LineAttractor(NamedTuple):
    """How well a set of fixed points is described by a line (Maheswaranathan et al., "Reverse
    engineering recurrent networks for sentiment classification reveals line attractor
    dynamics", NeurIPS 2019).

    Attributes:
        center: ``[S]`` the points' mean.
        direction: ``[S]`` unit vector, the points' first principal component (oriented along
            the readout when one is given, else towards the largest coordinate).
        pc1_share: the share of the points' variance on ``direction``, in ``[0, 1]``.
        coordinates: ``[N]`` each point's position along the line, ``(s - center) . direction``.
        leading_modulus: ``[N]`` ``|λ_1|``, the largest eigenvalue modulus at each point (near 1:
            the integrating mode), or ``None`` without eigenvalues.
        second_modulus: ``[N]`` ``|λ_2|``, or ``None``.
        readout_cosine: cosine between the readout and ``direction`` (``>= 0``), or ``None``.
    """

    center: Array
    direction: Array
    pc1_share: Array
    coordinates: Array
    leading_modulus: Array | None
    second_modulus: Array | None
    readout_cosine: Array | None


def line_attractor_summary(
    points: Any, eigenvalues: Any = None, readout: Any = None
) -> LineAttractor:
    """Fits a line to fixed points and summarises their linearisation along it.

    Args:
        points: ``[N, S]`` (``N >= 2``), e.g. ``fixed_points(...).unique().points``.
        eigenvalues: ``[N, S']`` complex, by decreasing modulus (``FixedPoints.eigenvalues``);
            ``None``: no moduli.
        readout: ``[S]`` the vector the output reads the state with, in the flat state's
            layout (an LSTM readout of ``h`` is ``[w_h, 0]``); ``None``: no cosine.

    Returns:
        :class:`LineAttractor`.
    """
    where = "dynamics.line_attractor_summary"
    points = _checks.floating(f"{where}: points", points)
    if points.ndim != 2 or points.shape[0] < 2:
        raise ValueError(
            f"{where}: points must be [N, S] with N >= 2; got shape {tuple(points.shape)}"
        )
    N, S = points.shape
    center = points.mean(axis=0)
    _, sv, vt = jnp.linalg.svd(points - center, full_matrices=False)
    var = sv**2
    share = var[0] / jnp.maximum(var.sum(), jnp.finfo(points.dtype).tiny)
    direction = vt[0]
    cosine = None
    if readout is not None:
        readout = _checks.floating(f"{where}: readout", readout)
        if readout.shape != (S,):
            raise ValueError(
                f"{where}: readout must be [S] = [{S}] (the points' width); got shape "
                f"{tuple(readout.shape)}"
            )
        dot = readout @ direction
        direction = jnp.where(dot < 0, -direction, direction)
        cosine = jnp.abs(dot) / jnp.linalg.norm(readout)
    else:
        direction = direction * jnp.sign(direction[jnp.argmax(jnp.abs(direction))])
    lead = second = None
    if eigenvalues is not None:
        eigenvalues = jnp.asarray(eigenvalues)
        if eigenvalues.ndim != 2 or eigenvalues.shape[0] != N or eigenvalues.shape[1] < 2:
            raise ValueError(
                f"{where}: eigenvalues must be [N, S'] = [{N}, >= 2] (one row per point); got "
                f"shape {tuple(eigenvalues.shape)}"
            )
        moduli = -jnp.sort(-jnp.abs(eigenvalues), axis=1)
        lead, second = moduli[:, 0], moduli[:, 1]
    coords = (points - center) @ direction
    return LineAttractor(center, direction, share, coords, lead, second, cosine)


def input_projections(
    cell: Cell, params: Any, points: Any, inputs: Any, direction: Any, x0: Any = None
) -> Array:
    """The one-step effect of each input at each point, projected on a direction:
    ``(F(s_n, x_m) - F(s_n, x0)) . direction``.

    At a fixed point of ``x0`` (the zero vector by default) this is how far input ``x_m``
    pushes the state along the line: positive and negative words of a sentiment model push in
    opposite directions (Maheswaranathan et al. 2019).

    Args:
        cell, params: as in :func:`jaxrnn.rnn`; the cell needs ``initial_carry`` when its
            carry has several leaves.
        points: ``[N, S]`` flat states.
        inputs: ``[M, D]``, e.g. the embeddings of ``M`` words.
        direction: ``[S]`` (e.g. :attr:`LineAttractor.direction`).
        x0: ``[D]`` the reference input; ``None``: zeros.

    Returns:
        ``[M, N]``.
    """
    where = "dynamics.input_projections"
    inputs = _checks.floating(f"{where}: inputs", inputs)
    if inputs.ndim != 2:
        raise ValueError(f"{where}: inputs must be [M, D]; got shape {tuple(inputs.shape)}")
    x0 = jnp.zeros(inputs.shape[1:], inputs.dtype) if x0 is None else jnp.asarray(x0)
    if x0.shape != inputs.shape[1:]:
        raise ValueError(
            f"{where}: x0 must be [D] = {list(inputs.shape[1:])}; got shape {tuple(x0.shape)}"
        )
    flat, s = _starts(where, cell, params, x0, points)
    direction = _checks.floating(f"{where}: direction", direction)
    if direction.shape != (s.shape[1],):
        raise ValueError(
            f"{where}: direction must be [S] = [{s.shape[1]}]; got shape {tuple(direction.shape)}"
        )
    _checks.step(
        where, cell, params, flat.unravel(s[0]), x0,
        f"while checking one step of {where} on inputs [M, D] = {list(inputs.shape)}",
    )  # fmt: skip
    F = _step_fn(cell, params, flat)
    base = jax.vmap(lambda s: F(s, x0))(s)  # [N, S]
    moved = jax.vmap(lambda x: jax.vmap(lambda s: F(s, x))(s))(inputs)  # [M, N, S]
    return (moved - base[None]) @ direction


__all__ = [
    "FixedPoints",
    "LineAttractor",
    "carry_grad_norms",
    "fixed_points",
    "input_projections",
    "jacobian_product_norms",
    "line_attractor_summary",
    "lyapunov_spectrum",
    "visited_states",
    "step_jacobians",
    "unflatten",
]
