"""The GPU kernels (jaxrnn.gpu, Pallas) on the CPU through Pallas's interpreter.

1. Each kernel against the XLA loop of :mod:`jaxrnn.fast` it replaces (float64, to
   rounding), at a size with padding in H and in the batch and several batch tiles, with its
   weights held across the time loop and re-read (and the loop's reads counted; the rule
   that decides it per GPU).
2. :mod:`jaxrnn.fast` with its GPU branch taken (``_per_platform`` routed to the ``cuda``
   kernels, interpreted) against the plain path in float64: ``fast.rnn`` with lengths and
   ``reverse``, the seed classifier (table and projected-rows inputs), ``vmap``; values and
   gradients.
3. The training step lowered for CUDA (``jax.export``, no GPU needed): Triton kernels where
   a cell's kernels are on, XLA loops elsewhere.
4. On a GPU only (skipped elsewhere): the Triton-compiled kernels against float64.
``benchmarks/gpu_check.py`` checks the seed model on a GPU (benchmarks/RESULTS.md, GPU section).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, fast, gpu, models, rnn

SHAPES = [(7, 5, 12), (4, 37, 100)]  # (T, B, H): H 12 -> 16, 100 -> 128; B 37 -> 3 tiles of 16


@pytest.fixture(params=[False, True, 2], ids=["reread", "hoisted", "held2"])
def hoist(request, monkeypatch):
    """Every way of reading the recurrent weights (gpu.HOIST_WEIGHTS: re-read, held, the first
    2 blocks held and the others re-read): the same numbers."""
    monkeypatch.setattr(gpu, "HOIST_WEIGHTS", request.param)
    return request.param


def _r(rng, *shape):
    return jnp.asarray(0.5 * rng.standard_normal(shape), jnp.float64)


def _close(a, b, tol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("T,B,H", SHAPES)
@pytest.mark.parametrize("last_only", [False, True])
def test_simple_kernels_equal_xla_loops(T, B, H, last_only, hoist):
    rng = np.random.default_rng(0)
    U, W, h0 = _r(rng, T, B, H), _r(rng, H, H), _r(rng, B, H)
    S = fast._simple_forward_xla(U, None, W, h0, "tanh", 1)
    _close(gpu.simple_forward(U, W, h0, interpret=True), S)
    g = _r(rng, B, H) if last_only else _r(rng, T, B, H)
    D, _ = fast._simple_backward_xla(S, W, g, "tanh", 1, last_only)
    _close(gpu.simple_backward(S, W, g, last_only, interpret=True), D[:-1])


@pytest.mark.parametrize("T,B,H", SHAPES)
@pytest.mark.parametrize("g_hs,g_cs", [(False, False), (True, False), (True, True)])
def test_lstm_kernels_equal_xla_loops(T, B, H, g_hs, g_cs, hoist):
    rng = np.random.default_rng(1)
    U, W, h0, c0 = _r(rng, T, B, 4 * H), _r(rng, H, 4 * H), _r(rng, B, H), _r(rng, B, H)
    S_h, S_c, Gs = fast._lstm_forward_xla(U, None, W, h0, c0, 1)
    _close(gpu.lstm_forward(U, W, h0, c0, interpret=True), (S_h, S_c, Gs))
    ghs = _r(rng, T, B, H) if g_hs else None
    gcs = _r(rng, T, B, H) if g_cs else None
    ghT, gcT = _r(rng, B, H), _r(rng, B, H)
    D, _, dc0 = fast._lstm_backward_xla(S_h, S_c, Gs, W, ghs, ghT, gcT, 1, gcs)
    _close(gpu.lstm_backward(S_c, Gs, W, ghs, ghT, gcT, gcs, interpret=True), (D[:-1], dc0))


@pytest.mark.parametrize("T,B,H", SHAPES)
@pytest.mark.parametrize("last_only", [False, True])
def test_gru_kernels_equal_xla_loops(T, B, H, last_only, hoist):
    rng = np.random.default_rng(2)
    A, W, b, h0 = _r(rng, T, B, 3 * H), _r(rng, H, 3 * H), _r(rng, 3 * H), _r(rng, B, H)
    S, Sv = fast._gru_forward_xla(A, None, W, b, h0, 1)
    _close(gpu.gru_forward(A, W, b, h0, interpret=True), (S, Sv))
    g = _r(rng, B, H) if last_only else _r(rng, T, B, H)
    dA, dW, db, dh0 = fast._gru_backward_xla(S, Sv, W, A, None, g, 1, last_only)
    D, N, dh0_k = gpu.gru_backward(S, Sv, W, g, last_only, interpret=True)
    _close((jnp.concatenate([D[..., : 2 * H], N], -1), D.sum((0, 1)), dh0_k), (dA, db, dh0))
    _close(fast._dW_of(S, D), dW)


def _loop_reads(fn, *args) -> int:
    """How many ref reads (``get``) the body of ``fn``'s kernel's time loop does."""
    # traced afresh: jax 0.11 (on an H200) reused the kernel's jaxpr traced under the previous
    # gpu.HOIST_WEIGHTS (a module constant, not part of any cache key) without this
    jax.clear_caches()
    jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)
    (kernel,) = [e for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    (loop,) = [e for e in kernel.params["jaxpr"].eqns if e.primitive.name in ("scan", "while")]
    body = loop.params["jaxpr" if loop.primitive.name == "scan" else "body_jaxpr"]
    return sum(e.primitive.name == "get" for e in body.eqns)


@pytest.mark.parametrize("G", [1, 4, 3], ids=["simple", "lstm", "gru"])
def test_hoisted_weights_are_read_once(G, monkeypatch):
    """gpu.HOIST_WEIGHTS takes the G weight-block reads out of each kernel's time loop."""
    T, B, H = 3, 2, 8
    z = jnp.zeros
    fwd, bwd = {
        1: (lambda: gpu.simple_forward(z((T, B, H)), z((H, H)), z((B, H))),
            lambda: gpu.simple_backward(z((T + 1, B, H)), z((H, H)), z((T, B, H)), False)),
        4: (lambda: gpu.lstm_forward(z((T, B, 4 * H)), z((H, 4 * H)), z((B, H)), z((B, H))),
            lambda: gpu.lstm_backward(z((T + 1, B, H)), z((T, B, 4 * H)), z((H, 4 * H)), None,
                                      z((B, H)), z((B, H)))),
        3: (lambda: gpu.gru_forward(z((T, B, 3 * H)), z((H, 3 * H)), z((3 * H,)), z((B, H))),
            lambda: gpu.gru_backward(z((T + 1, B, H)), z((T, B, 4 * H)), z((H, 3 * H)),
                                     z((T, B, H)), False)),
    }[G]  # fmt: skip
    for kernel in (fwd, bwd):
        monkeypatch.setattr(gpu, "HOIST_WEIGHTS", False)
        reread = _loop_reads(kernel)
        monkeypatch.setattr(gpu, "HOIST_WEIGHTS", True)
        assert _loop_reads(kernel) == reread - G
        monkeypatch.setattr(gpu, "HOIST_WEIGHTS", 2)  # the first min(2, G) held
        assert _loop_reads(kernel) == reread - min(2, G)


