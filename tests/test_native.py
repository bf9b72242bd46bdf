"""The hand-written CPU kernels (jaxrnn.native) against NumPy float64 and the XLA loops.

They run where the CPU has AVX-512 (CI's does); there a failed build fails these tests
rather than skipping them.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, fast, models, native, rnn
from jaxrnn.runtime import cpu_has_avx512

pytestmark = pytest.mark.skipif(not cpu_has_avx512(), reason="native kernels need AVX-512")

ACTS = {
    "tanh": (np.tanh, lambda h: 1 - h * h),
    "sigmoid": (lambda a: 1 / (1 + np.exp(-a)), lambda h: h * (1 - h)),
    "relu": (lambda a: np.maximum(a, 0), lambda h: (h > 0) * 1.0),
    "identity": (lambda a: a, np.ones_like),
}
# (T, B, H): one row / one unit; H not a multiple of 16 (masked columns), B not a multiple of
# the 8-row blocks, H above one 48-column tile, the seed size. The LSTM forward packs a last
# group of H % 16 <= 4 units into one vector: H = 1 (nothing else), 130, 100; H = 7 unpacked.
# (37, 2, 24): a chunk of two rows, whose dW_h rows are gathered 8 steps at a time
# (OuterWindow; 37 steps = 4 windows + 5). H = 24 / 64 (and the gated panels of H = 7, 16, 64):
# padded widths of an even number of 64-byte lines, stored with one line more per row
# (rnn_cpu.cc PanelStride) that the tiles never read.
SHAPES = [(1, 1, 1), (3, 5, 7), (6, 9, 16), (37, 2, 24), (4, 3, 64), (7, 33, 130), (20, 64, 100)]


@pytest.fixture(scope="module", autouse=True)
def built():
    native.build()  # raises NativeUnavailable (with the compiler's output) if it cannot
    assert native.available(), native.unavailable_reason()


def _data(T, B, H, V=None, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(V, H) if V else (T, B, H))
    idx = rng.integers(0, V, size=(T, B)) if V else None
    W = rng.normal(size=(H, H)) / np.sqrt(H)
    h0 = rng.normal(size=(B, H)) * 0.5
    return U, idx, W, h0


def _np_forward(U, idx, W, h0, act):
    f = ACTS[act][0]
    S = [h0]
    for t in range(idx.shape[0] if idx is not None else U.shape[0]):
        u = U[idx[t]] if idx is not None else U[t]
        S.append(f(u + S[-1] @ W))
    return np.stack(S)


def _np_backward(S, W, g, act, idx=None, V=0):
    d = ACTS[act][1]
    T = S.shape[0] - 1
    D = np.zeros_like(S)
    for t in range(T - 1, -1, -1):
        gt = g[t] if g.ndim == 3 else (g if t == T - 1 else 0.0)
        D[t] = (gt + D[t + 1] @ W.T) * d(S[t + 1])
    dW = np.einsum("tbk,tbj->kj", S, D)
    dTable = None
    if idx is not None:
        dTable = np.zeros((V, S.shape[2]))
        np.add.at(dTable, idx.reshape(-1), D[:-1].reshape(-1, S.shape[2]))
    return D, dW, dTable


def _close(got, want, tol=1e-5):
    """float32 against float64: errors relative to the largest entry (1 for small ones)."""
    scale = 1.0 + np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got) / scale, want / scale, rtol=tol, atol=tol)


def _f32(*xs):
    return [None if x is None else jnp.asarray(x, jnp.float32) for x in xs]


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("table", [False, True])
def test_forward_matches_numpy(shape, act, table):
    T, B, H = shape
    U, idx, W, h0 = _data(T, B, H, V=11 if table else None)
    ids = None if idx is None else jnp.asarray(idx, jnp.int32)
    S = native.simple_forward(*_f32(U), ids, *_f32(W, h0), act)
    ref = _np_forward(U, idx, W, h0, act)
    assert S.shape == (T + 1, B, H) and S.dtype == jnp.float32
    _close(S, ref)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("last_only", [False, True])
def test_backward_matches_numpy(shape, act, last_only, fused, monkeypatch):
    """D, dW_h (accumulated in the loop, or by XLA after it as for large H) and dTable."""
    monkeypatch.setattr(native, "fuse_dw", lambda H, G: fused)
    T, B, H = shape
    V = 13
    U, idx, W, h0 = _data(T, B, H, V=V, seed=1)
    S = _np_forward(U, idx, W, h0, act)
    rng = np.random.default_rng(2)
    g = rng.normal(size=(B, H) if last_only else (T, B, H))
    D, dW, dTable = native.simple_backward(
        *_f32(S, W, g), act, jnp.asarray(idx, jnp.int32), vocab=V
    )
    D_ref, dW_ref, dTable_ref = _np_backward(S, W, g, act, idx, V)
    _close(D, D_ref)
    _close(dW, dW_ref)
    _close(dTable, dTable_ref)
    _, _, none = native.simple_backward(*_f32(S, W, g), act)
    assert none is None


def test_tanh_accuracy_over_range_and_nan():
    """The kernel's own tanh (expm1-based) against NumPy's, from -30 to 30, and NaN kept."""
    a = np.concatenate([np.linspace(-30, 30, 6001), [1e-30, -1e-8, 1e-4, 0.0, np.nan]])
    U = a.reshape(1, 1, -1)
    H = U.shape[-1]
    U32, W, h0 = _f32(U, np.zeros((H, H)), np.zeros((1, H)))
    S = native.simple_forward(U32, None, W, h0, "tanh")
    out = np.asarray(S[1, 0])
    ref = np.tanh(a.astype(np.float32).astype(np.float64))
    finite = ~np.isnan(a)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=3e-7, atol=1e-37)
    assert np.isnan(out[~finite]).all()
    assert out[np.argmax(a == 30)] == 1.0 and out[np.argmax(a == -30)] == -1.0


def test_sigmoid_accuracy_over_range_and_nan():
    """The kernel's own sigmoid (exp-based; the LSTM's i, f, o and the GRU's z, r gates) against
    float64 1 / (1 + exp(-x)), relative error, from -110 to 110 (where it underflows to 0 and
    rounds to 1), +-inf and NaN kept."""
    a = np.concatenate(
        [np.linspace(-110, 110, 22001), [1e-30, -1e-8, 0.0, np.inf, -np.inf, np.nan]]
    )
    U = a.reshape(1, 1, -1)
    H = U.shape[-1]
    U32, W, h0 = _f32(U, np.zeros((H, H)), np.zeros((1, H)))
    S = native.simple_forward(U32, None, W, h0, "sigmoid")
    out = np.asarray(S[1, 0], np.float64)
    x = a.astype(np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        ref = 1.0 / (1.0 + np.exp(-x))
    finite = ~np.isnan(a)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=3e-7, atol=1e-37)
    assert np.isnan(out[~finite]).all()
    assert (out[a == np.inf] == 1.0).all() and (out[a == -np.inf] == 0.0).all()
    assert (out[a == 0.0] == 0.5).all() and (out[a <= -104] == 0.0).all()


def test_thread_count_does_not_change_the_states():
    """Rows are computed by one thread each, in the same order: bitwise-equal S and D; dW and
    the table's gradient sum one partial per chunk of rows (only the float32 order changes)."""
    U, idx, W, h0 = _data(40, 64, 100, V=50)
    args = (jnp.asarray(U, jnp.float32), jnp.asarray(idx, jnp.int32), *_f32(W, h0))
    S1 = native.simple_forward(*args, "tanh", threads=1)
    g = jnp.asarray(np.random.default_rng(3).normal(size=(40, 64, 100)), jnp.float32)
    D1, dW1, dT1 = native.simple_backward(S1, args[2], g, "tanh", args[1], 50, threads=1)
    for threads in (2, 3, 16):
        S = native.simple_forward(*args, "tanh", threads=threads)
        np.testing.assert_array_equal(np.asarray(S), np.asarray(S1))
        D, dW, dT = native.simple_backward(S, args[2], g, "tanh", args[1], 50, threads=threads)
        np.testing.assert_array_equal(np.asarray(D), np.asarray(D1))
        _close(dW, np.asarray(dW1, np.float64), tol=1e-6)
        _close(dT, np.asarray(dT1, np.float64), tol=1e-6)


