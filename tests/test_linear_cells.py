"""The linear cells (LRU, minGRU, minLSTM): the papers' equations, and ``scan`` equal to ``rnn``.

Every cell's step is checked against a NumPy loop written from its paper; every ``scan``
(all steps at once, on ``parallel.linear_scan``) against ``rnn(cells.X.cell, ...)``, the
step-by-step reference, in float64: values, carries and gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import raises_naming
from jax.test_util import check_grads

from jaxrnn import BiParams, Embedded, backends, bidirectional, cells, rnn, stack

B, T, D, H, N = 3, 9, 4, 5, 6
LINEAR = ["lru", "mingru", "minlstm"]
LENGTHS = np.array([T, 4, 0])


def _params(name, input_size=D, hidden=H):
    key = jax.random.key(0)
    if name == "lru":  # a ring that keeps |λ| away from 0 so every step matters
        return cells.lru.init(key, input_size, hidden, state_size=N, r_min=0.4, dtype=jnp.float64)
    # random biases: zero ones would hide a bias wired to the wrong gate
    bias = functools.partial(jax.random.normal, dtype=jnp.float64)
    return cells.get(name).init(
        key, input_size, hidden, bias_initializer=lambda k, s, d: bias(k, s), dtype=jnp.float64
    )


def _xs(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def _h0(name, p, batch_shape, seed=2):
    """A non-zero initial carry of the cell's structure."""
    zero = cells.get(name).initial_carry(p, batch_shape)
    keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(zero)))
    leaves = [
        jax.random.normal(k, leaf.shape, jnp.float64).astype(leaf.dtype) * (1 + 0.5j)
        if jnp.iscomplexobj(leaf)
        else jax.random.normal(k, leaf.shape, jnp.float64)
        for k, leaf in zip(keys, jax.tree.leaves(zero), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(zero), leaves)


def _close(a, b, tol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# --- the papers' equations, as NumPy loops ------------------------------------------------


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _g(v):  # Feng et al. (2024), appendix B
    return np.where(v >= 0, v + 0.5, _sigmoid(v))


def _mingru_loop(p, xs, h):
    W_z, b_z, W_h, b_h = (np.asarray(a) for a in (p.W_z, p.b_z, p.W_h, p.b_h))
    ys = []
    for x in xs:  # xs [T, D]
        z = _sigmoid(x @ W_z + b_z)
        h = (1 - z) * h + z * _g(x @ W_h + b_h)
        ys.append(h)
    return h, np.stack(ys)


def _minlstm_loop(p, xs, h):
    P = {k: np.asarray(getattr(p, k)) for k in ("W_f", "b_f", "W_i", "b_i", "W_h", "b_h")}
    ys = []
    for x in xs:
        f, i = _sigmoid(x @ P["W_f"] + P["b_f"]), _sigmoid(x @ P["W_i"] + P["b_i"])
        h = f / (f + i) * h + i / (f + i) * _g(x @ P["W_h"] + P["b_h"])
        ys.append(h)
    return h, np.stack(ys)


def _lru_loop(p, xs, h):
    """Orvieto et al. (2023), appendix A's forward pass, one step at a time."""
    Lambda = np.exp(-np.exp(np.asarray(p.nu_log)) + 1j * np.exp(np.asarray(p.theta_log)))
    B_norm = (np.asarray(p.B_re) + 1j * np.asarray(p.B_im)) * np.exp(np.asarray(p.gamma_log))
    C = np.asarray(p.C_re) + 1j * np.asarray(p.C_im)  # [N, H]
    Dm = np.asarray(p.D)
    ys = []
    if p.W_e is not None:  # the optional bilinear encoder
        P = {k: np.asarray(getattr(p, k)) for k in ("W_e", "b_e", "W_g", "b_g")}
        xs = (xs @ P["W_e"] + P["b_e"]) * (xs @ P["W_g"] + P["b_g"])
    for x in xs:
        h = Lambda * h + x @ B_norm
        ys.append((h @ C).real + (Dm * x if Dm.ndim == 1 else x @ Dm))
    return h, np.stack(ys)


LOOPS = {"mingru": _mingru_loop, "minlstm": _minlstm_loop, "lru": _lru_loop}


@pytest.mark.parametrize("name", LINEAR)
def test_cell_equals_the_papers_equations(name):
    p = _params(name)
    xs = _xs((T, D))
    h0 = _h0(name, p, ())
    carry, ys = rnn(cells.get(name).cell, p, xs, h0)  # the cell, step by step
    h_state = h0.h if name == "lru" else h0
    h_ref, ys_ref = LOOPS[name](p, np.asarray(xs), np.asarray(h_state))
    np.testing.assert_allclose(np.asarray(ys), ys_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(carry.h if name == "lru" else carry), h_ref, atol=1e-12)
    if name == "lru":
        np.testing.assert_allclose(np.asarray(carry.y), ys_ref[-1], atol=1e-12)


@pytest.mark.parametrize("encoder_size", [7, pytest.param(None, marks=pytest.mark.slow)])
def test_lru_dense_skip_and_encoder(encoder_size):
    """Two input features (the adding problem's): a dense skip; with an encoder, 7 features."""
    p = cells.lru.init(
        jax.random.key(0), 2, H, state_size=N, encoder_size=encoder_size, dtype=jnp.float64
    )
    assert p.D.shape == (encoder_size or 2, H) and p.input_size == 2
    xs = _xs((B, T, 2))
    out, ref = jax.jit(  # one program: compiling it beats dispatching the scan op by op
        lambda p, xs: (
            cells.lru.scan(p, xs, lengths=LENGTHS),
            rnn(cells.lru.cell, p, xs, lengths=LENGTHS, backend="scan"),
        )
    )(p, xs)
    _close(out, ref)
    _, ys_ref = _lru_loop(p, np.asarray(xs[0]), np.zeros(N, complex))
    np.testing.assert_allclose(np.asarray(out[1][0]), ys_ref, atol=1e-12)


def test_lru_ring_initialisation():
    r_min, r_max, max_phase = 0.9, 0.999, np.pi / 10
    p = cells.lru.init(
        jax.random.key(3),
        8,
        8,
        state_size=512,
        r_min=r_min,
        r_max=r_max,
        max_phase=max_phase,
        dtype=jnp.float64,
    )
    lam = np.asarray(cells.lru.eigenvalues(p))
    mod, phase = np.abs(lam), np.angle(lam)
    assert mod.min() >= r_min - 1e-6 and mod.max() <= r_max + 1e-6
    assert phase.min() >= 0 and phase.max() <= max_phase + 1e-6
    # |λ|^2 uniform on [r_min^2, r_max^2]: its mean is the middle, within 4 standard errors
    width = r_max**2 - r_min**2
    assert abs(np.mean(mod**2) - (r_min**2 + r_max**2) / 2) < 4 * width / np.sqrt(12 * mod.size)
    np.testing.assert_allclose(np.exp(np.asarray(p.gamma_log)), np.sqrt(1 - mod**2), rtol=1e-12)


def test_g_is_continuous_positive_and_matches_its_log():
    v = jnp.linspace(-30.0, 30.0, 2001, dtype=jnp.float64)
    gv = cells.mingru.g(v)
    assert bool((gv > 0).all())
    np.testing.assert_allclose(cells.mingru.g(jnp.array([-1e-12, 0.0])), [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(cells.mingru.log_g(v), np.log(np.asarray(gv)), rtol=1e-12)


# --- scan against rnn ----------------------------------------------------------------------


def _scan_cases():
    for name in LINEAR:
        for log_space in [False, True] if name != "lru" else [False]:
            yield name, log_space


def _scan_grid():
    """Every cell and option; the default suite runs the corner with every option on (reverse,
    lengths, batched) for each cell and the other corner for one scan, the rest is slow."""
    for name, log_space in _scan_cases():
        for reverse in (False, True):
            for use_lengths in (False, True):
                for batched in (True, False):
                    corner = (reverse, use_lengths, batched) == (True, True, True) or (
                        (name, log_space, reverse, use_lengths, batched)
                        == ("mingru", True, False, False, False)
                    )
                    marks = () if corner else (pytest.mark.slow,)
                    yield pytest.param(name, log_space, reverse, use_lengths, batched, marks=marks)


@pytest.mark.parametrize(
    ("name", "log_space", "reverse", "use_lengths", "batched"), list(_scan_grid())
)
def test_scan_equals_rnn(name, log_space, reverse, use_lengths, batched):
    p = _params(name)
    mod = cells.get(name)
    xs = _xs((B, T, D)) if batched else _xs((T, D))
    h0 = _h0(name, p, (B,) if batched else ())
    lengths = (LENGTHS if batched else np.array(5)) if use_lengths else None
    scan = functools.partial(
        mod.scan, reverse=reverse, **({"log_space": True} if log_space else {})
    )
    run = functools.partial(rnn, mod.cell, reverse=reverse, backend="scan")  # step by step

    @jax.jit  # one program: compiling it beats dispatching the scans op by op
    def both(p, xs, h0, lengths):
        zero = scan(p, xs, lengths=lengths), run(p, xs, lengths=lengths)  # h0=None: zeros
        return (scan(p, xs, h0, lengths=lengths), run(p, xs, h0, lengths=lengths)), zero

    (out, ref), (zero, zero_ref) = both(p, xs, h0, lengths)
    _close(out, ref)
    _close(zero, zero_ref)


@pytest.mark.parametrize(
    ("name", "log_space"),
    [
        case if case == ("lru", False) else pytest.param(*case, marks=pytest.mark.slow)
        for case in _scan_cases()
    ],
)
def test_scan_gradients_equal_rnn(name, log_space):
    """Gradients w.r.t. params, xs and h0 through scan equal BPTT through rnn (float64)."""
    p = _params(name)
    mod = cells.get(name)
    xs = _xs((B, T, D))
    h0 = _h0(name, p, (B,))
    kw = {"log_space": True} if log_space else {}

    def loss(run):
        def f(p, xs, h0):
            carry, ys = run(p, xs, h0)
            return jnp.sum(jnp.sin(ys)) + sum(
                jnp.sum(jnp.abs(c) ** 2) for c in jax.tree.leaves(carry)
            )

        return f

    @jax.jit  # one program for both directions and both sides
    def grads(p, xs, h0):
        out = []
        for reverse in (False, True):
            lengths = LENGTHS if reverse else None
            for run in (
                functools.partial(mod.scan, lengths=lengths, reverse=reverse, **kw),
                functools.partial(rnn, mod.cell, lengths=lengths, reverse=reverse, backend="scan"),
            ):
                out.append(jax.grad(loss(run), (0, 1, 2))(p, xs, h0))
        return out

    g_fw, g_fw_ref, g_bw, g_bw_ref = grads(p, xs, h0)
    _close(g_fw, g_fw_ref, tol=1e-10)
    _close(g_bw, g_bw_ref, tol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("order", [1, 2])
def test_scan_check_grads_forward_and_reverse(name, order):
    """Finite differences against forward- and reverse-mode derivatives of scan (float64)."""
    p = _params(name)
    mod = cells.get(name)
    xs = _xs((2, 5, D))

    def f(p, xs):
        carry, ys = mod.scan(p, xs, lengths=np.array([5, 3]))
        return jnp.sum(ys**3) + jnp.sum(jnp.abs(jax.tree.leaves(carry)[-1]))

    tol = 1e-6 if order == 1 else 1e-5  # second differences lose more digits
    check_grads(f, (p, xs), order=order, modes=["rev", "fwd"], atol=tol, rtol=tol)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_long_sequences_in_float32_stay_accurate(name):
    """T = 32768 in float32: both scans as close to the float64 result as the step-by-step loop."""
    mod = cells.get(name)
    p32 = mod.init(jax.random.key(0), 8, 16)
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), p32)
    xs = jax.random.normal(jax.random.key(1), (32768, 8), jnp.float32)
    ref = np.asarray(jax.jit(mod.scan)(p64, xs.astype(jnp.float64))[1])
    for log_space in (False, True):
        ys = np.asarray(jax.jit(functools.partial(mod.scan, log_space=log_space))(p32, xs)[1])
        assert ys.dtype == np.float32
        assert np.max(np.abs(ys - ref)) < 5e-6, log_space


# --- the cells in jaxrnn's other machinery -------------------------------------------------


@pytest.mark.parametrize(
    "name", [n if n == "mingru" else pytest.param(n, marks=pytest.mark.slow) for n in LINEAR]
)
def test_jit_vmap_and_no_recompile(name):
    p = _params(name)
    mod = cells.get(name)
    xs = _xs((B, T, D))
    traces = []

    @jax.jit
    def f(p, xs, lengths):
        traces.append(1)
        return mod.scan(p, xs, lengths=lengths, reverse=True)

    out = f(p, xs, jnp.asarray(LENGTHS))
    f(p, xs * 2, jnp.array([1, 2, 3]))
    assert len(traces) == 1
    _close(out, mod.scan(p, xs, lengths=LENGTHS, reverse=True))
    v = jax.vmap(lambda x, L: mod.scan(p, x, lengths=L, reverse=True))(xs, jnp.asarray(LENGTHS))
    _close(v, out)


@pytest.mark.parametrize(
    "name", [n if n == "lru" else pytest.param(n, marks=pytest.mark.slow) for n in LINEAR]
)
def test_stack_and_bidirectional_run_the_cells(name):
    mod = cells.get(name)
    p1, p2 = _params(name), _params(name, input_size=H)
    xs = _xs((B, T, D))
    # two stacked layers are the second layer run on the first one's outputs
    _, ys = stack(mod.cell, [p1, p2], xs, lengths=LENGTHS, backend="scan")
    _, ys1 = mod.scan(p1, xs, lengths=LENGTHS)
    _, ys2 = mod.scan(p2, ys1, lengths=LENGTHS)
    _close(ys, ys2)
    y = bidirectional(
        mod.cell, BiParams(p1, p1), xs, lengths=LENGTHS, return_sequences=True, backend="scan"
    )
    _, y_bw = mod.scan(p1, xs, lengths=LENGTHS, reverse=True)
    _close(y[..., H:], y_bw)


@pytest.mark.parametrize(
    "name", [n if n == "minlstm" else pytest.param(n, marks=pytest.mark.slow) for n in LINEAR]
)
def test_one_training_step_changes_every_leaf(name):
    """A regression step on the cell's final output moves every parameter."""
    p = _params(name)
    mod = cells.get(name)
    xs = _xs((B, T, D))
    target = jnp.ones((B, H))

    def loss(p):
        carry, ys = mod.scan(p, xs)
        return jnp.mean((ys[:, -1] - target) ** 2)

    opt = optax.adam(1e-2)
    grads = jax.grad(loss)(p)
    updates, _ = opt.update(grads, opt.init(p))
    new = optax.apply_updates(p, updates)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(new), strict=True):
        assert np.all(np.asarray(a) != np.asarray(b))


def _loops(fn, *args) -> int:
    """How many loops over time (``scan`` / ``while``) ``fn``'s program has."""
    text = str(jax.make_jaxpr(fn)(*args))
    return text.count("scan[") + text.count("while[")


@pytest.mark.parametrize(
    "name", [n if n == "mingru" else pytest.param(n, marks=pytest.mark.slow) for n in LINEAR]
)
def test_registered_and_chosen_by_rnn_auto(name):
    """``auto`` runs the cells by their associative scan (no loop over time in the program)
    off the CPU, step by step on a CPU. ``xla`` says why not."""
    mod = cells.get(name)
    assert mod is getattr(cells, name) and mod.cell.cell_name == name
    assert mod.cell.scan is mod.scan
    p, xs = _params(name), _xs((B, T, D))
    expected = "scan" if jax.default_backend() == "cpu" else "linear"
    assert backends.select(mod.cell, p, xs).name == expected
    assert f"backend {expected!r}" in backends.explain(mod.cell, p, xs)
    assert _loops(lambda p, xs: rnn(mod.cell, p, xs, backend="linear"), p, xs) == 0
    assert _loops(lambda p, xs: rnn(mod.cell, p, xs, backend="scan"), p, xs) == 1
    assert _loops(lambda p, xs: rnn(mod.cell, p, xs), p, xs) == (expected == "scan")
    with raises_naming(ValueError, "backend 'xla' cannot run this call", f"{name} has no split"):
        rnn(mod.cell, p, xs, backend="xla")


def test_linear_backend_refuses_a_cell_without_a_linear_recurrence():
    p, xs = cells.gru.init(jax.random.key(0), D, H), _xs((B, T, D)).astype(jnp.float32)
    with raises_naming(ValueError, "backend 'linear' cannot run this call", "gru has no linear"):
        rnn(cells.gru.cell, p, xs, backend="linear")
    wrapped = functools.partial(cells.mingru.cell)  # its scan would not see bound arguments
    with raises_naming(ValueError, "backend 'linear'", "mingru is wrapped in a functools.partial"):
        rnn(wrapped, _params("mingru"), xs.astype(jnp.float64), backend="linear")
    assert backends.select(wrapped, _params("mingru"), xs).name == "scan"


def _linear_grid():
    """Each cell with each option of rnn (lengths, reverse, h0, layouts, embedded inputs,
    remat) on in some case. The default suite runs one cheap case (minGRU: embedded inputs,
    remat, lengths); the rest is slow."""
    options = [
        dict(lengths=True, reverse=True, h0=True, remat=None, layout="batched"),
        dict(lengths=True, reverse=False, h0=False, remat=4, layout="embedded"),
        dict(lengths=False, reverse=True, h0=True, remat="sqrt", layout="time_major"),
        dict(lengths=True, reverse=False, h0=True, remat=None, layout="unbatched"),
    ]
    for name in LINEAR:
        for j, opts in enumerate(options):
            marks = () if (name, j) == ("mingru", 1) else (pytest.mark.slow,)
            yield pytest.param(name, opts, marks=marks, id=f"{name}-{j}")


@pytest.mark.parametrize(("name", "opts"), list(_linear_grid()))
def test_linear_backend_equals_scan_values_and_gradients(name, opts):
    """``rnn(..., backend="linear")`` (the cell's associative scan) against the step-by-step
    ``scan`` backend, float64: outputs, final carry, reverse- and forward-mode derivatives
    w.r.t. params, inputs and h0."""
    mod, p = cells.get(name), _params(name)
    layout = opts["layout"]
    batched = layout != "unbatched"
    batch = (B,) if batched else ()
    xs = _xs((B, T, D)) if batched else _xs((T, D))
    if layout == "time_major":
        xs = jnp.swapaxes(xs, 0, 1)
    E, ids = _xs((11, D), seed=3), jax.random.randint(jax.random.key(4), (B, T), 0, 11)
    lengths = (jnp.asarray(LENGTHS) if batched else jnp.asarray(5)) if opts["lengths"] else None
    h0 = _h0(name, p, batch) if opts["h0"] else None
    kw = dict(lengths=lengths, reverse=opts["reverse"], remat=opts["remat"])
    kw["time_major"] = layout == "time_major"

    def run(backend):
        def f(p, x, h0):
            inputs = Embedded(x, ids) if layout == "embedded" else x  # x: the table
            carry, ys = rnn(mod.cell, p, inputs, h0, backend=backend, **kw)
            return carry, ys

        return f

    def loss(backend):
        def f(p, x, h0):
            carry, ys = run(backend)(p, x, h0)
            c = sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(carry))
            return jnp.sum(jnp.sin(ys)) + c

        return f

    x = E if layout == "embedded" else xs  # the embedding table is the differentiated input
    h = _h0(name, p, batch) if h0 is None else h0  # gradients w.r.t. h0 need one given
    tangents = jax.tree.map(lambda a: jnp.ones_like(a) * 0.3, (p, x, h))

    @jax.jit  # one program for both backends
    def both(p, x, h):
        outs = []
        for backend in ("linear", "scan"):
            outs.append(run(backend)(p, x, h0))
            outs.append(jax.grad(loss(backend), (0, 1, 2))(p, x, h))
            outs.append(jax.jvp(loss(backend), (p, x, h), tangents)[1])
        return outs

    out, grad, jvp, out_ref, grad_ref, jvp_ref = both(p, x, h)
    _close(out, out_ref)
    _close(grad, grad_ref, tol=1e-10)
    _close(jvp, jvp_ref, tol=1e-10)


@pytest.mark.parametrize(
    "name", [n if n == "minlstm" else pytest.param(n, marks=pytest.mark.slow) for n in LINEAR]
)
def test_linear_backend_padding_never_reaches_the_gradients(name):
    """NaN, inf or huge values past ``lengths`` give the outputs and gradients of zeros there."""
    mod, p = cells.get(name), _params(name)
    xs = _xs((B, T, D))
    pad = jnp.arange(T)[None, :, None] >= jnp.asarray(LENGTHS)[:, None, None]  # [B, T, 1]

    def loss(p, xs):
        carry, ys = rnn(mod.cell, p, xs, lengths=LENGTHS, reverse=True, backend="linear")
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.abs(c)) for c in jax.tree.leaves(carry))

    f = jax.jit(jax.value_and_grad(loss, (0, 1)))
    clean = f(p, jnp.where(pad, 0.0, xs))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(clean))
    for bad in (jnp.nan, jnp.inf, 1e30):
        value, (g_p, g_x) = f(p, jnp.where(pad, bad, xs))
        np.testing.assert_array_equal(np.asarray(value), np.asarray(clean[0]))
        _close(g_p, clean[1][0], tol=0)
        np.testing.assert_array_equal(np.asarray(g_x), np.asarray(clean[1][1]))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_jacobian_diagonal_hook_is_the_jacobian(name):
    """The hook parallel.rnn's quasi methods use: the (diagonal) Jacobian of the step."""
    p = _params(name)
    mod = cells.get(name)
    x, h = _xs((D,)), _xs((H,), seed=3)
    J = jax.jacfwd(lambda h: mod.cell(p, h, x)[0])(h)
    np.testing.assert_allclose(np.diag(mod.jacobian_diagonal(p, h, x)), J, atol=1e-14)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", LINEAR)