@pytest.mark.parametrize(
    "cc,G,Hp,n",
    [((9, 0), 1, 128, 1), ((9, 0), 3, 128, 3), ((9, 0), 4, 128, 2), ((9, 0), 4, 64, 4),
     ((8, 0), 3, 128, 1), ((8, 0), 4, 128, 1), ((8, 0), 1, 128, 1), ((8, 6), 1, 128, 1),
     ((8, 6), 3, 128, 0), ((7, 5), 1, 128, 0), ((7, 5), 1, 64, 1), ((7, 5), 4, 64, 1),
     (None, 1, 128, 0)],
)  # fmt: skip
def test_weights_held_where_they_fit_in_shared_memory(cc, G, Hp, n, monkeypatch):
    """gpu.held: all G float32 blocks [Hp, Hp] where they fit in the device's shared memory
    (H100 227 KiB, A100 163, sm_86 99, T4 64) with 32 KiB to spare, else as many as fit beside
    one staged block (2 of the LSTM's 4 on an H100: 3 asked for 256 KiB and failed to compile
    on an H200, RESULTS.md, GPU run 8); unknown: 64 KiB. HOIST_WEIGHTS overrides it."""
    dev = type("Dev", (), {"compute_capability": "" if cc is None else f"{cc[0]}.{cc[1]}"})()
    monkeypatch.setattr(jax, "devices", lambda *a: [dev])
    monkeypatch.setattr(gpu, "HOIST_WEIGHTS", None)
    assert gpu.held(G, Hp) == n and gpu.hoisted(G, Hp) is (n == G)
    for forced in (False, True):
        monkeypatch.setattr(gpu, "HOIST_WEIGHTS", forced)
        assert gpu.held(G, Hp) == (G if forced else 0) and gpu.hoisted(G, Hp) is forced
    for k, m in [(0, 0), (2, min(2, G)), (G + 1, G)]:  # an int: the first min(k, G) blocks
        monkeypatch.setattr(gpu, "HOIST_WEIGHTS", k)
        assert gpu.held(G, Hp) == m and gpu.hoisted(G, Hp) is (m == G)