@pytest.mark.parametrize("H", [7, 100, 130])
def test_a_row_alone_equals_the_same_row_in_a_batch(H):
    """Batch rows never interact, and a chunk of 1-2 rows (B = 1 inference) runs wider
    register tiles than a full block (one row with H = 100, a panel above L1: two column tiles
    taken in alternating order step by step): each element still sums its products in the
    same order, so a row computed alone is bitwise the row computed among 9 (S and D)."""
    U, _, W, h0 = _data(12, 9, H)
    U, W, h0 = _f32(U, W, h0)
    g = jnp.asarray(np.random.default_rng(4).normal(size=(12, 9, H)), jnp.float32)
    S = native.simple_forward(U, None, W, h0, "tanh", threads=1)
    D = native.simple_backward(S, W, g, "tanh", threads=1)[0]
    for rows in (np.array([4]), np.array([7, 8])):
        Sb = native.simple_forward(U[:, rows], None, W, h0[rows], "tanh", threads=1)
        np.testing.assert_array_equal(np.asarray(Sb), np.asarray(S[:, rows]))
        Db = native.simple_backward(Sb, W, g[:, rows], "tanh", threads=1)[0]
        np.testing.assert_array_equal(np.asarray(Db), np.asarray(D[:, rows]))


def test_out_of_range_ids_read_nan_and_add_nothing():
    """As jnp.take (fill) and XLA's scatter (drop): row -1 / V gives NaN states, no update."""
    U, idx, W, h0 = _data(3, 4, 5, V=6)
    idx[1, 2], idx[2, 0] = -1, 6
    S = np.asarray(
        native.simple_forward(*_f32(U), jnp.asarray(idx, jnp.int32), *_f32(W, h0), "tanh")
    )
    assert np.isnan(S[2, 2]).all() and np.isnan(S[3, 0]).all() and not np.isnan(S[1]).any()
    Sc = np.nan_to_num(S)
    g = np.ones((3, 4, 5))
    _, _, dT = native.simple_backward(*_f32(Sc, W, g), "tanh", jnp.asarray(idx, jnp.int32), vocab=6)
    _, _, dT_ref = _np_backward(Sc, W, g, "tanh", np.where((idx >= 0) & (idx < 6), idx, 0), 6)
    D_ref = _np_backward(Sc, W, g, "tanh")[0]
    dT_ref[0] -= D_ref[1, 2] + D_ref[2, 0]  # the two dropped updates were put on row 0 above
    np.testing.assert_allclose(np.asarray(dT), dT_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_table_gradient_equals_numpy_scatter_rows_never_hit_included(threads):
    """The table's gradient accumulated in the loop (chunk 0 of the rows into the table
    itself, chunks 1.. into compact buffers, added up at the end; a row's first update is a
    copy): NumPy's scatter, rows never hit (zeros) and out-of-range ids (dropped) included."""
    T, B, H, V = 30, 24, 80, 4000  # B = 24: three chunks of 8 rows with threads=3
    U, idx, W, h0 = _data(T, B, H, V=V, seed=11)
    idx = idx % 1500  # rows 1500.. are never hit
    idx[3, 4], idx[7, 0] = -2, V
    S = np.nan_to_num(
        np.asarray(
            native.simple_forward(*_f32(U), jnp.asarray(idx, jnp.int32), *_f32(W, h0), "tanh")
        )
    )
    g = np.random.default_rng(12).normal(size=(T, B, H))
    # a first call that fills every row, freed: the allocator tends to hand its buffer to the
    # next call, so rows the kernel forgot to zero would show its numbers
    every = jnp.asarray(np.arange(T * B).reshape(T, B) * 7 % V, jnp.int32)
    first = native.simple_backward(*_f32(S, W, g), "tanh", every, vocab=V, threads=threads)
    assert np.asarray(first[2])[1500:].any()
    del first
    ids = jnp.asarray(idx, jnp.int32)
    _, _, dT = native.simple_backward(*_f32(S, W, g), "tanh", ids, vocab=V, threads=threads)
    D_ref = _np_backward(S, W, g, "tanh")[0]
    ok = (idx >= 0) & (idx < V)
    dT_ref = np.zeros((V, H))
    np.add.at(dT_ref, idx[ok], D_ref[:T][ok])
    np.testing.assert_allclose(np.asarray(dT), dT_ref, rtol=1e-4, atol=1e-5)
    assert not np.asarray(dT)[1500:].any()


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("table", [False, True])
def test_simple_scan_gradients_native_vs_xla_loops(act, last_only, table, monkeypatch):
    """fast.simple_scan (float32) takes the kernels; the same function with them switched
    off runs the XLA loops: values and all gradients agree."""
    T, B, H, V = 30, 8, 24, 40
    U, idx, W, h0 = _data(T, B, H, V=V if table else None, seed=4)
    ids = None if idx is None else jnp.asarray(idx, jnp.int32)
    w = jnp.asarray(np.random.default_rng(5).normal(size=(B, H) if last_only else (T, B, H)), jnp.float32)  # fmt: skip

    def loss(U, W, h0):
        out = fast.simple_scan(U, W, h0, ids, act, 1, last_only)
        return jnp.sum(out * w)

    args = _f32(U, W, h0)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).as_text()
    assert "jaxrnn_simple_forward" in hlo and "jaxrnn_simple_backward" in hlo
    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
    monkeypatch.setattr(fast, "_use_native", lambda *args: False)
    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).as_text()
    assert "jaxrnn_simple" not in hlo
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = 1 + float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(
            np.asarray(a) / scale, np.asarray(b) / scale, rtol=1e-5, atol=2e-6
        )