def test_bad_input_names_expected_and_received(name):
    p = _params(name)
    mod = cells.get(name)
    with pytest.raises(ValueError, match=r"\[B, T, 4\] or \[T, 4\].*got shape \(3, 9, 7\)"):
        mod.scan(p, _xs((B, T, 7)))
    with pytest.raises(ValueError, match=r"\[B, T, 4\].*got shape \(4,\)"):
        mod.scan(p, _xs((D,)))
    with pytest.raises(TypeError, match="floating dtype.*got int32"):
        mod.scan(p, jnp.zeros((B, T, D), jnp.int32))
    if name != "lru":  # the LRU's carry: test_lru_bad_carry_and_ring
        with pytest.raises(ValueError, match=r"h must have shape \[3, 5\].*got shape \[2, 5\]"):
            mod.scan(p, _xs((B, T, D)), mod.initial_carry(p, (2,)))
    with pytest.raises(ValueError, match=r"lengths must have shape \[3\].*got shape \[2\]"):
        mod.scan(p, _xs((B, T, D)), lengths=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\].*got shape \(3, 7\)"):
        mod.cell(p, mod.initial_carry(p, (B,)), _xs((B, 7)))
    with pytest.raises(ValueError, match="input_size must be a positive int; got 0"):
        mod.init(jax.random.key(0), 0, H)


def test_lru_bad_carry_and_ring():
    p = _params("lru")
    c = cells.lru.initial_carry(p, (B,))
    with pytest.raises(ValueError, match=r"carry h must have shape \[3, 6\]; got \[3, 5\]"):
        cells.lru.scan(p, _xs((B, T, D)), c._replace(h=jnp.zeros((B, 5), jnp.complex128)))
    with pytest.raises(TypeError, match=r"carry h must be complex \(complex128\); got float64"):
        cells.lru.cell(p, c._replace(h=jnp.zeros((B, N))), _xs((B, D)))
    with pytest.raises(TypeError, match="carry must be LRUCarry.*got ndarray"):
        cells.lru.cell(p, np.zeros((B, N)), _xs((B, D)))
    with pytest.raises(ValueError, match="r_min < r_max <= 1; got r_min=0.5, r_max=0.4"):
        cells.lru.init(jax.random.key(0), D, H, r_min=0.5, r_max=0.4)