def test_supports_and_padding(monkeypatch):
    assert gpu.padded(100) == 128 and gpu.padded(128) == 128 and gpu.padded(1) == 16
    assert gpu.supports(jnp.float32, 100)
    for cell in ("simple", "gru"):
        assert gpu.supports(jnp.float32, 100, cell)
    # the LSTM's kernels where at least 2 of its 4 blocks are held: not with no GPU attached
    # (64 KiB assumed) or on an A100 (1 held), yes on an H100 / H200 (2) or at H <= 64 (all)
    for smem, H, on in [(64, 100, False), (163, 100, False), (227, 100, True), (163, 64, True)]:
        monkeypatch.setattr(gpu, "_smem_kib", lambda smem=smem: smem)
        assert gpu.supports(jnp.float32, H, "lstm") is on, (smem, H)
    monkeypatch.setattr(gpu, "HOIST_WEIGHTS", 2)  # forced: at least 2 held anywhere
    assert gpu.supports(jnp.float32, 100, "lstm")
    monkeypatch.setattr(gpu, "CELLS", frozenset({"lstm"}))  # a set forces cells on and off
    monkeypatch.setattr(gpu, "HOIST_WEIGHTS", False)
    assert gpu.supports(jnp.float32, 100, "lstm") and not gpu.supports(jnp.float32, 100)
    assert not gpu.supports(jnp.float64, 100)  # float32 kernels only
    assert not gpu.supports(jnp.float32, gpu.MAX_HIDDEN + 1)
    monkeypatch.setenv(gpu.SWITCH, "0")
    assert not gpu.supports(jnp.float32, 100)