def test_bad_inputs_raise_in_python():
    U, idx, W, h0 = _f32(*_data(4, 3, 5))
    with pytest.raises(ValueError, match=r"U must be \[T, B, H\] = \[T, 3, 5\]; got \(4, 3, 6\)"):
        native.simple_forward(jnp.zeros((4, 3, 6), jnp.float32), None, W, h0, "tanh")
    with pytest.raises(ValueError, match=r"W_h must be \[5, 5\]; got \(5, 4\)"):
        native.simple_forward(U, None, W[:, :4], h0, "tanh")
    with pytest.raises(ValueError, match=r"with idx, U must be a table \[V, 5\] and idx \[T, 3\]"):
        native.simple_forward(U, jnp.zeros((4, 2), jnp.int32), W, h0, "tanh")
    with pytest.raises(TypeError, match="float32; got float64"):
        native.simple_forward(U.astype(jnp.float64), None, W, h0, "tanh")
    with pytest.raises(ValueError, match="activation must be one of"):
        native.simple_forward(U, None, W, h0, "gelu")
    S = native.simple_forward(U, None, W, h0, "tanh")
    with pytest.raises(ValueError, match=r"g \[T, B, H\] or \[B, H\]; got .* g \(4, 5\)"):
        native.simple_backward(S, W, jnp.zeros((4, 5), jnp.float32), "tanh")


def test_kernels_only_for_weights_that_fit_in_cache(monkeypatch):
    # W_h [H, G H] float32 up to native.MAX_WEIGHT_BYTES: 8 MiB on AMD Zen 4, 3 MiB elsewhere
    assert native.max_weight_bytes("AuthenticAMD", "25") == 8 << 20
    assert native.max_weight_bytes("GenuineIntel", "6") == 3 << 20
    assert native.max_weight_bytes("AuthenticAMD", "26") == 3 << 20
    assert native.MAX_WEIGHT_BYTES == native.max_weight_bytes()
    monkeypatch.setattr(native, "MAX_WEIGHT_BYTES", 3 << 20)
    assert native.supports(jnp.float32, "tanh", 886, 1) and native.supports(
        jnp.float32, "tanh", 512, 3
    )
    assert native.supports(jnp.float32, "tanh", 443, 4)
    assert not native.supports(jnp.float32, "tanh", 887, 1)
    assert not native.supports(jnp.float32, "tanh", 513, 3)
    assert not native.supports(jnp.float32, "tanh", 444, 4)
    assert not native.supports(jnp.float64, "tanh", 100, 1)
    assert not native.supports(jnp.float32, "gelu", 100, 1)


def test_fused_weight_gradient_only_where_it_fits_in_cache():
    assert native.fuse_dw(100, 1) and native.fuse_dw(100, 4) and native.fuse_dw(256, 1)
    assert not native.fuse_dw(257, 1) and not native.fuse_dw(512, 3) and not native.fuse_dw(129, 4)


@pytest.mark.slow  # a full build of the kernels into a fresh folder (~28 s on the CI machine)
def test_build_is_cached_and_switch_turns_it_off(tmp_path):
    first = native.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
    code = "from jaxrnn import native; print(native.available(), native.unavailable_reason())"
    env = {**os.environ, native.SWITCH: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False turned off (JAXRNN_NATIVE=0)", out.stderr


def test_build_error_names_the_compiler_output(tmp_path, monkeypatch):
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    with pytest.raises(native.NativeUnavailable, match="compiling bad.cc failed"):
        native.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.so*")) and not list(
        (tmp_path / "cache").glob("tmp*")
    )


# ----------------------------------------------------------------------------------- LSTM


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _np_lstm_forward(U, idx, W, h0, c0):
    H = h0.shape[1]
    hs, cs, gs = [h0], [c0], []
    for t in range(idx.shape[0] if idx is not None else U.shape[0]):
        z = (U[idx[t]] if idx is not None else U[t]) + hs[-1] @ W
        i, f, g, o = _sig(z[:, :H]), _sig(z[:, H : 2 * H]), np.tanh(z[:, 2 * H : 3 * H]), _sig(z[:, 3 * H :])  # fmt: skip
        cs.append(f * cs[-1] + i * g)
        hs.append(o * np.tanh(cs[-1]))
        gs.append(np.concatenate([i, f, g, o], axis=1))
    return np.stack(hs), np.stack(cs), np.stack(gs)


def _lstm_data(T, B, H, V=None, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(V, 4 * H) if V else (T, B, 4 * H))
    idx = rng.integers(0, V, size=(T, B)) if V else None
    W = rng.normal(size=(H, 4 * H)) / np.sqrt(H)
    return U, idx, W, rng.normal(size=(B, H)) * 0.5, rng.normal(size=(B, H)) * 0.5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("table", [False, True])
