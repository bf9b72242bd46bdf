"""``parallel.linear_scan`` against NumPy loops, and ``parallel.rnn`` against the sequential ``rnn``.

float64 throughout (tests/conftest.py), so that the parallel results can be held to the
sequential scan at 1e-8 and the gradients (implicit differentiation at the solution) at
1e-6 relative; finite differences check both modes of differentiation.
"""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrnn import cells, parallel, rnn

B, T, D, H = 2, 12, 3, 4


def _rand(shape, seed, dtype=jnp.float64):
    k = jax.random.key(seed)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        k1, k2 = jax.random.split(k)
        return jax.lax.complex(jax.random.normal(k1, shape), jax.random.normal(k2, shape))
    return jax.random.normal(k, shape, dtype)


# --- linear_scan ---------------------------------------------------------------------------


def _loop(a, b, h0, reverse, lengths):
    """``h_t = a_t h_{t-1} + b_t`` one step at a time; ``a`` diagonal or dense; ``[B, T, H]``."""
    a, b, h = np.asarray(a), np.asarray(b), np.array(h0)
    dense = a.ndim == b.ndim + 1
    out = np.zeros_like(b)
    for i in range(b.shape[0]):
        L = b.shape[1] if lengths is None else int(lengths[i])
        order = range(L - 1, -1, -1) if reverse else range(L)
        hi = h[i].copy()
        for t in order:
            hi = (a[i, t] @ hi if dense else a[i, t] * hi) + b[i, t]
            out[i, t] = hi
        for t in range(L, b.shape[1]):  # past the length the state is held
            out[i, t] = hi if not reverse else h[i]
    return out


def _loop_grid():
    """Every layout x dtype x direction x batching; the default suite runs two opposite corners
    (each value once), the rest is slow."""
    for dense in (False, True):
        for dtype in (jnp.float64, jnp.complex128):
            for reverse in (False, True):
                for batched in (True, False):
                    corner = (dense, dtype == jnp.complex128, reverse, batched) in {
                        (True, True, True, True),
                        (False, False, False, False),
                    }
                    yield pytest.param(
                        dense, dtype, reverse, batched, marks=() if corner else pytest.mark.slow
                    )


@pytest.mark.parametrize(("dense", "dtype", "reverse", "batched"), list(_loop_grid()))
def test_linear_scan_equals_loop(dense, dtype, reverse, batched):
    shape_b = (3, 7, 4)
    a = _rand((*shape_b, 4) if dense else shape_b, 0, dtype) * (0.4 if dense else 0.9)
    b, h0 = _rand(shape_b, 1, dtype), _rand((3, 4), 2, dtype)
    lengths = np.array([7, 3, 0])
    cases = [(None, None), (h0, None), (h0, lengths)] if batched else [(None, None), (h0, None)]
    for h, L in cases:
        want = _loop(a, b, np.zeros((3, 4), dtype) if h is None else h, reverse, L)
        if batched:
            got = parallel.linear_scan(a, b, h, reverse=reverse, lengths=L)
        else:
            got = jnp.stack(
                [
                    parallel.linear_scan(a[i], b[i], None if h is None else h[i], reverse=reverse)
                    for i in range(3)
                ]
            )
        assert got.shape == b.shape and got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("dense", "reverse", "order"),
    [
        (False, True, 1),
        pytest.param(True, True, 1, marks=pytest.mark.slow),
        pytest.param(False, False, 2, marks=pytest.mark.slow),
        pytest.param(False, True, 2, marks=pytest.mark.slow),
        pytest.param(True, False, 2, marks=pytest.mark.slow),
        pytest.param(True, True, 2, marks=pytest.mark.slow),
    ],
)
def test_linear_scan_check_grads(dense, reverse, order):
    """Reverse and forward mode (its rule: one reversed scan; a JVP that is a scan) vs finite differences."""
    a = _rand((2, 6, 3, 3) if dense else (2, 6, 3), 0) * 0.5
    b, h0 = _rand((2, 6, 3), 1), _rand((2, 3), 2)

    def f(a, b, h0):
        return jnp.sum(
            jnp.sin(parallel.linear_scan(a, b, h0, reverse=reverse, lengths=np.array([6, 4])))
        )

    f = jax.jit(f)  # compiled once per derivative, not run op by op
    check_grads(f, (a, b, h0), order=1, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6)
    if order == 2:  # second differences lose more digits
        check_grads(f, (a, b, h0), order=2, modes=["rev", "fwd"], atol=1e-5, rtol=1e-5)