def test_kernels_off_without_pallas_triton(monkeypatch, key):
    """A jax without Pallas's Triton backend (deprecated in jax 0.11): the kernels are off and
    the GPU branch is not taken, instead of failing when the step is lowered."""
    import builtins

    real = builtins.__import__

    def no_triton(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "jax.experimental.pallas.triton" or (
            name == "jax.experimental.pallas" and "triton" in (fromlist or ())
        ):
            raise ImportError("no Triton backend in this jax")
        return real(name, globals, locals, fromlist, level)

    assert gpu.enabled()
    monkeypatch.setattr(builtins, "__import__", no_triton)
    assert not gpu.enabled() and not gpu.supports(jnp.float32, 100)
    taken = []
    monkeypatch.setattr(fast, "_per_platform", lambda xla, cpu=None, cuda=None: (
        taken.append(cuda is not None), xla())[1])  # fmt: skip
    p = cells.simple.init(key, 3, 8, dtype=jnp.float32)
    fast.rnn(cells.simple.cell, p, jnp.ones((2, 4, 3), jnp.float32))
    assert taken and not any(taken)


@pytest.fixture
def gpu_branch(monkeypatch):
    """Routes jaxrnn.fast's per-platform dispatch to its GPU kernels (interpreted) and
    records which dispatches had one."""
    taken = []

    def per_platform(xla, cpu=None, cuda=None):
        taken.append(cuda is not None)
        return cuda() if cuda is not None else xla()

    monkeypatch.setattr(fast, "_per_platform", per_platform)
    monkeypatch.setattr(gpu, "INTERPRET", True)
    monkeypatch.setattr(gpu, "CELLS", gpu.ALL_CELLS)  # every cell's kernels, however many held
    return taken


def _f32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


TOL32 = 2e-5  # float32 kernels vs float64 plain, relative to each leaf's largest entry


def _close32(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.max(np.abs(x - y)) <= TOL32 * max(np.max(np.abs(y)), 1.0), (x, y)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fast_rnn_gpu_branch_equals_plain(name, reverse, gpu_branch, key):
    """fast.rnn with lengths (and reverse) on the GPU kernels: outputs, carry, gradients."""
    mod = cells.get(name)
    B, T, D, H = 19, 9, 5, 12
    p = mod.init(key, D, H, dtype=jnp.float64)
    if p.b is not None:
        p = dataclasses.replace(p, b=jax.random.normal(jax.random.key(7), p.b.shape, jnp.float64))
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    lengths = jnp.asarray(np.random.default_rng(3).integers(0, T + 1, B))

    def loss(run, p, xs):
        carry, ys = run(mod.cell, p, xs, lengths=lengths, reverse=reverse)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    got = jax.value_and_grad(lambda p, x: loss(fast.rnn, p, x), (0, 1))(_f32(p), _f32(xs))
    assert gpu_branch and all(gpu_branch), gpu_branch  # every loop ran on a GPU kernel
    want = jax.value_and_grad(lambda p, x: loss(rnn, p, x), (0, 1))(p, xs)
    _close32(got, want)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("B", [24, 2], ids=["table", "rows"])
def test_classifier_gpu_branch_equals_plain(name, B, gpu_branch, key):
    """The seed classifier's loss and gradients on the GPU kernels (last state only)."""
    cfg = models.ClassifierConfig(vocab_size=40, embed_dim=4, hidden_size=20, cell=name)
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    if params["rnn"].b is not None:
        b = jax.random.normal(jax.random.key(7), params["rnn"].b.shape, jnp.float64)
        params["rnn"] = dataclasses.replace(params["rnn"], b=b)
    tokens = jax.random.randint(jax.random.key(1), (B, 11), 0, 40)  # B T >= V: the table
    labels = (jnp.arange(B) % 2).astype(jnp.float64)
    got = jax.value_and_grad(lambda p: fast.classifier_loss(cfg, p, tokens, labels))(_f32(params))
    assert gpu_branch and all(gpu_branch), gpu_branch
    want = jax.value_and_grad(lambda p: models.classifier_loss(cfg, p, tokens, labels))(params)
    _close32(got, want)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
def test_vmap_of_gpu_branch_equals_plain(name, gpu_branch, key):
    """``vmap`` over groups of sequences (Pallas's batching rule adds a grid axis), gradients."""
    mod = cells.get(name)
    p = mod.init(key, 3, 8, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (4, 2, 6, 3), jnp.float64)  # 4 groups of [2, 6, 3]

    def grads(run, p, xs):
        return jax.vmap(jax.grad(lambda p, x: jnp.sum(run(mod.cell, p, x)[1] ** 2)), (None, 0))(
            p, xs
        )

    got = grads(fast.rnn, _f32(p), _f32(xs))
    assert gpu_branch and all(gpu_branch), gpu_branch
    _close32(got, grads(rnn, p, xs))


def test_gpu_branch_absent_where_kernels_do_not_apply(gpu_branch, key):
    """float64 and H > MAX_HIDDEN keep the XLA loops on a GPU."""
    p = cells.simple.init(key, 3, 8, dtype=jnp.float64)
    fast.rnn(cells.simple.cell, p, jnp.ones((2, 4, 3), jnp.float64))
    wide = cells.simple.init(key, 3, gpu.MAX_HIDDEN + 1, dtype=jnp.float32)
    fast.rnn(cells.simple.cell, wide, jnp.ones((2, 4, 3), jnp.float32))
    assert gpu_branch == [False, False]


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("all_cells", [False, True], ids=["default", "all-kernels"])
def test_seed_step_lowers_to_triton_kernels_for_cuda(name, all_cells, hoist, monkeypatch):
    """Lowered for CUDA (no GPU needed: cross-platform lowering through ``jax.export``), the
    seed training step runs its recurrence in two Triton kernels (forward, backward) and no
    XLA loop where the cell's kernels are on (by default the simple cell's and the GRU's, and
    the LSTM's where at least 2 of its blocks are held; with all re-read it keeps its XLA
    loops); Pallas's Triton lowering accepts every kernel at H = 100, with the weights held
    across the loop, re-read, or 2 blocks held."""
    from jax import export

    if all_cells:
        monkeypatch.setattr(gpu, "CELLS", gpu.ALL_CELLS)
    on = all_cells or name != "lstm" or gpu.held(4, 128) >= gpu.LSTM_MIN_HELD
    cfg = models.ClassifierConfig(cell=name)
    params = models.init_classifier(jax.random.key(0), cfg, dtype=jnp.float32)
    tokens = jax.ShapeDtypeStruct((64, 250), jnp.int32)
    labels = jax.ShapeDtypeStruct((64,), jnp.float32)
    step = jax.jit(jax.grad(lambda p, x, y: fast.classifier_loss(cfg, p, x, y)))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    exported = export.export(step, platforms=["cuda"], disabled_checks=[triton])
    text = exported(params, tokens, labels).mlir_module()
    assert text.count("custom_call @__gpu$xla.gpu.triton") == (2 if on else 0)
    assert ("stablehlo.while" in text) == (not on)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (the kernels compiled)")
@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("hold", [None, False, 2], ids=["held-where-they-fit", "reread", "held2"])
def test_compiled_kernels_on_a_gpu_equal_float64(name, hold, monkeypatch, key):
    """On a GPU: the Triton-compiled kernels (every cell's, not only the defaults) through
    fast.rnn with lengths and reverse, float32 at "highest" matmul precision, against the plain
    path in float64 on the CPU (what benchmarks/gpu_check.py reports for the seed model); the
    weights held where they fit (not forced: the LSTM's do not fit on an H100), re-read, and
    the first 2 blocks held (the others re-read)."""
    monkeypatch.setattr(gpu, "CELLS", gpu.ALL_CELLS)
    monkeypatch.setattr(gpu, "HOIST_WEIGHTS", hold)
    mod = cells.get(name)
    B, T, D, H = 20, 30, 8, 100  # H 100 -> 128, B 20 -> two batch tiles
    p = mod.init(key, D, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    lengths = jnp.asarray(np.random.default_rng(3).integers(0, T + 1, B))

    def loss(run, p, xs, lengths):
        carry, ys = run(mod.cell, p, xs, lengths=lengths, reverse=True)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    step = jax.jit(jax.value_and_grad(lambda p, x, n: loss(fast.rnn, p, x, n), (0, 1)))
    args = (_f32(p), _f32(xs), lengths)
    assert "triton" in step.lower(*args).as_text()  # the kernels, not the XLA loops
    with jax.default_matmul_precision("highest"):
        got = step(*args)
    cpu = jax.devices("cpu")[0]
    plain = jax.jit(jax.value_and_grad(lambda p, x, n: loss(rnn, p, x, n), (0, 1)))
    want = plain(*jax.device_put((p, xs, lengths), cpu))  # runs where its inputs are: the CPU
    _close32(got, want)


def test_vmap_lowers_to_triton_kernels_for_cuda(monkeypatch, key):
    """The batched kernels (an extra grid axis) pass Pallas's Triton lowering too."""
    from jax import export

    monkeypatch.setattr(gpu, "CELLS", gpu.ALL_CELLS)
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    xs = jax.ShapeDtypeStruct((4, 2, 6, 3), jnp.float32)
    for name in ("simple", "lstm", "gru"):
        mod = cells.get(name)
        p = mod.init(key, 3, 8, dtype=jnp.float32)
        loss = lambda p, x, mod=mod: jnp.sum(fast.rnn(mod.cell, p, x)[1] ** 2)  # noqa: E731
        step = jax.jit(jax.vmap(jax.grad(loss), (None, 0)))
        text = export.export(step, platforms=["cuda"], disabled_checks=[triton])(
            p, xs
        ).mlir_module()
        assert text.count("custom_call @__gpu$xla.gpu.triton") == 2, name