def test_lstm_forward_matches_numpy(shape, table):
    T, B, H = shape
    U, idx, W, h0, c0 = _lstm_data(T, B, H, V=11 if table else None)
    ids = None if idx is None else jnp.asarray(idx, jnp.int32)
    S_h, S_c, G = native.lstm_forward(*_f32(U), ids, *_f32(W, h0, c0))
    assert G.shape == (T, B, 4 * H)
    G = native.gate_blocks(G, H)  # stored per 16 units
    for got, want in zip((S_h, S_c, G), _np_lstm_forward(U, idx, W, h0, c0), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("outputs", ["last", "hs", "hs+cs"])
@pytest.mark.parametrize("table", [False, True])
def test_lstm_scan_gradients_native_vs_xla_loops(outputs, table, fused, monkeypatch):
    """fast.lstm_scan (float32) on the kernels and on the XLA loops: values and gradients;
    ``outputs``: only the final carry, also every ``h_t``, also every ``c_t`` (``with_cells``:
    the cotangents of the cell states enter the backward loop at every step)."""
    monkeypatch.setattr(native, "fuse_dw", lambda H, G: fused)
    T, B, H, V = 25, 9, 20, 30
    U, idx, W, h0, c0 = _lstm_data(T, B, H, V=V if table else None, seed=7)
    ids = None if idx is None else jnp.asarray(idx, jnp.int32)
    rng = np.random.default_rng(8)
    w_hs, w_cs = _f32(rng.normal(size=(T, B, H)), rng.normal(size=(T, B, H)))
    w_h, w_c = _f32(rng.normal(size=(B, H)), rng.normal(size=(B, H)))
    last_only, with_cells = outputs == "last", outputs == "hs+cs"

    def loss(U, W, h0, c0):
        out = fast.lstm_scan(U, W, h0, c0, ids, 1, last_only, with_cells)
        (h_T, c_T), extra = (out, 0.0) if last_only else (out[1], jnp.sum(out[0] * w_hs))
        if with_cells:
            extra = extra + jnp.sum(out[2] * w_cs)
        return jnp.sum(h_T * w_h) + jnp.sum(c_T * w_c) + extra

    args = _f32(U, W, h0, c0)
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
    hlo = jax.jit(grad).lower(*args).as_text()
    assert "jaxrnn_lstm_forward" in hlo and "jaxrnn_lstm_backward" in hlo
    got = jax.jit(grad)(*args)
    monkeypatch.setattr(native, "supports", lambda *args: False)
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))  # a new function: traced anew
    assert "jaxrnn_lstm" not in jax.jit(grad).lower(*args).as_text()
    want = jax.jit(grad)(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(a, np.asarray(b, np.float64))


@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("case", ["full", "lengths-dropout", "rows"])
def test_seed_classifier_gradients_native_vs_float64_plain(cell, case):
    """The seed model's float32 fast gradients (kernels) against the plain model in float64;
    ``lengths-dropout``: post-padded reviews (lengths) and input dropout, as
    configs/imdb_lstm.yaml; ``rows``: fewer tokens than the vocabulary (B = 4: the rows
    projected by ``native.rows_projection`` instead of the whole table)."""
    masked = case == "lengths-dropout"
    B = 4 if case == "rows" else 16
    cfg = models.ClassifierConfig(
        vocab_size=300, embed_dim=8, hidden_size=20, cell=cell, dropout=0.5 if masked else 0.0
    )
    rng = np.random.default_rng(6)
    tokens = jnp.asarray(rng.integers(0, 300, size=(B, 40)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 2, size=(B,)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, 41, size=(B,)), jnp.int32) if masked else None
    key = jax.random.key(4) if masked else None
    p64 = models.init_classifier(jax.random.key(1), cfg, dtype=jnp.float64)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p64)
    loss32 = jax.jit(
        lambda p: fast.classifier_loss(
            cfg, p, tokens, labels, lengths, key=key, kernels=fast.ALL_KERNELS
        )
    )
    hlo = jax.jit(jax.grad(loss32)).lower(p32).as_text()
    assert f"jaxrnn_{cell}_backward" in hlo
    assert ("jaxrnn_rows_projection" in hlo) == (case == "rows")
    g32 = jax.jit(jax.grad(loss32))(p32)
    g64 = jax.grad(lambda p: models.classifier_loss(cfg, p, tokens, labels, lengths, key=key))(p64)
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g64), strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=2e-5)


@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
@pytest.mark.parametrize(
    "T,remat,with_lengths,reverse",
    [
        (30, None, True, False),
        (30, None, True, True),
        (1, None, False, False),  # one step: the GRU's one-row D once read as the input rows
        (1, None, True, True),
        (15, 7, False, False),  # segments of 7, 7 and 1 steps, each a kernel call
        (15, 7, True, True),
        (30, "sqrt", True, False),
    ],
)
def test_fast_rnn_native_vs_float64_plain(cell, T, remat, with_lengths, reverse):
    """fast.rnn in float32 on the kernels — with ``lengths`` (for the LSTM the cell states'
    cotangents then enter the backward kernel), ``reverse``, ``remat`` (kernel calls per
    checkpointed segment) — against the plain path without remat in float64."""
    mod = cells.get(cell)
    B, D, H = 12, 7, 20
    rng = np.random.default_rng(11)
    p64 = mod.init(jax.random.key(2), D, H, dtype=jnp.float64)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p64)
    xs = rng.normal(size=(B, T, D))
    lengths = jnp.asarray(rng.integers(0, T + 1, size=B), jnp.int32) if with_lengths else None
    w = np.cos(np.arange(B * T * H)).reshape(B, T, H)

    def loss(run, p, xs):
        carry, ys = run(mod.cell, p, xs, lengths=lengths, reverse=reverse)
        return jnp.sum(ys * w.astype(ys.dtype)) + sum(
            jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry)
        )

    run32 = functools.partial(fast.rnn, kernels=fast.ALL_KERNELS, remat=remat)
    grad32 = jax.jit(jax.value_and_grad(lambda *a: loss(run32, *a), argnums=(0, 1)))
    (x32,) = _f32(xs)
    assert f"jaxrnn_{cell}_backward" in grad32.lower(p32, x32).as_text()
    got = grad32(p32, x32)
    want = jax.value_and_grad(lambda *a: loss(rnn, *a), argnums=(0, 1))(p64, jnp.asarray(xs))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(a, np.asarray(b), tol=2e-5)


def test_lstm_thread_count_does_not_change_the_states():
    T, B, H, V = 30, 64, 100, 50
    U, idx, W, h0, c0 = _lstm_data(T, B, H, V=V, seed=9)
    ids = jnp.asarray(idx, jnp.int32)
    U, W, h0, c0 = _f32(U, W, h0, c0)
    rng = np.random.default_rng(10)
    g_hs, g_hT, g_cT = _f32(rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H)))  # fmt: skip
    ref = None
    for threads in (1, 2, 3):
        S = native.lstm_forward(U, ids, W, h0, c0, threads=threads)
        out = native.lstm_backward(*S, W, g_hs, g_hT, g_cT, ids, V, threads=threads)
        exact = [*S, out[0], out[2]]  # states, gates, D, dc0: bitwise
        if ref is None:
            ref = (exact, out[1], out[3])
            continue
        for a, b in zip(exact, ref[0], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        _close(out[1], np.asarray(ref[1], np.float64), tol=1e-6)  # dW_h: per-chunk partials
        _close(out[3], np.asarray(ref[2], np.float64), tol=1e-6)  # dTable: the same


@pytest.mark.parametrize("rows", ["first", "inputs"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("table", [True, False], ids=["table", "rows"])
@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
def test_backward_gradient_rows(cell, table, fused, rows, monkeypatch):
    """``rows="first"``: the [T + 1, B, G H] gradient stays inside the call (two rows of it)
    and only its first row comes back (with a table, whose gradient is all that needs the
    rest); ``"inputs"``: its first T rows come back (the cotangent of U without the zero
    row). Everything else is bitwise the same as with ``rows="all"``. Where ``dW_h`` is
    computed outside the call (not fused) the buffer comes back whole; the GRU's
    recurrent-side D always comes back whole (its A is the input-side gradient)."""
    monkeypatch.setattr(native, "fuse_dw", lambda H, G: fused)
    T, B, H, V = 20, 12, 24, 40
    rng = np.random.default_rng(13)
    if cell == "simple":
        U, idx, W, h0 = _data(T, B, H, V=V if table else None, seed=13)
    elif cell == "lstm":
        U, idx, W, h0, c0 = _lstm_data(T, B, H, V=V if table else None, seed=13)
    else:
        U, idx, W, b, h0 = _gru_data(T, B, H, V=V if table else None, seed=13)
    ids = jnp.asarray(idx, jnp.int32) if table else None
    vocab = V if table else 0
    if cell == "simple":
        U, W, h0 = _f32(U, W, h0)
        S = native.simple_forward(U, ids, W, h0, "tanh")
        (g,) = _f32(rng.normal(size=(T, B, H)))
        run = lambda r: native.simple_backward(S, W, g, "tanh", ids, vocab, rows=r)  # noqa: E731
        which, kept = 0, not fused  # dW_h = S^T D outside: D comes back whole
    elif cell == "lstm":
        U, W, h0, c0 = _f32(U, W, h0, c0)
        S = native.lstm_forward(U, ids, W, h0, c0)
        g = _f32(rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H)))
        run = lambda r: native.lstm_backward(*S, W, *g, ids, vocab, rows=r)  # noqa: E731
        which, kept = 0, not fused  # dW_h = S_h^T D outside: D comes back whole
    else:
        U, W, b, h0 = _f32(U, W, b, h0)
        S = native.gru_forward(U, ids, W, b, h0)
        g = _f32(rng.normal(size=(T, B, H)))
        run = lambda r: native.gru_backward(*S, W, *g, ids, vocab, rows=r)  # noqa: E731
        which, kept = 1, False  # A
    full, part = run("all"), run(rows)
    G = full[which].shape[-1]
    assert full[which].shape == (T + 1, B, G)
    want = T + 1 if kept else {"first": 1, "inputs": T}[rows]
    assert part[which].shape == (want, B, G)
    np.testing.assert_array_equal(np.asarray(part[which]), np.asarray(full[which][:want]))
    for a, b in zip(full, part, strict=True):  # every other output bitwise the same
        if a is not full[which] and a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(full[which][0]).max()) > 0  # a real row, not zeros
    assert float(jnp.abs(full[which][-1]).max()) == 0  # the zero row D[T]
    with pytest.raises(ValueError, match="rows must be one of"):
        run("last")
    for i, (a, b_) in enumerate(zip(full, part, strict=True)):
        if i != which:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))