def test_linear_scan_complex_gradients_equal_the_loop():
    a, b, h0 = (
        _rand((2, 6, 3), 0, jnp.complex128) * 0.7,
        _rand((2, 6, 3), 1, jnp.complex128),
        _rand((2, 3), 2, jnp.complex128),
    )

    def seq(a, b, h0):
        def step(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        return jax.lax.scan(step, h0, (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))[1].swapaxes(
            0, 1
        )

    def loss(fn):
        return lambda a, b, h0: jnp.sum(jnp.abs(fn(a, b, h0)) ** 2)

    g = jax.grad(loss(parallel.linear_scan), (0, 1, 2))(a, b, h0)
    g_ref = jax.grad(loss(seq), (0, 1, 2))(a, b, h0)
    for x, y in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_log_linear_scan_equals_loop_and_differentiates(reverse):
    a = jax.nn.sigmoid(_rand((3, 7, 4), 0))
    b = jnp.exp(_rand((3, 7, 4), 1))
    h0 = _rand((3, 4), 2)  # any sign
    lengths = np.array([7, 3, 0])
    got = parallel.log_linear_scan(jnp.log(a), jnp.log(b), h0, reverse=reverse, lengths=lengths)
    np.testing.assert_allclose(got, _loop(a, b, h0, reverse, lengths), rtol=1e-12, atol=1e-12)

    def f(la, lb, h0):
        return jnp.sum(
            jnp.sin(parallel.log_linear_scan(la, lb, h0, reverse=reverse, lengths=lengths))
        )

    # central differences through exp(sin(.)) lose digits: 1e-5 (jax.grad agrees with
    # differences at eps 1e-6 to 1e-9)
    args = (jnp.log(a), jnp.log(b), h0)
    check_grads(jax.jit(f), args, order=1, modes=["rev", "fwd"], atol=1e-5, rtol=1e-5)


def test_linear_scan_bad_input_names_expected_and_received():
    b = jnp.zeros((2, 5, 3))
    with pytest.raises(
        ValueError,
        match=r"a must have b's shape \[2, 5, 3\] \(diagonal\) or \[2, 5, 3, 3\] \(dense\); got shape \[2, 5, 4\]",
    ):
        parallel.linear_scan(jnp.zeros((2, 5, 4)), b)
    with pytest.raises(TypeError, match="a must have a floating or complex dtype; got int32"):
        parallel.linear_scan(jnp.zeros((2, 5, 3), jnp.int32), b)
    with pytest.raises(
        ValueError, match=r"b must be \[B, T, H\] or \[T, H\] \(rank >= 2\); got shape \[5\]"
    ):
        parallel.linear_scan(jnp.zeros(5), jnp.zeros(5))
    with pytest.raises(ValueError, match=r"h0 must have shape \[2, 3\] .*; got shape \[3\]"):
        parallel.linear_scan(b, b, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"lengths must have shape \[2\] .*; got shape \[3\]"):
        parallel.linear_scan(b, b, lengths=np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths must have an integer dtype; got float64"):
        parallel.linear_scan(b, b, lengths=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]; got values in \[1, 9\]"):
        parallel.linear_scan(b, b, lengths=np.array([1, 9]))
    with pytest.raises(
        ValueError, match=r"share one shape .*got shapes \[2, 5, 3\] and \[2, 5, 4\]"
    ):
        parallel.log_linear_scan(b, jnp.zeros((2, 5, 4)))


# --- the ELK step: a Kalman smoother equal to the damped least-squares step ----------------


@pytest.mark.parametrize("diagonal", [False, True], ids=["elk", "quasi_elk"])
def test_elk_step_is_the_damped_least_squares_step(diagonal):
    """``argmin Σ |δ_t - J_t δ_{t-1} - u_t|^2 + λ Σ |δ_t|^2`` solved densely, against the smoother;
    steps that are not alive are exact copies ``δ_t = δ_{t-1} + u_t`` without observation."""
    n_t, n, lam = 7, 3, 0.3
    rng = np.random.default_rng(0)
    J = rng.normal(size=(n_t, n, n)) * 0.8
    if diagonal:
        J = J * np.eye(n)
    u = rng.normal(size=(n_t, n))
    alive = np.array([True, True, True, False, True, False, False])
    J[~alive] = np.eye(n)
    rows, rhs = [], []
    for t in range(n_t):
        w = 1.0 if alive[t] else 1e7  # a copy is a hard constraint
        r = np.zeros((n, n_t * n))
        r[:, t * n : (t + 1) * n] = np.eye(n) * w
        if t:
            r[:, (t - 1) * n : t * n] = -J[t] * w
        rows.append(r)
        rhs.append(u[t] * w)
        if alive[t]:
            o = np.zeros((n, n_t * n))
            o[:, t * n : (t + 1) * n] = np.sqrt(lam) * np.eye(n)
            rows.append(o)
            rhs.append(np.zeros(n))
    want = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0].reshape(n_t, n)
    Jj = jnp.asarray(np.diagonal(J, axis1=1, axis2=2) if diagonal else J)[:, None]  # [T, 1, ...]
    got = jax.jit(parallel._kalman_mean, static_argnums=(3, 4))(
        Jj, jnp.asarray(u)[:, None], jnp.asarray(alive)[:, None], lam, diagonal
    )
    np.testing.assert_allclose(np.asarray(got[:, 0]), want, rtol=1e-6, atol=1e-6)


# --- parallel.rnn against rnn --------------------------------------------------------------


def _user_cell(params, carry, x):
    """A cell written by a user: a dict carry, a slow trace of the fast state."""
    W, U = params
    h = jnp.tanh(x @ W + carry["h"] @ U)
    m = 0.8 * carry["m"] + 0.2 * h * carry["h"]
    return {"h": h, "m": m}, h + m


_user_cell.initial_carry = lambda params, batch_shape: {  # type: ignore[attr-defined]
    "h": jnp.zeros((*batch_shape, H), params[0].dtype),
    "m": jnp.zeros((*batch_shape, H), params[0].dtype),
}


def _case(name):
    """``(cell, params)`` in float64 for a cell name (with options after a colon)."""
    key = jax.random.key(0)
    if name == "user":
        return _user_cell, (_rand((D, H), 3) * 0.6, _rand((H, H), 4) * 0.4)
    base, _, option = name.partition(":")
    kw = {}
    if base == "simple":
        kw["activation"] = option
    elif base == "gru":
        kw["reset_after"] = option == "reset_after"
    elif base == "lru":
        kw["r_min"] = 0.5
    p = cells.get(base).init(key, D, H, dtype=jnp.float64, **kw)
    if hasattr(p, "b") and p.b is not None:  # random biases: zero ones hide a miswired gate
        p = dataclasses.replace(p, b=_rand(p.b.shape, 5) * 0.3)
    return cells.get(base).cell, p


CELLS = [
    "simple:tanh",
    "simple:relu",
    "lstm",
    "gru:reset_after",
    "gru:reset_before",
    "lru",
    "mingru",
    "minlstm",
    "user",
]
OPTIONS = [  # (batched, use_lengths, reverse, with_h0)
    (True, True, True, True),
    (True, False, False, False),
    (False, True, False, True),
    (True, True, False, False),
    (False, False, True, False),
    (True, False, True, True),
]


# The default suite: a tuple carry with every option on under Newton, and a user's dict carry,
# unbatched, under quasi-Newton. The slow tier covers every pair: each cell under each method
# with two option sets, chosen so that each cell and each method meets all six option sets (the
# options are handled by `parallel.rnn` itself, apart from the cell, so pairs are what can break).
DEFAULT = {("lstm", "newton", 0), ("user", "quasi", 2)}


def _grid():
    """Every cell x method, each with two option sets; slow unless in ``DEFAULT``."""
    for i, name in enumerate(CELLS):
        for m, method in enumerate(parallel.METHODS):
            picked = {(i + m) % len(OPTIONS), (i + m + 3) % len(OPTIONS)}
            picked |= {k for c, meth, k in DEFAULT if (c, meth) == (name, method)}
            for k in sorted(picked):
                default = (name, method, k) in DEFAULT
                yield pytest.param(
                    name, method, *OPTIONS[k], marks=() if default else (pytest.mark.slow,)
                )


def _inputs(cell, params, batched, use_lengths, with_h0):
    xs = _rand((B, T, D) if batched else (T, D), 1)
    lengths = (np.array([T, 5]) if batched else np.array(7)) if use_lengths else None
    h0 = None
    if with_h0:  # random leaves in the structure and dtypes of the cell's zero carry
        zero = cell.initial_carry(params, (B,) if batched else ())
        leaves = [
            (0.5 * _rand(z.shape, 10 + i, z.dtype)).astype(z.dtype)
            for i, z in enumerate(jax.tree.leaves(zero))
        ]
        h0 = jax.tree.unflatten(jax.tree.structure(zero), leaves)
    return xs, lengths, h0


def _max_dev(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize(
    ("name", "method", "batched", "use_lengths", "reverse", "with_h0"), list(_grid())
)
def test_parallel_rnn_equals_rnn(name, method, batched, use_lengths, reverse, with_h0):
    """Outputs and final carry to 1e-8, gradients w.r.t. params, xs and h0 to 1e-6 relative."""
    cell, params = _case(name)
    xs, lengths, h0 = _inputs(cell, params, batched, use_lengths, with_h0)
    kw = dict(lengths=lengths, reverse=reverse)
    h0_ = h0 if h0 is not None else cell.initial_carry(params, (B,) if batched else ())

    def loss(run):
        def f(params, xs, h0):
            c, y = run(cell, params, xs, h0, **kw)[:2]
            return jnp.sum(jnp.sin(y)) + sum(
                jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(c)
            )

        return f

    @jax.jit  # one compilation per side; eager dispatch of the solver is slower than compiling
    def run_both(params, xs, h0_):
        par = functools.partial(parallel.rnn, method=method)
        out = par(cell, params, xs, h0, return_info=True, **kw)  # h0 None: cell.initial_carry
        seq = functools.partial(rnn, backend="scan")  # step by step, for the linear cells too
        ref = seq(cell, params, xs, h0, **kw)
        grads = [jax.grad(loss(fn), (0, 1, 2))(params, xs, h0_) for fn in (par, seq)]
        return out, ref, grads

    (carry, ys, info), ref, (g, g_ref) = run_both(params, xs, h0_)
    assert jax.tree.structure((carry, ys)) == jax.tree.structure(ref)
    assert _max_dev((carry, ys), ref) < 1e-8
    assert bool(info.converged) and bool(info.finite) and not bool(info.fell_back)
    # Newton and quasi-Newton are exact after T iterations; damped (ELK) steps have no such bound
    assert 1 <= int(info.iterations) <= (T if method in ("newton", "quasi") else max(T, 100))
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(y)) + 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_parallel_rnn_check_grads_both_modes(order):
    """Finite differences against the implicit derivatives, reverse and forward mode."""
    cell, params = _case("gru:reset_after")
    xs = _rand((2, 6, D), 1)

    @jax.jit
    def f(params, xs):
        c, ys = parallel.rnn(cell, params, xs, lengths=np.array([6, 4]))
        return jnp.sum(ys**2) + jnp.sum(c)

    tol = 1e-6 if order == 1 else 1e-5
    check_grads(f, (params, xs), order=order, modes=["rev", "fwd"], atol=tol, rtol=tol)


@pytest.mark.slow
def test_hessian_and_jacfwd_equal_the_sequential_scan():
    cell, params = _case("simple:tanh")
    xs = _rand((5, D), 1)

    @jax.jit
    def both(params, xs):
        def f(run):
            return lambda xs: jnp.sum(run(cell, params, xs)[1] ** 2)

        def jac(run):
            return jax.jacfwd(lambda p: run(cell, p, xs)[1])(params)

        return [(jax.hessian(f(run))(xs), jac(run)) for run in (parallel.rnn, rnn)]

    got, want = both(params, xs)
    assert _max_dev(got, want) < 1e-10


def test_backward_is_one_reversed_linear_scan():
    """grad differentiates no Newton iteration: its one loop is the forward solve's, and past
    the one linear solve inside that loop there is one more, the transposed tangent recurrence."""
    cell, params = _case("lstm")
    xs = _rand((B, T, D), 1)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(parallel.rnn(cell, p, xs)[1])))(params))
    assert jaxpr.count("while[") == 1
    assert jaxpr.count("custom_linear_solve") == 2


