"""The Pallas GPU kernels (jaxrnn.backends.gpu) on the CPU through Pallas's interpreter.

test_backends.py runs them through ``rnn`` against ``scan`` under every transformation; here:

1. at sizes with padding in H and in the batch and several batch tiles, with the weights held
   across the time loop, re-read, or the first two blocks held (and the loop's reads counted),
   and the rule that decides it per GPU;
2. the training step lowered for CUDA (``jax.export``, no GPU needed): Triton kernels where a
   cell's kernels are on, XLA loops elsewhere;
3. on a GPU only (skipped elsewhere): the Triton-compiled kernels against float64.
``benchmarks/gpu_check.py`` checks the seed model on a GPU.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_path, assert_trees_close

from jaxrnn import backends, cells, models, rnn
from jaxrnn.backends import gpu
from jaxrnn.backends.gpu import _pallas

ALL = frozenset({"simple", "lstm", "gru"})
HOLD = {"reread": False, "held": True, "held2": 2}


def _backend(hold, **kw):
    return backends.Backend("pallas", gpu=gpu.Config(cells=ALL, hold=hold, **kw))


@pytest.mark.parametrize("hold", list(HOLD))
@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
# H 12 -> 16, 100 -> 128; B 37 -> 3 tiles
@pytest.mark.parametrize("T,B,H", [(7, 5, 12), (4, 37, 100)])
def test_kernels_at_padded_sizes_equal_scan(name, T, B, H, hold):
    """Outputs, carry and gradients (lengths included) with every way of reading the weights."""
    mod = cells.get(name)
    p = mod.init(jax.random.key(0), 3, H, dtype=jnp.float64)
    if p.b is not None:
        p = dataclasses.replace(p, b=jax.random.normal(jax.random.key(7), p.b.shape, jnp.float64))
    xs = jax.random.normal(jax.random.key(1), (B, T, 3), jnp.float64)
    lengths = jnp.asarray(np.random.default_rng(3).integers(0, T + 1, B))

    def loss(b):
        def f(p, xs):
            carry, ys = rnn(mod.cell, p, xs, lengths=lengths, backend=b)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

        return jax.value_and_grad(f, (0, 1))

    b = _backend(HOLD[hold], interpret=True)
    got = loss(b)(p, xs)
    assert_trees_close(got, loss("scan")(p, xs), rtol=1e-10, atol=1e-12)
    assert_path(b, loss(b), p, xs)  # the kernels ran, not the XLA loops


def _loop_reads(fn, *args) -> int:
    """How many ref reads (``get``) the body of ``fn``'s kernel's time loop does."""
    jaxpr = jax.make_jaxpr(lambda *a: fn(*a))(*args)
    (kernel,) = [e for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    (loop,) = [e for e in kernel.params["jaxpr"].eqns if e.primitive.name in ("scan", "while")]
    body = loop.params["jaxpr" if loop.primitive.name == "scan" else "body_jaxpr"]
    return sum(e.primitive.name == "get" for e in body.eqns)


@pytest.mark.parametrize("G", [1, 4, 3], ids=["simple", "lstm", "gru"])
def test_held_weights_are_read_once(G):
    """Holding the weights takes the G weight-block reads out of each kernel's time loop."""
    T, B, H = 3, 2, 8
    z = jnp.zeros

    def kernels(config):
        return {
            1: (lambda: _pallas.simple_forward(z((T, B, H)), z((H, H)), z((B, H)), config=config),
                lambda: _pallas.simple_backward(z((T + 1, B, H)), z((H, H)), z((T, B, H)), False,
                                                config=config)),
            4: (lambda: _pallas.lstm_forward(z((T, B, 4 * H)), z((H, 4 * H)), z((B, H)), z((B, H)),
                                             config=config),
                lambda: _pallas.lstm_backward(z((T + 1, B, H)), z((T, B, 4 * H)), z((H, 4 * H)),
                                              None, z((B, H)), z((B, H)), config=config)),
            3: (lambda: _pallas.gru_forward(z((T, B, 3 * H)), z((H, 3 * H)), z((3 * H,)), z((B, H)),
                                            config=config),
                lambda: _pallas.gru_backward(z((T + 1, B, H)), z((T, B, 4 * H)), z((H, 3 * H)),
                                             z((T, B, H)), False, config=config)),
        }[G]  # fmt: skip

    for i in range(2):  # forward, backward
        reread = _loop_reads(kernels(gpu.Config(hold=False))[i])
        assert _loop_reads(kernels(gpu.Config(hold=True))[i]) == reread - G
        assert _loop_reads(kernels(gpu.Config(hold=2))[i]) == reread - min(2, G)