@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
def test_seed_training_step_temporaries_fit_a_thread_heap(cell):
    """The seed training step (B = 64, T = 250, H = 100, V = 5000, Adam) keeps XLA's per-step
    temporaries under 64 MiB, the most a glibc worker-thread heap holds: above that glibc maps
    and unmaps the buffer every step whatever the tunables (jaxrnn/runtime.py), ~340 page
    faults per LSTM step. Was 72 MB (LSTM) / 77 MB (GRU) before the gated backwards kept their
    table-only gradient inside the call."""
    import optax

    cfg = models.ClassifierConfig(vocab_size=5000, embed_dim=32, hidden_size=100, cell=cell)
    params = models.init_classifier(jax.random.key(0), cfg)
    tokens = jnp.zeros((64, 250), jnp.int32)
    labels = jnp.zeros((64,), jnp.float32)
    opt = optax.adam(1e-3)

    def step(p, s):
        loss, g = jax.value_and_grad(lambda p: fast.classifier_loss(cfg, p, tokens, labels))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params))
    assert f"jaxrnn_{cell}_backward" in lowered.as_text()
    temp = lowered.compile().memory_analysis().temp_size_in_bytes
    assert 0 < temp < 64 * 2**20, f"{cell}: {temp / 2**20:.1f} MiB of temporaries per step"


def test_lstm_bad_inputs_raise_in_python():
    U, _, W, h0, c0 = _f32(*_lstm_data(4, 3, 5))
    with pytest.raises(
        ValueError, match=r"lstm_forward: expected U \[T, B, 4H\].*got U \(4, 3, 19\)"
    ):
        native.lstm_forward(U[..., :19], None, W, h0, c0)
    with pytest.raises(ValueError, match=r"W_h \(5, 5\)"):
        native.lstm_forward(U, None, W[:, :5], h0, c0)
    S_h, S_c, G = native.lstm_forward(U, None, W, h0, c0)
    with pytest.raises(ValueError, match=r"lstm_backward: .* g_hT \(3, 4\)"):
        native.lstm_backward(S_h, S_c, G, W, None, h0[:, :4], c0)
    with pytest.raises(
        ValueError, match=r"gate_blocks: expected \[\.\.\., 4 x H = 24\]; got \(4, 3, 20\)"
    ):
        native.gate_blocks(G, 6)
    with pytest.raises(TypeError, match="float32; got float64"):
        native.lstm_forward(U.astype(jnp.float64), None, W, h0, c0)


# ------------------------------------------------------------------------------------ GRU


def _np_gru_forward(U, idx, W, b, h0):
    H = h0.shape[1]
    S, Sv = [h0], []
    for t in range(idx.shape[0] if idx is not None else U.shape[0]):
        a = U[idx[t]] if idx is not None else U[t]
        u = S[-1] @ W + b
        z, r = _sig(a[:, :H] + u[:, :H]), _sig(a[:, H : 2 * H] + u[:, H : 2 * H])
        n = np.tanh(a[:, 2 * H :] + r * u[:, 2 * H :])
        S.append(z * S[-1] + (1 - z) * n)
        Sv.append(np.concatenate([z, r, n, u[:, 2 * H :]], axis=1))
    return np.stack(S), np.stack(Sv)


def _gru_data(T, B, H, V=None, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(V, 3 * H) if V else (T, B, 3 * H))
    idx = rng.integers(0, V, size=(T, B)) if V else None
    W = rng.normal(size=(H, 3 * H)) / np.sqrt(H)
    return U, idx, W, rng.normal(size=3 * H) * 0.3, rng.normal(size=(B, H)) * 0.5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("table", [False, True])
def test_gru_forward_matches_numpy(shape, table):
    T, B, H = shape
    U, idx, W, b, h0 = _gru_data(T, B, H, V=11 if table else None)
    ids = None if idx is None else jnp.asarray(idx, jnp.int32)
    S, Sv = native.gru_forward(*_f32(U), ids, *_f32(W, b, h0))
    assert Sv.shape == (T, B, 4 * H)
    Sv = native.gate_blocks(Sv, H)  # stored per 16 units
    for got, want in zip((S, Sv), _np_gru_forward(U, idx, W, b, h0), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("table", [False, True])
def test_gru_scan_gradients_native_vs_xla_loops(last_only, table, fused, monkeypatch):
    """fast.gru_scan (float32) on the kernels and on the XLA loops: values and gradients."""
    monkeypatch.setattr(native, "fuse_dw", lambda H, G: fused)
    T, B, H, V = 25, 9, 20, 30
    U, idx, W, b, h0 = _gru_data(T, B, H, V=V if table else None, seed=11)
    ids = None if idx is None else jnp.asarray(idx, jnp.int32)
    w = jnp.asarray(np.random.default_rng(12).normal(size=(B, H) if last_only else (T, B, H)), jnp.float32)  # fmt: skip

    def loss(U, W, b, h0):
        return jnp.sum(fast.gru_scan(U, W, b, h0, ids, 1, last_only) * w)

    args = _f32(U, W, b, h0)
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
    hlo = jax.jit(grad).lower(*args).as_text()
    assert "jaxrnn_gru_forward" in hlo and "jaxrnn_gru_backward" in hlo
    got = jax.jit(grad)(*args)
    monkeypatch.setattr(native, "supports", lambda *args: False)
    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))  # a new function: traced anew
    assert "jaxrnn_gru" not in jax.jit(grad).lower(*args).as_text()
    want = jax.jit(grad)(*args)
    for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(a, np.asarray(b_, np.float64))