def test_jit_vmap_and_no_recompile():
    cell, params = _case("simple:tanh")
    xs = _rand((B, T, D), 1)
    traces = []

    @jax.jit
    def f(params, xs, lengths):
        traces.append(1)
        return parallel.rnn(cell, params, xs, lengths=lengths, method="quasi", return_info=True)

    c1, y1, info = f(params, xs, jnp.array([T, 3]))
    f(params, 2 * xs, jnp.array([1, 2]))
    assert len(traces) == 1 and bool(info.converged)
    assert _max_dev((c1, y1), rnn(cell, params, xs, lengths=jnp.array([T, 3]))) < 1e-8
    cv, yv = jax.vmap(lambda x: parallel.rnn(cell, params, x))(xs)  # per example, unbatched
    assert _max_dev((cv, yv), rnn(cell, params, xs)) < 1e-8


@pytest.mark.slow
def test_time_major_layout():
    cell, params = _case("gru:reset_after")
    xs = _rand((B, T, D), 1)
    c, ys = parallel.rnn(cell, params, jnp.swapaxes(xs, 0, 1), time_major=True)
    c_ref, ys_ref = rnn(cell, params, xs)
    assert _max_dev((c, jnp.swapaxes(ys, 0, 1)), (c_ref, ys_ref)) < 1e-8


