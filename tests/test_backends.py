"""Every backend of ``rnn`` against ``backend="scan"``, under every transformation.

The reference is the plain ``lax.scan`` over the cell (itself checked against NumPy and
finite differences in test_rnn.py / test_reference.py). ``scan``, ``xla`` and the Pallas
kernels (through Pallas's interpreter, on the CPU) run in float64 and agree to 1e-8; the
native CPU kernels are float32 and agree with the float64 reference to float32 rounding.
Each test also checks that the backend it names is the one whose code ran (the program's
operations), so a dispatch regression cannot compare a path with itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_GPU, assert_path, assert_trees_close, backend_dtype, backend_tol

from jaxrnn import Embedded, backends, cells, rnn
from jaxrnn.backends import cpu

CELLS = {
    "simple": (cells.simple, {}),
    "relu": (cells.simple, {"activation": "relu"}),
    "lstm": (cells.lstm, {}),
    "gru": (cells.gru, {}),
}
close = assert_trees_close
dtype_of = backend_dtype
tol = backend_tol
expect_path = assert_path


def setup(cell: str, dtype, T=5, B=3, D=4, H=6, seed=0):
    mod, kw = CELLS[cell]
    p = mod.init(jax.random.key(seed), D, H, dtype=dtype, **kw)
    if cell == "gru":  # nonzero recurrent bias, so its gradient is tested too
        p = jax.tree.map(lambda a: a + 0.1 if a.ndim == 2 and a.shape[0] == 2 else a, p)
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(0.7 * rng.standard_normal((B, T, D)), dtype)
    h0 = jax.tree.map(
        lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), dtype), mod.initial_carry(p, (B,))
    )
    return mod.cell, p, xs, h0


# --- every transformation ------------------------------------------------------------------


def _loss(b, cell, carry_only=False):
    def loss(p, xs, h0):
        carry, ys = rnn(cell, p, xs, h0, backend=b)
        out = sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(carry))
        return out if carry_only else out + jnp.sum(jnp.sin(ys))

    return loss


TRANSFORMS = {
    "value": lambda f: f,
    "grad": lambda f: jax.grad(f, argnums=(0, 1, 2)),
    "value_and_grad": lambda f: jax.value_and_grad(f, argnums=(0, 1, 2)),
    "vmap": lambda f: jax.vmap(f, in_axes=(None, 0, 0)),
    "vmap_of_grad": lambda f: jax.vmap(jax.grad(f, argnums=(0, 1, 2)), in_axes=(None, 0, 0)),
    "jvp": lambda f: lambda *a: jax.jvp(f, a, jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), a)),
    "jacfwd": lambda f: jax.jacfwd(f, argnums=(1, 2)),
    "jacrev": lambda f: jax.jacrev(f, argnums=(0, 2)),
    "hessian": lambda f: jax.hessian(f, argnums=2),
    "linearize": lambda f: lambda *a: jax.linearize(f, *a)[1](*jax.tree.map(jnp.ones_like, a)),
    "grad_of_grad": lambda f: jax.grad(
        lambda *a: sum(jnp.sum(g**2) for g in jax.tree.leaves(jax.grad(f, argnums=(0, 2))(*a))),
        argnums=(0, 1),
    ),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
def test_every_transformation_equals_scan(backend, cell_name, transform):
    dtype = dtype_of(backend)
    cell, p, xs, h0 = setup(cell_name, dtype, T=4, B=2, D=3, H=5)
    if transform.startswith("vmap"):  # a batch of batches: [V, B, T, D]
        xs = jnp.stack([xs, -xs])
        h0 = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), h0)
    f = jax.jit(TRANSFORMS[transform](_loss(backend, cell)))
    ref = jax.jit(TRANSFORMS[transform](_loss(backends.Backend("scan"), cell)))
    p64, xs64, h064 = jax.tree.map(lambda a: a.astype(jnp.float64), (p, xs, h0))
    close(f(p, xs, h0), ref(p64, xs64, h064), **tol(backend))
    expect_path(backend, TRANSFORMS[transform](_loss(backend, cell)), p, xs, h0)


def test_reverse_mode_runs_the_backends_backward_pass():
    """``jax.grad`` through ``xla`` runs its own backward (the linear primitive transposed),
    not autodiff of a scan: the gradient program has no tangent loop of the XLA loops' JVP."""
    cell, p, xs, h0 = setup("lstm", jnp.float64)
    g = jax.grad(_loss(backends.Backend("xla"), cell), argnums=(0, 1, 2))
    assert "jaxrnn_linear" in str(jax.make_jaxpr(g)(p, xs, h0))