def test_gru_thread_count_does_not_change_the_states():
    T, B, H, V = 30, 64, 100, 50
    U, idx, W, b, h0 = _gru_data(T, B, H, V=V, seed=13)
    ids = jnp.asarray(idx, jnp.int32)
    U, W, b, h0 = _f32(U, W, b, h0)
    g = jnp.asarray(np.random.default_rng(14).normal(size=(T, B, H)), jnp.float32)
    ref = None
    for threads in (1, 2, 3):
        S, Sv = native.gru_forward(U, ids, W, b, h0, threads=threads)
        D, A, carry, dW, db, dT = native.gru_backward(S, Sv, W, g, ids, V, threads=threads)
        # db_h: D summed in the call (per-chunk partials), D[:1] alone when asked for
        _close(db, np.asarray(D, np.float64).sum((0, 1)), tol=1e-6)
        D1 = native.gru_backward(S, Sv, W, g, ids, V, threads=threads, d_rows="first")[0]
        np.testing.assert_array_equal(np.asarray(D1), np.asarray(D[:1]))
        exact = [S, Sv, D, A, carry]
        if ref is None:
            ref = (exact, dW, dT, db)
            continue
        for x, y in zip(exact, ref[0], strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        _close(dW, np.asarray(ref[1], np.float64), tol=1e-6)  # per-chunk partials
        _close(dT, np.asarray(ref[2], np.float64), tol=1e-6)
        _close(db, np.asarray(ref[3], np.float64), tol=1e-6)


def test_gru_bad_inputs_raise_in_python():
    U, _, W, b, h0 = _f32(*_gru_data(4, 3, 5))
    with pytest.raises(ValueError, match=r"gru_forward: expected .* got .* b_h \(14,\)"):
        native.gru_forward(U, None, W, b[:14], h0)
    S, Sv = native.gru_forward(U, None, W, b, h0)
    with pytest.raises(ValueError, match=r"gru_backward: .* g \(3, 4\)"):
        native.gru_backward(S, Sv, W, h0[:, :4])


@pytest.mark.slow  # two builds of the driver side by side: ~20 s
def test_kernel_benchmark_driver_builds_and_blocking_does_not_change_results():
    """benchmarks/kernels.py (the kernels' A/B harness) still builds against rnn_cpu.cc and runs
    every kernel; other register blockings (macros) give bitwise the same states and gradients:
    each output element sums its products in the same order whatever the tile."""
    from benchmarks import kernels as kb

    src = Path(native.SOURCE)
    builds = [
        ("shipped", src, []),  # with this CPU's native.tuning_defines()
        ("blocks4x4", src, ["JAXRNN_BLOCK_ROWS=4", "JAXRNN_BLOCK_VECS=4", "JAXRNN_LSTM_ROWS=4",
                            "JAXRNN_OUTER_ROWS=4", "JAXRNN_OUTER_VECS=5"]),
        ("blocks5x8", src, ["JAXRNN_LSTM_ROWS=5", "JAXRNN_OUTER_ROWS=8", "JAXRNN_OUTER_VECS=3"]),
    ]  # fmt: skip
    res = kb.measure(builds, list(kb.KERNELS), rounds=1, reps=1, shape=["12", "7", "40", "50"])
    for k in kb.KERNELS:
        a = res["shipped", k]
        assert len(a["ms"]) == 1 and a["ms"][0] > 0, k
        assert np.isfinite(float(a["checksum"])) and float(a["checksum"]) != 0.0, k
        for other in ("blocks4x4", "blocks5x8"):
            b = res[other, k]
            assert a["checksum"] == b["checksum"], (k, other, a["checksum"], b["checksum"])


def test_tuning_defines_per_cpu_and_explicit_macros_override_them(monkeypatch):
    """Register blocks per CPU core (AMD Zen 4: 6-row LSTM blocks, 8 x 3 dW tiles; others the
    source's defaults), and a macro given to compile_command replaces a tuned one of that name
    (benchmarks/kernels.py's --define builds) instead of adding a second -D."""
    assert "JAXRNN_LSTM_ROWS=6" in native.tuning_defines("AuthenticAMD", "25")
    assert native.tuning_defines("GenuineIntel", "6") == ()
    monkeypatch.setattr(native, "tuning_defines", lambda: ("JAXRNN_LSTM_ROWS=6", "JAXRNN_X=1"))
    monkeypatch.setattr(native, "compiler", lambda: "c++")
    cmd = native.compile_command(Path("a.cc"), Path("a.so"), defines=("JAXRNN_LSTM_ROWS=5",))
    assert [c for c in cmd if c.startswith("-D")] == ["-DJAXRNN_LSTM_ROWS=5", "-DJAXRNN_X=1"]


@pytest.mark.slow  # two more builds of the kernels, two small training steps each: ~40 s
def test_native_ab_runs_each_build_under_target_names_of_its_own(tmp_path):
    """benchmarks/native_ab.py (A/B of kernel builds inside the training step): calls traced
    inside ``native.variant(suffix)`` use the build registered with that suffix (its names in
    the lowered program), calls outside the default build; two builds of one source train
    bitwise alike."""
    from benchmarks import native_ab

    native.register_variant(native_ab.build(native.SOURCE, tmp_path / "v.so"), "_t")
    with pytest.raises(ValueError, match="suffix"):
        native.register_variant(tmp_path / "v.so", "")
    U, _, W, h0, c0 = _f32(*_lstm_data(5, 3, 20))
    f = lambda U, W, h0, c0: native.lstm_forward(U, None, W, h0, c0)  # noqa: E731
    with native.variant("_t"):
        fv = jax.jit(f)
        text_v, out_v = fv.lower(U, W, h0, c0).as_text(), fv(U, W, h0, c0)
    assert "jaxrnn_lstm_forward_t" in text_v
    g = lambda U, W, h0, c0: native.lstm_forward(U, None, W, h0, c0)  # noqa: E731
    assert "jaxrnn_lstm_forward_t" not in jax.jit(g).lower(U, W, h0, c0).as_text()  # a new f
    for a, b in zip(out_v, f(U, W, h0, c0), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    res = native_ab.measure(
        [native.SOURCE, native.SOURCE], ["lstm"], rounds=2, overrides=dict(B=8, T=6, H=20)
    )
    times, first = res["lstm"]["times"], res["lstm"]["first"]
    assert [len(t) for t in times] == [2, 2] and min(min(t) for t in times) > 0
    assert np.isfinite(first[0]) and first[0] != 0
    np.testing.assert_array_equal(first[0], first[1])


def test_profile_step_names_each_operation_and_counts_one_call_per_step():
    """benchmarks/profile_step.py on a small fast-path LSTM training step: every operation of
    the compiled step ran once per profiled step (the step has no loop left in XLA: the
    recurrence is the native kernels, named by their FFI targets from the compiled HLO); the
    executable's time is within the wall time of the profiled steps (a clock of its own), and
    its operations' (summed over the threads that ran them) within its time on every
    thread; op_names reads targets and opcodes from HLO text; summarize adds only the
    outermost operations of a thread (a loop's body ops are inside the loop's time) and
    leaves out other modules' operations, and takes the executable's time from the calling
    thread's outermost executor spans (hand-made events)."""
    from benchmarks import frameworks, profile_step

    hlo = """HloModule jit_step, entry_computation_layout={(f32[2]{0})->f32[2]{0}}
  %ffi_call.7 = (f32[3,2]{1,0}, f32[2]{0}) custom-call(f32[2]{0} %p), custom_call_target="jaxrnn_lstm_forward"
  ROOT %multiply_add_fusion.2 = f32[2]{0} fusion(f32[2]{0} %p), kind=kLoop, calls=%fused
  dot.3 = f32[2,2]{1,0} dot(f32[2,2]{1,0} a, f32[2,2]{1,0} b), lhs_contracting_dims={1}"""
    assert profile_step.op_names(hlo) == {
        "ffi_call.7": "jaxrnn_lstm_forward", "multiply_add_fusion.2": "fusion", "dot.3": "dot"
    }  # fmt: skip
    # a loop of 300 us holding two 100 us body ops, then a 50 us op, on thread 1; a 70 us op
    # on thread 2 at the same time; another module's op: per step (2 steps) 210 us outermost
    ev = lambda name, tid, ts, dur, module="jit_step": dict(  # noqa: E731
        name=name, tid=tid, ts=ts, dur=dur, args=dict(hlo_module=module, hlo_op=name)
    )
    events = [ev("while.1", 1, 0, 300), ev("dot.2", 1, 10, 100), ev("fusion.3", 1, 150, 100),
              ev("fusion.4", 1, 300, 50), ev("fusion.5", 2, 20, 70), ev("dot.9", 1, 400, 999, "other"),
              dict(name=profile_step.EXECUTE, tid=1, ts=0, dur=360),  # the step's executor,
              dict(name=profile_step.EXECUTE, tid=1, ts=10, dur=100),  # a loop body's and a
              dict(name=profile_step.EXECUTE, tid=2, ts=20, dur=70)]  # fmt: skip  # pool's
    got = profile_step.summarize(events, "jit_step", steps=2)
    assert got["ops_ms_per_step"] == pytest.approx((300 + 50 + 70) / 2 / 1e3)
    assert got["execute_ms_per_step"] == pytest.approx(0.18)
    assert list(got["ops"]) == ["while.1", "dot.2", "fusion.3", "fusion.5", "fusion.4"]
    assert got["ops"]["dot.2"] == {"calls": 1, "ms_per_step": pytest.approx(0.05)}
    spec = dict(mode="train", cell="lstm", B=8, T=12, H=16, V=40, E=8)
    run = frameworks.build_jaxrnn(spec, "cpu", "fast")
    run()
    res = profile_step.profile(run, steps=3, profile_steps=4)
    assert len(res["wall_ms"]) == 3 and min(res["wall_ms"]) > 0
    what = [v["what"] for v in res["ops"].values()]
    for target in ("jaxrnn_lstm_forward", "jaxrnn_lstm_backward", "jaxrnn_table_projection"):
        assert what.count(target) == 1, (target, what)
    assert "?" not in what, res["ops"]
    assert all(v["calls"] == 4 and v["ms_per_step"] > 0 for v in res["ops"].values()), res["ops"]
    assert 0 < 4 * res["execute_ms_per_step"] <= res["profiled_wall_ms"]
    assert 0 < res["ops_ms_per_step"] <= (1 + os.cpu_count()) * res["execute_ms_per_step"]


def test_threads_ab_compares_the_same_calls_at_each_thread_count():
    """benchmarks/threads_ab.py: its calls at 1 and at 2 threads (16 rows: two chunks of 8)
    are the same kernels on the same data: bitwise the same states (rows never interact),
    gradients equal to float32 rounding (dW_h and the table's gradient are summed per chunk);
    measure() gives a positive median per round for each cell, kernel and side."""
    from benchmarks import threads_ab

    for cell in ("simple", "lstm", "gru"):
        one, two = (threads_ab.calls(cell, 16, 5, 20, 30, t) for t in (1, 2))
        for x, y in zip(*(jax.tree.leaves(f["forward"]()) for f in (one, two)), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=cell)
        a, b = (jax.tree.leaves(f["backward"]()) for f in (one, two))
        assert len(a) == len(b) >= 3
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6, err_msg=cell
            )
        dW = a[{"simple": 1, "lstm": 1, "gru": 3}[cell]]  # in each backward's outputs
        assert dW.shape == (20, {"simple": 1, "lstm": 4, "gru": 3}[cell] * 20)
        assert float(np.abs(np.asarray(dW)).max()) > 0, cell
    res = threads_ab.measure(["lstm", "gru"], (16, 6, 20, 30), threads=2, rounds=2, reps=1)
    assert sorted(res) == ["gru backward", "gru forward", "lstm backward", "lstm forward"]
    for v in res.values():
        assert len(v["one"]) == len(v["all"]) == 2 and min(v["one"] + v["all"]) > 0


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 7), (130, 17, 33), (300, 32, 400)])
def test_table_projection_and_its_gradient_match_numpy(shape, threads):
    """table = E W (+ b); dE = dTable W^T, dW = E^T dTable, db = dTable.sum(0) from one pass
    over dTable: K and N not multiples of 16 (masked columns), V split over the threads."""
    V, K, N = shape
    rng = np.random.default_rng(21)
    dT, E, W = rng.normal(size=(V, N)), rng.normal(size=(V, K)), rng.normal(size=(K, N))
    b = rng.normal(size=(N,))
    _close(native.table_projection(*_f32(E, W, b), threads=threads), E @ W + b, tol=2e-6)
    _close(native.table_projection(*_f32(E, W), threads=threads), E @ W, tol=2e-6)
    with pytest.raises(ValueError, match=r"table_projection: expected .* got E"):
        native.table_projection(*_f32(E, W, b[:-1]))
    dE, dW, db = native.table_projection_backward(*_f32(dT, E, W), threads=threads)
    for got, want in ((dE, dT @ W.T), (dW, E.T @ dT), (db, dT.sum(0))):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want, tol=2e-6)
    with pytest.raises(ValueError, match=r"table_projection_backward: expected .* got dTable"):
        native.table_projection_backward(*_f32(dT, E, W[:, :-1] if N > 1 else W[:0]))


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "shape", [(2, 1, 1, 1), (9, 3, 7, 4), (250, 1, 32, 100), (40, 33, 17, 130)]
)
def test_rows_projection_matches_numpy(shape, threads):
    """out = E[ids] W (+ b) for ids [T, B] with repeats and ids outside [0, V) (NaN rows, as
    jnp.take's default): K and N not multiples of 16, rows gathered 64 at a time, split over
    the threads (0: by the amount of work)."""
    T, B, K, N = shape
    V = 23
    rng = np.random.default_rng(23)
    E, W, b = rng.normal(size=(V, K)), rng.normal(size=(K, N)), rng.normal(size=(N,))
    ids = rng.integers(-2, V + 2, size=(T, B))
    ids[0, 0], ids[-1, -1] = V, 0  # at least one outside, one inside (T B > V + 4: repeats)
    inside = (ids >= 0) & (ids < V)
    want = E[np.clip(ids, 0, V - 1)] @ W
    for bias in (b, None):
        got = native.rows_projection(*_f32(E), jnp.asarray(ids), *_f32(W, bias), threads=threads)
        assert got.shape == (T, B, N) and got.dtype == jnp.float32
        assert np.isnan(np.asarray(got)[~inside]).all()
        _close(np.asarray(got)[inside], (want + (0 if bias is None else b))[inside], tol=2e-6)
    with pytest.raises(ValueError, match=r"rows_projection: expected .* got E .* ids"):
        native.rows_projection(*_f32(E), jnp.asarray(ids, jnp.float32), *_f32(W, b))
    with pytest.raises(ValueError, match=r"rows_projection: expected .* W \[K, N\]"):
        native.rows_projection(*_f32(E), jnp.asarray(ids), *_f32(W[:-1] if K > 1 else W[:0], b))


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "shape", [(2, 1, 1, 1), (9, 3, 7, 4), (250, 1, 32, 100), (70, 33, 17, 130)]
)
def test_rows_projection_gradient_matches_numpy(shape, threads):
    """dE = the rows dOut W^T added into the rows of their ids (repeats in row order, zeros
    elsewhere), dW = E[ids]^T dOut, db = dOut summed; an id outside [0, V) adds nothing to dE
    and makes dW NaN (jnp.take's NaN row, as XLA's gradient does)."""
    T, B, K, N = shape
    V = 23
    rng = np.random.default_rng(25)
    E, W, dO = rng.normal(size=(V, K)), rng.normal(size=(K, N)), rng.normal(size=(T, B, N))
    ids = rng.integers(0, V, size=(T, B))
    ids[-1, -1] = ids[0, 0]  # a repeat
    rows = dO.reshape(-1, N)
    dE_want = np.zeros((V, K))
    np.add.at(dE_want, ids.reshape(-1), rows @ W.T)
    dE, dW, db = native.rows_projection_backward(*_f32(dO, E), jnp.asarray(ids), *_f32(W), threads=threads)  # fmt: skip
    for got, want in ((dE, dE_want), (dW, E[ids.reshape(-1)].T @ rows), (db, rows.sum(0))):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want, tol=2e-6)
    outside = ids.copy()
    outside[0, 0] = V  # its dE row dropped
    np.add.at(dE_want, ids[0, 0], -(rows[0] @ W.T))
    dE, dW, db = native.rows_projection_backward(*_f32(dO, E), jnp.asarray(outside), *_f32(W), threads=threads)  # fmt: skip
    _close(dE, dE_want, tol=2e-6)
    assert np.isnan(np.asarray(dW)).all()
    _close(db, rows.sum(0), tol=2e-6)
    with pytest.raises(ValueError, match=r"rows_projection_backward: expected .* got dOut"):
        native.rows_projection_backward(*_f32(dO[..., :-1], E), jnp.asarray(ids), *_f32(W))