@pytest.mark.parametrize(
    "cc,G,Hp,n",
    [((9, 0), 1, 128, 1), ((9, 0), 3, 128, 3), ((9, 0), 4, 128, 2), ((9, 0), 4, 64, 4),
     ((8, 0), 3, 128, 1), ((8, 0), 4, 128, 1), ((8, 0), 1, 128, 1), ((8, 6), 1, 128, 1),
     ((8, 6), 3, 128, 0), ((7, 5), 1, 128, 0), ((7, 5), 1, 64, 1), ((7, 5), 4, 64, 1),
     (None, 1, 128, 0)],
)  # fmt: skip
def test_weights_held_where_they_fit_in_shared_memory(cc, G, Hp, n, monkeypatch):
    """``held``: all G float32 blocks [Hp, Hp] where they fit in the device's shared memory
    (H100 227 KiB, A100 163, sm_86 99, T4 64) with 32 KiB to spare, else as many as fit beside
    one staged block (2 of the LSTM's 4 on an H100); unknown: 64 KiB. ``hold`` overrides it."""
    dev = type("Dev", (), {"compute_capability": "" if cc is None else f"{cc[0]}.{cc[1]}"})()
    monkeypatch.setattr(jax, "devices", lambda *a: [dev])
    assert _pallas.held(G, Hp) == n
    assert _pallas.held(G, Hp, hold=False) == 0 and _pallas.held(G, Hp, hold=True) == G
    for k, m in [(0, 0), (2, min(2, G)), (G + 1, G)]:  # an int: the first min(k, G) blocks
        assert _pallas.held(G, Hp, hold=k) == m


def test_which_cells_the_kernels_take(monkeypatch):
    assert _pallas.padded(100) == 128 and _pallas.padded(128) == 128 and _pallas.padded(1) == 16
    for cell in ("simple", "gru"):
        assert gpu.unsupported(cell, "tanh", jnp.float32, 100) is None
    assert "tanh" in gpu.unsupported("simple", "relu", jnp.float32, 100)
    # the LSTM's kernels where at least 2 of its 4 blocks are held: not with no GPU attached
    # (64 KiB assumed) or on an A100 (1 held), yes on an H100 / H200 (2) or at H <= 64 (all)
    for smem, H, on in [(64, 100, False), (163, 100, False), (227, 100, True), (163, 64, True)]:
        monkeypatch.setattr(_pallas, "_smem_kib", lambda smem=smem: smem)
        assert (gpu.unsupported("lstm", "", jnp.float32, H) is None) is on, (smem, H)
    assert gpu.unsupported("lstm", "", jnp.float32, 100, gpu.Config(hold=2)) is None
    only_lstm = gpu.Config(cells=frozenset({"lstm"}), hold=False)  # a set forces cells on and off
    assert gpu.unsupported("lstm", "", jnp.float32, 100, only_lstm) is None
    assert "leaves out 'simple'" in gpu.unsupported("simple", "tanh", jnp.float32, 100, only_lstm)
    assert "float32; got float64" in gpu.unsupported("simple", "tanh", jnp.float64, 100)
    assert gpu.unsupported("simple", "tanh", jnp.float64, 100, gpu.Config(interpret=True)) is None
    assert "up to 128; got 129" in gpu.unsupported("simple", "tanh", jnp.float32, 129)
    monkeypatch.setenv(_pallas.SWITCH, "0")
    assert "off (JAXRNN_GPU_KERNELS=0)" in gpu.unsupported("simple", "tanh", jnp.float32, 100)