@pytest.mark.parametrize("cell_name", ["lstm", "relu"])
def test_xla_loops_fall_back_to_every_residual_when_a_step_traces_otherwise(monkeypatch, cell_name):
    """The XLA loops store each step's pullback in buffers laid out by an abstract trace of one
    step; where the loop body's own trace differs (forced here), they store the plain
    pullback's residuals instead, with the same numbers."""
    from jaxrnn.backends import _xla

    layout = _xla._pullback_layout
    calls = []

    def skewed(*args, fallback=False):
        calls.append(fallback)
        got = layout(*args, fallback=fallback)
        return got if fallback else got._replace(carry_leaf=got.carry_leaf + (None,))

    monkeypatch.setattr(_xla, "_pullback_layout", skewed)
    cell, p, xs, h0 = setup(cell_name, jnp.float64)
    g = jax.grad(_loss(backends.Backend("xla"), cell), argnums=(0, 1, 2))(p, xs, h0)
    ref = jax.grad(_loss(backends.Backend("scan"), cell), argnums=(0, 1, 2))(p, xs, h0)
    close(g, ref, rtol=1e-10, atol=1e-10)
    assert True in calls


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
def test_xla_loops_under_a_jit_with_shardings_equal_scan(monkeypatch, cell_name):
    """``train.py``'s step is a ``jit`` of arrays placed on a data-parallel mesh; traced there, a
    step's pullback holds its constants as residuals, which the loops' layout (traced on the
    loops' own arguments) stores too: the compact layout, no fallback."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jaxrnn.backends import _xla

    layout = _xla._pullback_layout
    calls = []

    def spy(*args, fallback=False):
        calls.append(fallback)
        return layout(*args, fallback=fallback)

    monkeypatch.setattr(_xla, "_pullback_layout", spy)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    rep, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    cell, p, xs, h0 = setup(cell_name, jnp.float64)
    p, xs, h0 = jax.device_put(p, rep), jax.device_put(xs, rows), jax.device_put(h0, rows)

    def grad(name):
        g = jax.grad(_loss(backends.Backend(name), cell), argnums=(0, 1, 2))
        return jax.jit(g, in_shardings=(rep, rows, rows), out_shardings=rep)(p, xs, h0)

    close(grad("xla"), grad("scan"), rtol=1e-10, atol=1e-10)
    assert calls and True not in calls


# --- rnn's options on every backend ----------------------------------------------------------


OPTIONS = {
    "plain": {},
    "lengths": {"lengths": True},
    "reverse": {"reverse": True},
    "lengths+reverse": {"lengths": True, "reverse": True},
    "remat": {"remat": 2},
    "remat+lengths+reverse": {"remat": 3, "lengths": True, "reverse": True},
    "time_major": {"time_major": True},
    "unbatched": {"unbatched": True},
    "default_h0": {"no_h0": True},
    "unroll": {"unroll": 2},
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_options_equal_scan(backend, cell_name, option):
    """Outputs, final carry and gradients w.r.t. params, xs and h0 of every option."""
    if backend.name == "pallas" and cell_name == "relu":
        pytest.skip("the GPU kernels compute the simple cell with tanh only")
    opts = dict(OPTIONS[option])
    dtype = dtype_of(backend)
    cell, p, xs, h0 = setup(cell_name, dtype, T=7, B=4)
    lengths = jnp.array([7, 3, 0, 5]) if opts.pop("lengths", False) else None
    if opts.pop("unbatched", False):
        xs, h0 = xs[1], jax.tree.map(lambda a: a[1], h0)
    if opts.pop("no_h0", False):
        h0 = None
    if opts.get("time_major"):
        xs = jnp.swapaxes(xs, 0, 1)

    def f(b):
        def run(p, xs, h0):
            return rnn(cell, p, xs, h0, lengths=lengths, backend=b, **opts)

        def loss(p, xs, h0):
            carry, ys = run(p, xs, h0)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

        return run, jax.grad(loss, argnums=(0, 1) if h0 is None else (0, 1, 2))

    run, grad = f(backend)
    run_ref, grad_ref = f(backends.Backend("scan"))
    args = (p, xs, h0)
    args64 = jax.tree.map(lambda a: a.astype(jnp.float64), args)
    close(jax.jit(run)(*args), run_ref(*args64), **tol(backend))
    close(jax.jit(grad)(*args), grad_ref(*args64), **tol(backend))
    expect_path(backend, grad, *args)


@pytest.mark.parametrize("fill", [np.nan, np.inf, 1e30], ids=["nan", "inf", "huge"])
@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
def test_padding_never_reaches_the_gradients(backend, cell_name, fill):
    """Any value past ``lengths`` (NaN, inf, huge) gives the outputs and gradients that zeros
    there give: the padding is selected away, not multiplied by zero (0 * NaN = NaN)."""
    cell, p, xs, h0 = setup(cell_name, dtype_of(backend), T=6, B=3)
    lengths = jnp.array([6, 2, 4])
    pad = jnp.arange(6)[None, :, None] >= lengths[:, None, None]  # [B, T, 1]
    clean = jnp.where(pad, 0.0, xs)
    poisoned = jnp.where(pad, jnp.asarray(fill, xs.dtype), xs)

    def loss(p, xs, h0, remat):
        carry, ys = rnn(cell, p, xs, h0, lengths=lengths, remat=remat, backend=backend)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

    for remat in (None, 4):
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
        want, got = grad(p, clean, h0, remat), grad(p, poisoned, h0, remat)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(got))
        close(got, want, rtol=0, atol=0)  # the same program on the same numbers: bit-equal
    expect_path(backend, jax.grad(loss, argnums=(0, 1, 2)), p, poisoned, h0, None)


@pytest.mark.parametrize("remat", [None, 2])
@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("B", [6, 1], ids=["table", "rows"])
def test_embedded_inputs_equal_gathered_vectors(backend, cell_name, B, remat):
    """``Embedded(E, ids)`` (the table projected once, or the rows used) equals ``rnn`` on
    ``E[ids]``; gradients w.r.t. the embedding too, with lengths, whole and in remat segments."""
    dtype = dtype_of(backend)
    mod, kw = CELLS[cell_name]
    p = mod.init(jax.random.key(1), 4, 5, dtype=dtype, **kw)
    rng = np.random.default_rng(1)
    E = jnp.asarray(rng.standard_normal((9, 4)), dtype)  # V = 9 < B T for the table path
    ids = jnp.asarray(rng.integers(0, 9, size=(B, 3)))
    lengths = jnp.asarray(rng.integers(0, 4, size=(B,)))

    def loss(b):
        def f(p, E):
            carry, ys = rnn(mod.cell, p, Embedded(E, ids), lengths=lengths, backend=b, remat=remat)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jax.tree.leaves(carry)[0] ** 2)

        return f

    def loss_ref(p, E):
        carry, ys = rnn(mod.cell, p, E[ids], lengths=lengths, backend="scan")
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jax.tree.leaves(carry)[0] ** 2)

    args64 = jax.tree.map(lambda a: a.astype(jnp.float64), (p, E))
    close(jax.jit(loss(backend))(p, E), loss_ref(*args64), **tol(backend))
    close(
        jax.jit(jax.grad(loss(backend), (0, 1)))(p, E),
        jax.grad(loss_ref, (0, 1))(*args64),
        **tol(backend),
    )


@pytest.mark.parametrize("cell_name", ["simple", "lstm", "gru"])
def test_input_dropout_mask_is_hoisted_and_equal(backend, cell_name):
    """A ``functools.partial`` with an input dropout mask bound reaches the hoisted backends
    (the mask goes into the projection) with the numbers of scan; per-gate masks too."""
    dtype = dtype_of(backend)
    cell, p, xs, h0 = setup(cell_name, dtype)
    B, _, D = xs.shape
    G = 1 if cell_name == "simple" else p.W_x.shape[1] // p.W_h.shape[0]
    rng = np.random.default_rng(3)
    for shape in [(B, D)] + ([(G, B, D)] if G > 1 else []):
        mask = jnp.asarray(rng.integers(0, 2, size=shape) * 2.0, dtype)

        def loss(p, xs, h0, mask, b):
            masked = functools.partial(cell, x_mask=mask)
            return jnp.sum(jnp.sin(rnn(masked, p, xs, h0, backend=b)[1]))

        args = (p, xs, h0, mask)
        args64 = jax.tree.map(lambda a: a.astype(jnp.float64), args)
        close(loss(*args, backend), loss(*args64, "scan"), **tol(backend))
        close(
            jax.grad(loss, (0, 1))(*args, backend),
            jax.grad(loss, (0, 1))(*args64, "scan"),
            **tol(backend),
        )
        expect_path(backend, functools.partial(loss, b=backend), *args)


# --- dispatch --------------------------------------------------------------------------------


def test_auto_picks_by_dtype_platform_and_cell():
    _, p, xs, _ = setup("lstm", jnp.float32)
    native = cpu.available()
    assert backends.select(cells.lstm.cell, p, xs).name == ("native" if native else "xla")
    assert backends.select(cells.lstm.cell, p, xs.astype(jnp.float64)).name == "xla"
    other = cells.lstm.init(jax.random.key(0), 4, 6, recurrent_activation="hard_sigmoid")
    assert backends.select(cells.lstm.cell, other, xs).name == "xla"
    before = cells.gru.init(jax.random.key(0), 4, 6, reset_after=False)
    choice = backends.select(cells.gru.cell, before, xs)
    assert choice.name == "scan" and "reset_after=False" in choice.reason
    h_masked = functools.partial(cells.lstm.cell, h_mask=jnp.ones((3, 6)))
    assert backends.select(h_masked, p, xs).name == "scan"


def test_partial_of_a_builtin_and_a_declared_cell_reach_the_hoisted_path():
    cell, p, xs, h0 = setup("gru", jnp.float64)
    assert backends.select(functools.partial(cell), p, xs).name == "xla"
    assert (
        backends.select(functools.partial(functools.partial(cell), x_mask=None), p, xs).name
        == "xla"
    )

    def my_gru(params, carry, x):  # a user's wrapper that says which built-in it computes
        return cells.gru.cell(params, carry, x)

    assert backends.select(my_gru, p, xs).name == "scan"
    my_gru.split = cells.gru.split
    assert backends.select(my_gru, p, xs).name == "xla"
    close(rnn(my_gru, p, xs, h0), rnn(cell, p, xs, h0, backend="scan"), rtol=1e-12, atol=1e-12)


def test_a_named_backend_that_cannot_run_is_an_error_with_the_reason():
    _, p, xs, _ = setup("gru", jnp.float64)
    before = cells.gru.init(jax.random.key(0), 4, 6, reset_after=False, dtype=jnp.float64)
    for name in ("xla", "native", "pallas"):
        with pytest.raises(
            ValueError, match=rf"backend '{name}' cannot run this call: .*reset_after=False"
        ):
            rnn(cells.gru.cell, before, xs, backend=name)
    with pytest.raises(
        ValueError, match=r"backend 'native' cannot run this call: .*float32; got float64"
    ):
        rnn(cells.gru.cell, p, xs, backend="native")
    with pytest.raises(
        ValueError,
        match=rf"backend 'pallas' cannot run this call: the default platform is {jax.default_backend()!r}, not a CUDA GPU",
    ):
        rnn(cells.gru.cell, p, xs.astype(jnp.float32), backend="pallas")
    with pytest.raises(ValueError, match=r"backend must be one of .*'auto'.*'scan'.* got 'fast'"):
        rnn(cells.gru.cell, p, xs, backend="fast")


def test_explain_names_the_backend_and_the_reason():
    cell, p, xs, _ = setup("simple", jnp.float64)
    text = backends.explain(cell, p, xs)
    assert text.startswith("backend 'xla' (hoisted XLA loops) on cpu: not 'native': ")
    assert "float32; got float64" in text or "unavailable" in text
    assert (
        backends.explain(cell, p, xs, "scan")
        == "backend 'scan' (jax.lax.scan over the cell) on cpu: asked for"
    )


def test_options_context_sets_the_settings_of_named_backends():
    cell, p, xs, h0 = setup("lstm", jnp.float64)
    with backends.options(gpu=ALL_GPU):
        ys = rnn(cell, p, xs, h0, backend="pallas")[1]
    close(ys, rnn(cell, p, xs, h0, backend="scan")[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match=r"unknown settings \['warps'\]; expected \[.*'gpu'.*\]"):
        with backends.options(warps=4):
            pass


def test_replaced_modules_say_what_replaced_them():
    with pytest.raises(
        ImportError, match=r"jaxrnn.fast was folded into jaxrnn.rnn: rnn\(..., backend='auto'\)"
    ):
        import jaxrnn.fast  # noqa: F401
    with pytest.raises(ImportError, match=r"jaxrnn.native moved to jaxrnn.backends.cpu"):
        import jaxrnn.native  # noqa: F401
    with pytest.raises(ImportError, match=r"jaxrnn.recurrent: use `from jaxrnn import recurrent`"):
        from jaxrnn.recurrent import recurrent  # noqa: F401