# --- never silently wrong ------------------------------------------------------------------


def test_unconverged_warns_with_the_residual_and_can_fall_back():
    cell, params = _case("lstm")
    xs = _rand((B, T, D), 1)
    ref = rnn(cell, params, xs)
    with pytest.warns(
        parallel.NotConvergedWarning,
        match=r"residual \d\.\d+e?-?\d* > tol 1e-11 after 1 iterations",
    ):
        c, ys, info = parallel.rnn(cell, params, xs, max_iters=1, return_info=True)
    assert not bool(info.converged) and int(info.iterations) == 1 and float(info.residual) > 1e-11
    assert _max_dev((c, ys), ref) > 1e-6  # one Newton step is not the answer, and says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback's exact result needs no warning
        c, ys, info = parallel.rnn(cell, params, xs, max_iters=1, fallback=True, return_info=True)
        assert bool(info.fell_back) and not bool(info.converged)
        assert _max_dev((c, ys), ref) < 1e-12
        # under jit the values are not known when it traces: no warning, the info tells
        info = jax.jit(lambda xs: parallel.rnn(cell, params, xs, max_iters=1, return_info=True)[2])(
            xs
        )
        assert not bool(info.converged)


def _unstable(p, h, x):
    """``tanh(p h + x)`` with ``p = 3``: bistable; Newton's products of ``J ~ 3`` overflow."""
    h = jnp.tanh(p * h + x)
    return h, h