def test_kernels_off_without_pallas_triton(monkeypatch):
    """A jax without Pallas's Triton backend: the kernels are off (auto takes the XLA loops
    on a GPU) instead of failing when the step is lowered."""
    import builtins

    real = builtins.__import__

    def no_triton(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "jax.experimental.pallas.triton" or (
            name == "jax.experimental.pallas" and "triton" in (fromlist or ())
        ):
            raise ImportError("no Triton backend in this jax")
        return real(name, globals, locals, fromlist, level)

    assert _pallas.enabled()
    monkeypatch.setattr(builtins, "__import__", no_triton)
    assert not _pallas.enabled()
    assert "Triton backend is missing" in gpu.unsupported("simple", "tanh", jnp.float32, 100)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("hold", [None, False, 2], ids=["where-they-fit", "reread", "held2"])
def test_seed_step_lowers_to_triton_kernels_for_cuda(name, hold):
    """Lowered for CUDA (no GPU needed: cross-platform lowering through ``jax.export``), the
    seed training step runs its recurrence in two Triton kernels (forward, backward) and no
    XLA loop; Pallas's Triton lowering accepts every kernel at H = 100, with the weights held
    across the loop where they fit, re-read, or 2 blocks held."""
    from jax import export

    b = backends.Backend("pallas", gpu=gpu.Config(cells=ALL, hold=hold, cross_platform=True))
    cfg = models.ClassifierConfig(cell=name, backend=b)
    params = models.init_classifier(jax.random.key(0), cfg, dtype=jnp.float32)
    tokens = jax.ShapeDtypeStruct((64, 250), jnp.int32)
    labels = jax.ShapeDtypeStruct((64,), jnp.float32)
    step = jax.jit(jax.grad(lambda p, x, y: models.classifier_loss(cfg, p, x, y)))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    text = export.export(step, platforms=["cuda"], disabled_checks=[triton])(
        params, tokens, labels
    ).mlir_module()
    assert text.count("custom_call @__gpu$xla.gpu.triton") == 2
    assert "stablehlo.while" not in text


def test_vmap_lowers_to_triton_kernels_for_cuda(key):
    """The batched kernels (an extra grid axis) pass Pallas's Triton lowering too."""
    from jax import export

    b = backends.Backend("pallas", gpu=gpu.Config(cells=ALL, cross_platform=True))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    xs = jax.ShapeDtypeStruct((4, 2, 6, 3), jnp.float32)
    for name in ("simple", "lstm", "gru"):
        mod = cells.get(name)
        p = mod.init(key, 3, 8, dtype=jnp.float32)
        loss = lambda p, x, mod=mod: jnp.sum(rnn(mod.cell, p, x, backend=b)[1] ** 2)  # noqa: E731
        step = jax.jit(jax.vmap(jax.grad(loss), (None, 0)))
        text = export.export(step, platforms=["cuda"], disabled_checks=[triton])(
            p, xs
        ).mlir_module()
        assert text.count("custom_call @__gpu$xla.gpu.triton") == 2, name


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (the kernels compiled)")
@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("hold", [None, False, 2], ids=["held-where-they-fit", "reread", "held2"])
def test_compiled_kernels_on_a_gpu_equal_float64(name, hold, key):
    """On a GPU: the Triton-compiled kernels (every cell's) through ``rnn`` with lengths and
    reverse, float32 at "highest" matmul precision, against ``scan`` in float64 on the CPU."""
    mod = cells.get(name)
    B, T, D, H = 20, 30, 8, 100  # H 100 -> 128, B 20 -> two batch tiles
    p = mod.init(key, D, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    lengths = jnp.asarray(np.random.default_rng(3).integers(0, T + 1, B))

    def loss(b, p, xs, lengths):
        carry, ys = rnn(mod.cell, p, xs, lengths=lengths, reverse=True, backend=b)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

    b = backends.Backend("pallas", gpu=gpu.Config(cells=ALL, hold=hold))
    step = jax.jit(jax.value_and_grad(lambda p, x, n: loss(b, p, x, n), (0, 1)))
    f32 = jax.tree.map(lambda a: a.astype(jnp.float32), (p, xs))
    assert "triton" in step.lower(*f32, lengths).as_text()  # the kernels, not the XLA loops
    with jax.default_matmul_precision("highest"):
        got = step(*f32, lengths)
    cpu = jax.devices("cpu")[0]
    plain = jax.jit(jax.value_and_grad(lambda p, x, n: loss("scan", p, x, n), (0, 1)))
    want = plain(*jax.device_put((p, xs, lengths), cpu))  # runs where its inputs are: the CPU
    assert_trees_close(got, want, rtol=2e-4, atol=2e-5)