@pytest.mark.parametrize("bias", [True, False])
def test_project_rows_gradient_native_vs_xla(bias, monkeypatch):
    """fast.project_rows (a batch with fewer tokens than the vocabulary): values and the
    gradients of E, W_x, b through the native calls equal those of XLA's gather and product
    (and autodiff's scatter, products and sum)."""
    rng = np.random.default_rng(24)
    E, W, b, c = _f32(rng.normal(size=(70, 9)), rng.normal(size=(9, 52)), rng.normal(size=(52,)), rng.normal(size=(6, 2, 52)))  # fmt: skip
    ids = jnp.asarray(rng.integers(0, 70, size=(6, 2)))

    def loss(E, W, b):
        return jnp.sum(jnp.tanh(fast.project_rows(E, ids, W, b if bias else None)) * c)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    hlo = f.lower(E, W, b).as_text()
    assert "jaxrnn_rows_projection" in hlo and "jaxrnn_rows_projection_backward" in hlo
    got = f(E, W, b)
    monkeypatch.setattr(native, "supports", lambda *a, **k: False)
    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(E, W, b)
    for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(a, np.asarray(b_, np.float64), tol=2e-6)
    assert bias or not np.asarray(got[1][2]).any()  # no bias: a zero gradient for it


def test_rows_ab_runs_both_variants_and_restores_the_shipped_one():
    """benchmarks/rows_ab.py: the native rows projection and XLA's gather + product give the
    same logits (and the same training step), each variant is timed, and fast.project_rows is
    the shipped one afterwards."""
    from benchmarks import rows_ab

    shipped = fast.project_rows
    res = rows_ab.measure(["gru"], rounds=2)["gru"]
    assert len(res["native"]) == len(res["xla"]) == 2 and min(res["native"] + res["xla"]) > 0
    assert res["diff"] < 1e-5
    assert fast.project_rows is shipped
    # the training step: the parameters after one Adam step (lr 1e-3) agree to well within a
    # step (Adam's first step divides each gradient element by its magnitude, so float32
    # rounding of a near-zero element can move its update by up to lr)
    res = rows_ab.measure(["simple"], rounds=2, mode="train")["simple"]
    assert len(res["native"]) == len(res["xla"]) == 2 and res["diff"] < 1e-4
    assert fast.project_rows is shipped
    with pytest.raises(ValueError, match="below the vocabulary"):
        rows_ab.measure(["simple"], rounds=1, B=20)
    assert fast.project_rows is shipped


@pytest.mark.parametrize("bias", [True, False])
def test_project_table_gradient_native_vs_xla(bias, monkeypatch):
    """fast.project_table (the classifier's embedding folded into W_x): values and the
    gradients of E, W_x, b through the native pass equal autodiff's XLA products."""
    rng = np.random.default_rng(22)
    E, W, b, c = _f32(rng.normal(size=(70, 9)), rng.normal(size=(9, 52)), rng.normal(size=(52,)), rng.normal(size=(70, 52)))  # fmt: skip

    def loss(E, W, b):
        return jnp.sum(jnp.tanh(fast.project_table(E, W, b if bias else None)) * c)

    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(E, W, b)
    monkeypatch.setattr(native, "supports", lambda *a, **k: False)
    want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(E, W, b)
    for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(a, np.asarray(b_, np.float64), tol=2e-6)
    assert bias or not np.asarray(got[1][2]).any()  # no bias: a zero gradient for it