_unstable.initial_carry = lambda p, bs: jnp.zeros((*bs, 4), jnp.float32)  # type: ignore[attr-defined]


def test_non_finite_newton_iterate_is_caught_and_falls_back():
    xs = 0.1 * jax.random.normal(jax.random.key(0), (300, 4), jnp.float32)
    p = jnp.float32(3.0)
    ref = rnn(_unstable, p, xs)
    with pytest.warns(parallel.NotConvergedWarning, match="non-finite iterate"):
        c, ys, info = parallel.rnn(_unstable, p, xs, return_info=True)
    assert not bool(info.finite) and not bool(info.converged)
    assert bool(jnp.all(jnp.isfinite(ys)))  # the last finite iterate, not NaNs
    c, ys, info = parallel.rnn(_unstable, p, xs, fallback=True, return_info=True)
    assert bool(info.fell_back)
    np.testing.assert_allclose(ys, ref[1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_elk_converges_where_newton_overflows():
    """A tanh RNN with an expanding recurrent matrix (2x orthogonal), float32, T = 1,000: long
    enough that Newton's first step overflows (at T = 300 it still converges)."""
    p = cells.simple.init(jax.random.key(0), 4, 8)
    p = dataclasses.replace(p, W_h=2 * p.W_h)
    xs = jax.random.normal(jax.random.key(1), (1000, 4), jnp.float32)
    with pytest.warns(parallel.NotConvergedWarning, match="non-finite"):
        parallel.rnn(cells.simple.cell, p, xs)
    _, ys, info = parallel.rnn(cells.simple.cell, p, xs, method="elk", return_info=True)
    assert bool(info.converged) and bool(info.finite)
    np.testing.assert_allclose(ys, rnn(cells.simple.cell, p, xs)[1], atol=1e-3)


def test_bad_input_names_expected_and_received():
    cell, params = _case("gru:reset_after")
    xs = _rand((B, T, D), 1)
    cases = [
        (
            dict(method="deer"),
            ValueError,
            r"method must be one of \['newton', 'quasi', 'elk', 'quasi_elk'\]; got 'deer'",
        ),
        (dict(max_iters=0), ValueError, "max_iters must be a positive int or None; got 0"),
        (dict(tol=-1.0), ValueError, "tol must be a positive number; got -1.0"),
        (dict(damping=0), ValueError, "damping must be a positive number; got 0"),
        (dict(reverse=1), TypeError, "reverse must be a bool; got 1"),
        (
            dict(lengths=np.array([1, 2, 3])),
            ValueError,
            r"lengths must have shape \[2\] .*got shape \[3\]",
        ),
        (
            dict(lengths=np.array([1, 99])),
            ValueError,
            r"lengths must lie in \[0, T=12\]; got values in \[1, 99\]",
        ),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            parallel.rnn(cell, params, xs, **kw)
    with pytest.raises(TypeError, match="floating dtype .*got int32"):
        parallel.rnn(cell, params, jnp.zeros((B, T, D), jnp.int32))
    with pytest.raises(
        ValueError, match=r"\[B, T, D\] \(batched\) or \[T, D\] \(unbatched\); got rank 4"
    ):
        parallel.rnn(cell, params, jnp.zeros((1, B, T, D)))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 3\].*got shape \(2, 5\)"):
        parallel.rnn(cell, params, jnp.zeros((B, T, 5)))
    with pytest.raises(ValueError, match=r"carry h must have shape \[2, 4\].*got shape \(2, 6\)"):
        parallel.rnn(cell, params, xs, jnp.zeros((B, 6)))
