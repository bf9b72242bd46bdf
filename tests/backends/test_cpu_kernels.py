"""The native CPU kernels (jaxrnn.backends.cpu: the FFI calls of ``_ffi``, the build of
``_build``) against NumPy float64 references.

They run where the CPU has AVX-512, or AVX2 and FMA (the kernels' AVX-512 intrinsics through
``avx512_on_avx2.h``); there a failed build fails these tests rather than skipping them.
test_backends.py checks the ``native`` backend through ``rnn`` under every transformation
against ``scan``; here the kernels' own calls, the seed classifier in float32 against float64,
the build, and the AVX2 shim's intrinsics bit for bit. The default tier runs part of each
parametrize grid (the first four SHAPES, thinned further by conftest.THINNED); the slow tier
the rest.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import raises_naming

from jaxrnn import models
from jaxrnn.backends.cpu import _build, _ffi

pytestmark = pytest.mark.skipif(
    _build.isa() is None, reason="native kernels need AVX-512, or AVX2 and FMA"
)

slow = pytest.mark.slow
ACTS = {
    "tanh": (np.tanh, lambda h: 1 - h * h),
    "sigmoid": (lambda a: 1 / (1 + np.exp(-a)), lambda h: h * (1 - h)),
    "relu": (lambda a: np.maximum(a, 0), lambda h: (h > 0) * 1.0),
    "identity": (lambda a: a, np.ones_like),
}


def _shape(T, B, H, slow_tier=False):
    return pytest.param((T, B, H), id=f"{T}x{B}x{H}", marks=slow if slow_tier else ())


# (T, B, H): one row / one unit; H not a multiple of 16 (masked columns), B not a multiple of
# the row blocks, H above one column tile, the seed size. The LSTM forward packs a last group
# of H % 16 <= 4 units into one vector: H = 1 (nothing else), 130, 100; H = 7 unpacked.
# (37, 2, 24): a chunk of two rows, whose dW_h rows are gathered 8 steps at a time
# (OuterWindow; 37 steps = 4 windows + 5). H = 24 / 64 (and the gated panels of H = 7, 16, 64):
# padded widths of an even number of 64-byte lines, stored with one line more per row
# (rnn_cpu.cc PanelStride) that the tiles never read. The default tier runs the first four.
SHAPES = [
    _shape(1, 1, 1), _shape(3, 5, 7), _shape(37, 2, 24), _shape(7, 33, 130),
    _shape(6, 9, 16, True), _shape(4, 3, 64, True), _shape(20, 64, 100, True),
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def built():
    _build.build()  # raises BuildError (with the compiler's output) if it cannot
    assert _ffi.available(), _ffi.unavailable_reason()


def _close(got, want, tol=1e-5):
    """float32 against float64: errors relative to the largest entry (1 for small ones)."""
    want = np.asarray(want, np.float64)
    scale = 1.0 + np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got) / scale, want / scale, rtol=tol, atol=tol)


def _f32(*xs):
    return [None if x is None else jnp.asarray(x, jnp.float32) for x in xs]


def _ids(idx):
    return None if idx is None else jnp.asarray(idx, jnp.int32)


def _scatter(idx, rows, V):
    """NumPy's ``dTable``: ``rows [T, B, N]`` added into ``[V, N]`` at ``idx [T, B]``."""
    out = np.zeros((V, rows.shape[-1]))
    np.add.at(out, idx.reshape(-1), rows.reshape(-1, rows.shape[-1]))
    return out


# --------------------------------------------------------------------------------- simple


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
    return D, dW, None if idx is None else _scatter(idx, D[:-1], V)


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", list(ACTS))
def test_forward_matches_numpy(act, shape, table):
    T, B, H = shape
    U, idx, W, h0 = _data(T, B, H, V=11 if table else None)
    S = _ffi.simple_forward(*_f32(U), _ids(idx), *_f32(W, h0), act)
    assert S.shape == (T + 1, B, H) and S.dtype == jnp.float32
    _close(S, _np_forward(U, idx, W, h0, act))


@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("fused", [True, False])
def test_backward_matches_numpy(fused, act, shape, last_only, monkeypatch):
    """D, dW_h (accumulated in the loop, or by XLA after it as for large H) and dTable."""
    monkeypatch.setattr(_ffi, "fuse_dw", lambda H, G: fused)
    T, B, H = shape
    V = 13
    U, idx, W, h0 = _data(T, B, H, V=V, seed=1)
    S = _np_forward(U, idx, W, h0, act)
    g = np.random.default_rng(2).normal(size=(B, H) if last_only else (T, B, H))
    D, dW, dTable = _ffi.simple_backward(*_f32(S, W, g), act, _ids(idx), vocab=V)
    for got, want in zip((D, dW, dTable), _np_backward(S, W, g, act, idx, V), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want)
    assert _ffi.simple_backward(*_f32(S, W, g), act)[2] is None


def _activation(act, a):
    """The kernel's activation of each of ``a`` (h0 = 0, W_h = 0: ``S[1] = f(a)``)."""
    H = 64  # a batch of 64-unit rows, so W_h stays small whatever the number of values
    x = np.concatenate([a, np.zeros(-a.size % H)]).reshape(1, -1, H)
    U, W, h0 = _f32(x, np.zeros((H, H)), np.zeros(x.shape[1:]))
    return np.asarray(_ffi.simple_forward(U, None, W, h0, act)[1], np.float64).ravel()[: a.size]


def test_tanh_accuracy_over_range_and_nan():
    """The kernel's own tanh (expm1-based) against NumPy's, from -30 to 30, and NaN kept."""
    a = np.concatenate([np.linspace(-30, 30, 6001), [1e-30, -1e-8, 1e-4, 0.0, np.nan]])
    out = _activation("tanh", a)
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
    out = _activation("sigmoid", a)
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
    U, W, h0 = _f32(U, W, h0)
    ids = _ids(idx)
    g = jnp.asarray(np.random.default_rng(3).normal(size=(40, 64, 100)), jnp.float32)
    S1 = _ffi.simple_forward(U, ids, W, h0, "tanh", threads=1)
    D1, dW1, dT1 = _ffi.simple_backward(S1, W, g, "tanh", ids, 50, threads=1)
    _close(S1, _np_forward(*_data(40, 64, 100, V=50), "tanh"))
    for threads in (2, 3, 16):
        S = _ffi.simple_forward(U, ids, W, h0, "tanh", threads=threads)
        np.testing.assert_array_equal(np.asarray(S), np.asarray(S1))
        D, dW, dT = _ffi.simple_backward(S, W, g, "tanh", ids, 50, threads=threads)
        np.testing.assert_array_equal(np.asarray(D), np.asarray(D1))
        _close(dW, dW1, tol=1e-6)
        _close(dT, dT1, tol=1e-6)


@pytest.mark.parametrize("H", [7, 100, 130])
def test_a_row_alone_equals_the_same_row_in_a_batch(H):
    """Batch rows never interact, and a chunk of 1-2 rows (B = 1 inference) runs wider
    register tiles than a full block: each element still sums its products in the same order,
    so a row computed alone is bitwise the row computed among 9 (S and D)."""
    U, _, W, h0 = _data(12, 9, H)
    S_ref = _np_forward(U, None, W, h0, "tanh")
    U, W, h0 = _f32(U, W, h0)
    g = jnp.asarray(np.random.default_rng(4).normal(size=(12, 9, H)), jnp.float32)
    S = _ffi.simple_forward(U, None, W, h0, "tanh", threads=1)
    _close(S, S_ref)
    D = _ffi.simple_backward(S, W, g, "tanh", threads=1)[0]
    for rows in (np.array([4]), np.array([7, 8])):
        Sb = _ffi.simple_forward(U[:, rows], None, W, h0[rows], "tanh", threads=1)
        np.testing.assert_array_equal(np.asarray(Sb), np.asarray(S[:, rows]))
        Db = _ffi.simple_backward(Sb, W, g[:, rows], "tanh", threads=1)[0]
        np.testing.assert_array_equal(np.asarray(Db), np.asarray(D[:, rows]))


def test_out_of_range_ids_read_nan_and_add_nothing():
    """As jnp.take (fill) and XLA's scatter (drop): row -1 / V gives NaN states, no update."""
    U, idx, W, h0 = _data(3, 4, 5, V=6)
    idx[1, 2], idx[2, 0] = -1, 6
    S = np.asarray(_ffi.simple_forward(*_f32(U), _ids(idx), *_f32(W, h0), "tanh"))
    assert np.isnan(S[2, 2]).all() and np.isnan(S[3, 0]).all() and not np.isnan(S[1]).any()
    Sc = np.nan_to_num(S)
    g = np.ones((3, 4, 5))
    _, _, dT = _ffi.simple_backward(*_f32(Sc, W, g), "tanh", _ids(idx), vocab=6)
    D_ref = _np_backward(Sc, W, g, "tanh")[0]
    ok = (idx >= 0) & (idx < 6)
    dT_ref = np.zeros((6, 5))
    np.add.at(dT_ref, idx[ok], D_ref[:3][ok])
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
    S = np.nan_to_num(np.asarray(_ffi.simple_forward(*_f32(U), _ids(idx), *_f32(W, h0), "tanh")))
    g = np.random.default_rng(12).normal(size=(T, B, H))
    # a first call that fills every row, freed: the allocator tends to hand its buffer to the
    # next call, so rows the kernel forgot to zero would show its numbers
    every = jnp.asarray(np.arange(T * B).reshape(T, B) * 7 % V, jnp.int32)
    first = _ffi.simple_backward(*_f32(S, W, g), "tanh", every, vocab=V, threads=threads)
    assert np.asarray(first[2])[1500:].any()
    del first
    _, _, dT = _ffi.simple_backward(*_f32(S, W, g), "tanh", _ids(idx), vocab=V, threads=threads)
    D_ref = _np_backward(S, W, g, "tanh")[0]
    ok = (idx >= 0) & (idx < V)
    dT_ref = np.zeros((V, H))
    np.add.at(dT_ref, idx[ok], D_ref[:T][ok])
    np.testing.assert_allclose(np.asarray(dT), dT_ref, rtol=1e-4, atol=1e-5)
    assert not np.asarray(dT)[1500:].any()


def test_bad_inputs_raise_in_python():
    U, idx, W, h0 = _f32(*_data(4, 3, 5))
    with pytest.raises(ValueError, match=r"U must be \[T, B, H\] = \[T, 3, 5\]; got \(4, 3, 6\)"):
        _ffi.simple_forward(jnp.zeros((4, 3, 6), jnp.float32), None, W, h0, "tanh")
    with pytest.raises(ValueError, match=r"W_h must be \[5, 5\]; got \(5, 4\)"):
        _ffi.simple_forward(U, None, W[:, :4], h0, "tanh")
    with pytest.raises(
        ValueError,
        match=r"with idx, U must be a table \[V, 5\] and idx \[T, 3\]; got U \(4, 3, 5\), idx \(4, 2\)",
    ):
        _ffi.simple_forward(U, jnp.zeros((4, 2), jnp.int32), W, h0, "tanh")
    with pytest.raises(TypeError, match="float32; got float64"):
        _ffi.simple_forward(U.astype(jnp.float64), None, W, h0, "tanh")
    with pytest.raises(ValueError, match=r"activation must be one of \[.*'tanh'\]; got 'gelu'"):
        _ffi.simple_forward(U, None, W, h0, "gelu")
    S = _ffi.simple_forward(U, None, W, h0, "tanh")
    with pytest.raises(ValueError, match=r"g \[T, B, H\] or \[B, H\]; got .* g \(4, 5\)"):
        _ffi.simple_backward(S, W, jnp.zeros((4, 5), jnp.float32), "tanh")
    with pytest.raises(
        ValueError,
        match=r"idx must be \[T, B\] = \[4, 3\] with vocab >= 1; got idx \(4, 3\), vocab 0",
    ):
        _ffi.simple_backward(S, W, S[1:], "tanh", jnp.zeros((4, 3), jnp.int32), vocab=0)


# ----------------------------------------------------------------------- cache-size rules


def test_kernels_only_for_weights_that_fit_in_cache(monkeypatch):
    # W_h [H, G H] float32 up to MAX_WEIGHT_BYTES: 8 MiB on AMD Zen 4 (AVX-512, family 0x19),
    # 3 MiB elsewhere, Zen 3 (AVX2, family 0x19 too) included
    assert _build.max_weight_bytes("AuthenticAMD", "25", "avx512") == 8 << 20
    assert _build.max_weight_bytes("AuthenticAMD", "25", "avx2") == 3 << 20
    assert _build.max_weight_bytes("GenuineIntel", "6", "avx512") == 3 << 20
    assert _build.max_weight_bytes("GenuineIntel", "6", "avx2") == 3 << 20
    assert _build.max_weight_bytes("AuthenticAMD", "26", "avx512") == 3 << 20
    assert _build.max_weight_bytes() == _build.max_weight_bytes(isa=_build.isa())
    assert _ffi.MAX_WEIGHT_BYTES == _build.max_weight_bytes()
    monkeypatch.setattr(_ffi, "MAX_WEIGHT_BYTES", 3 << 20)
    assert _ffi.supports(jnp.float32, "tanh", 886, 1) and _ffi.supports(jnp.float32, "tanh", 512, 3)
    assert _ffi.supports(jnp.float32, "tanh", 443, 4)
    assert not _ffi.supports(jnp.float32, "tanh", 887, 1)
    assert not _ffi.supports(jnp.float32, "tanh", 513, 3)
    assert not _ffi.supports(jnp.float32, "tanh", 444, 4)
    assert not _ffi.supports(jnp.float64, "tanh", 100, 1)
    assert not _ffi.supports(jnp.float32, "gelu", 100, 1)


def test_fused_weight_gradient_only_where_it_fits_in_cache():
    # dW_h [H, G H] float32 accumulated in the call up to 256 KiB
    assert _ffi.fuse_dw(100, 1) and _ffi.fuse_dw(100, 4) and _ffi.fuse_dw(256, 1)
    assert _ffi.fuse_dw(147, 3) and _ffi.fuse_dw(128, 4)
    assert not _ffi.fuse_dw(257, 1) and not _ffi.fuse_dw(148, 3) and not _ffi.fuse_dw(129, 4)


def test_isa_from_the_cpu_flags():
    assert _build.isa("fpu avx2 fma avx512f avx512vl") == "avx512"
    assert _build.isa("fpu sse4_2 avx avx2 fma") == "avx2"
    assert _build.isa("fpu avx avx2") is None and _build.isa("fpu avx fma") is None
    assert _build.isa("") is None


def test_tuning_defines_per_cpu_and_explicit_macros_override_them(monkeypatch):
    """Register blocks per CPU (AMD Zen 4: 6-row LSTM blocks, 8 x 3 dW tiles; AVX2 CPUs of any
    vendor: 6 x 1 blocks for 16 registers; others the source's defaults), and a macro given to
    compile_command replaces a tuned one of that name instead of adding a second -D."""
    zen4 = dict(d.split("=") for d in _build.tuning_defines("AuthenticAMD", "25", "avx512"))
    assert zen4 == {"JAXRNN_LSTM_ROWS": "6", "JAXRNN_OUTER_ROWS": "8", "JAXRNN_OUTER_VECS": "3"}
    assert _build.tuning_defines("GenuineIntel", "6", "avx512") == ()
    assert _build.tuning_defines("AuthenticAMD", "26", "avx512") == ()
    avx2 = _build.tuning_defines("AuthenticAMD", "25", "avx2")
    assert dict(d.split("=") for d in avx2) == {
        "JAXRNN_BLOCK_ROWS": "6", "JAXRNN_BLOCK_VECS": "1", "JAXRNN_LSTM_ROWS": "6",
        "JAXRNN_OUTER_ROWS": "6", "JAXRNN_OUTER_VECS": "1",
    }  # fmt: skip
    assert _build.tuning_defines("GenuineIntel", "6", "avx2") == avx2
    assert _build.tuning_defines("HygonGenuine", "24", "avx2") == avx2
    assert _build.tuning_defines() == _build.tuning_defines(isa=_build.isa())
    monkeypatch.setattr(_build, "tuning_defines", lambda: ("JAXRNN_LSTM_ROWS=6", "JAXRNN_X=1"))
    monkeypatch.setattr(_build, "compiler", lambda: "c++")
    cmd = _build.compile_command(Path("a.cc"), Path("a.so"), defines=("JAXRNN_LSTM_ROWS=5",))
    assert [c for c in cmd if c.startswith("-D")] == ["-DJAXRNN_LSTM_ROWS=5", "-DJAXRNN_X=1"]
    assert cmd[0] == "c++" and cmd[-2:] == ["-o", "a.so"] and "-shared" in cmd
    assert "-shared" not in _build.compile_command(Path("a.cc"), Path("a"), shared=False)


# ---------------------------------------------------------------------------------- build


def test_build_is_cached_and_switch_turns_it_off(tmp_path, monkeypatch):
    """A second build() finds the first's library (a stand-in compiler writes it; the real
    compiler's builds are in test_cpu_build.py's slow tier) and leaves no temporary file."""
    compiled = []

    def run(cmd):
        compiled.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_text("a library")
        return 0, ""

    monkeypatch.setattr(_build, "_run_compiler", run)
    first = _build.build(tmp_path)
    assert len(compiled) == 1
    mtime = first.stat().st_mtime_ns
    assert _build.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert len(compiled) == 1
    lock = first.name.replace(".so", ".lock")
    names = sorted(p.name for p in tmp_path.iterdir())  # no temporary left behind
    assert names == sorted([first.name, first.name + ".sha256", lock])
    code = (
        "from jaxrnn.backends.cpu import _ffi; print(_ffi.available(), _ffi.unavailable_reason())"
    )
    env = {**os.environ, _ffi.SWITCH: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False turned off (JAXRNN_NATIVE=0)", out.stderr


def test_build_key_covers_the_headers_and_not_the_sources_path(tmp_path, monkeypatch):
    """The cached library's name comes from the source's and the headers' contents: a copy of
    the source elsewhere is the same build, an edited header a new one (a stand-in compiler
    writes the library, so nothing is compiled)."""
    compiled = []

    def run(cmd):
        compiled.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_text(f"build {len(compiled)}")
        return 0, ""

    monkeypatch.setattr(_build, "_run_compiler", run)
    header = tmp_path / "avx512_on_avx2.h"
    header.write_bytes(_build.HEADERS[0].read_bytes())
    monkeypatch.setattr(_build, "HEADERS", (header,))
    copy = tmp_path / "elsewhere" / _build.SOURCE.name
    copy.parent.mkdir()
    copy.write_bytes(_build.SOURCE.read_bytes())
    cache = tmp_path / "cache"
    first = _build.build(cache)
    assert first.read_text() == "build 1" and _build.build(cache, copy) == first
    header.write_text(header.read_text() + "\n")
    second = _build.build(cache)
    assert second != first and second.read_text() == "build 2" and len(compiled) == 2
    copy.write_text(copy.read_text() + "\n")
    assert _build.build(cache, copy) not in (first, second) and len(compiled) == 3


def test_build_error_names_the_compiler_output(tmp_path):
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    with pytest.raises(_build.BuildError, match="compiling bad.cc failed") as err:
        _build.build(tmp_path / "cache", bad)
    assert "error" in str(err.value).split("\n", 1)[1]  # the compiler's own message follows
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(left) == 1 and left[0].endswith(".lock"), left  # no library and no temporary


def test_avx512_on_avx2_header_gives_the_instructions_results(tmp_path):
    """avx512_on_avx2.h, op by op, bit for bit (avx512_on_avx2_check.cc, built without
    AVX-512, as the kernels are on an AVX2 CPU): against the AVX-512 instructions where the
    CPU has them, else against scalar models (scalef under FTZ / DAZ over its exact domain,
    roundscale's ties to even, fused multiply-adds, min / max with NaNs, lane masks); masked
    loads and stores at an inaccessible page's edge must not touch it or write a masked-off
    lane. Runs wherever the kernels do: every such CPU has AVX2, which ``-mno-avx512f``
    targets on an AVX-512 one."""
    src, exe = Path(__file__).with_name("avx512_on_avx2_check.cc"), tmp_path / "check"
    cmd = [_build.compiler(), "-O2", "-std=c++17", "-march=native", "-mno-avx512f",
           "-I", str(_build.SOURCE.parent), str(src), "-o", str(exe)]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok "), out.stdout[-4000:] + out.stderr
    checks, reference = out.stdout.split()[1:3]
    assert int(checks) > 100_000
    hardware = {"avx512f", "avx512vl"} <= set(_build.cpuinfo("flags").split())
    assert reference == ("avx512" if hardware else "model"), out.stdout


# ----------------------------------------------------------------------------------- LSTM


def _sig(a):
    return 1 / (1 + np.exp(-a))


def _lstm_data(T, B, H, V=None, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(V, 4 * H) if V else (T, B, 4 * H))
    idx = rng.integers(0, V, size=(T, B)) if V else None
    W = rng.normal(size=(H, 4 * H)) / np.sqrt(H)
    return U, idx, W, rng.normal(size=(B, H)) * 0.5, rng.normal(size=(B, H)) * 0.5


def _np_lstm_forward(U, idx, W, h0, c0):
    H = h0.shape[1]
    hs, cs, gs = [h0], [c0], []
    for t in range(idx.shape[0] if idx is not None else U.shape[0]):
        z = (U[idx[t]] if idx is not None else U[t]) + hs[-1] @ W
        i, f, o = _sig(z[:, :H]), _sig(z[:, H : 2 * H]), _sig(z[:, 3 * H :])
        g = np.tanh(z[:, 2 * H : 3 * H])
        cs.append(f * cs[-1] + i * g)
        hs.append(o * np.tanh(cs[-1]))
        gs.append(np.concatenate([i, f, g, o], axis=1))
    return np.stack(hs), np.stack(cs), np.stack(gs)


def _np_lstm_backward(S_h, S_c, gates, W, g_hs, g_hT, g_cT, g_cs=None, idx=None, V=0):
    """``(D = dL/dz [T + 1, B, 4H], dW_h, dc0, dTable)`` by hand, in float64."""
    T, H = gates.shape[0], S_h.shape[2]
    D = np.zeros((T + 1, S_h.shape[1], 4 * H))
    dh, dc = g_hT.copy(), g_cT.copy()
    for t in range(T - 1, -1, -1):
        dh = dh + (0 if g_hs is None else g_hs[t])
        dc = dc + (0 if g_cs is None else g_cs[t])
        i, f, g, o = (gates[t][:, q * H : (q + 1) * H] for q in range(4))
        tc = np.tanh(S_c[t + 1])
        dc = dc + dh * o * (1 - tc * tc)
        D[t] = np.concatenate(
            [dc * g * i * (1 - i), dc * S_c[t] * f * (1 - f), dc * i * (1 - g * g),
             dh * tc * o * (1 - o)], axis=1,
        )  # fmt: skip
        dh, dc = D[t] @ W.T, dc * f
    dW = np.einsum("tbk,tbj->kj", S_h, D)
    return D, dW, dc, None if idx is None else _scatter(idx, D[:-1], V)


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_lstm_forward_matches_numpy(shape, table):
    T, B, H = shape
    U, idx, W, h0, c0 = _lstm_data(T, B, H, V=11 if table else None)
    S_h, S_c, G = _ffi.lstm_forward(*_f32(U), _ids(idx), *_f32(W, h0, c0))
    assert G.shape == (T, B, 4 * H)
    G = _ffi.gate_blocks(G, H)  # stored per 16 units
    for got, want in zip((S_h, S_c, G), _np_lstm_forward(U, idx, W, h0, c0), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want)


@pytest.mark.parametrize("outputs", ["last", "hs", "hs+cs"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fused", [True, False])
def test_lstm_backward_matches_numpy(fused, shape, outputs, monkeypatch):
    """D = dL/dz, dW_h (in the loop or after it), dc0 and dTable; ``outputs``: cotangents of
    the final carry only, also of every ``h_t``, also of every ``c_t``."""
    monkeypatch.setattr(_ffi, "fuse_dw", lambda H, G: fused)
    T, B, H = shape
    V = 13
    U, idx, W, h0, c0 = _lstm_data(T, B, H, V=V, seed=7)
    S_h, S_c, gates = _np_lstm_forward(U, idx, W, h0, c0)
    rng = np.random.default_rng(8)
    g_hs = None if outputs == "last" else rng.normal(size=(T, B, H))
    g_cs = rng.normal(size=(T, B, H)) if outputs == "hs+cs" else None
    g_hT, g_cT = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    S_h32, S_c32, G = _ffi.lstm_forward(*_f32(U), _ids(idx), *_f32(W, h0, c0))
    _close(S_h32, S_h)
    got = _ffi.lstm_backward(
        S_h32, S_c32, G, *_f32(W, g_hs, g_hT, g_cT), _ids(idx), V, g_cs=_f32(g_cs)[0]
    )
    want = _np_lstm_backward(S_h, S_c, gates, W, g_hs, g_hT, g_cT, g_cs, idx, V)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == jnp.float32
        _close(a, b, tol=2e-5)


def test_lstm_thread_count_does_not_change_the_states():
    T, B, H, V = 30, 64, 100, 50
    U, idx, W, h0, c0 = _lstm_data(T, B, H, V=V, seed=9)
    ref_h = _np_lstm_forward(U, idx, W, h0, c0)[0]
    ids = _ids(idx)
    U, W, h0, c0 = _f32(U, W, h0, c0)
    rng = np.random.default_rng(10)
    g_hs, g_hT, g_cT = _f32(rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H)))  # fmt: skip
    ref = None
    for threads in (1, 2, 3):
        S = _ffi.lstm_forward(U, ids, W, h0, c0, threads=threads)
        out = _ffi.lstm_backward(*S, W, g_hs, g_hT, g_cT, ids, V, threads=threads)
        exact = [*S, out[0], out[2]]  # states, gates, D, dc0: bitwise
        if ref is None:
            _close(S[0], ref_h)
            ref = (exact, out[1], out[3])
            continue
        for a, b in zip(exact, ref[0], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        _close(out[1], ref[1], tol=1e-6)  # dW_h: per-chunk partials
        _close(out[3], ref[2], tol=1e-6)  # dTable: the same


def test_lstm_bad_inputs_raise_in_python():
    U, _, W, h0, c0 = _f32(*_lstm_data(4, 3, 5))
    with pytest.raises(
        ValueError, match=r"lstm_forward: expected U \[T, B, 4H\].*got U \(4, 3, 19\)"
    ):
        _ffi.lstm_forward(U[..., :19], None, W, h0, c0)
    with pytest.raises(ValueError, match=r"expected .*W_h \[H, 4H\].*got .*W_h \(5, 5\)"):
        _ffi.lstm_forward(U, None, W[:, :5], h0, c0)
    S_h, S_c, G = _ffi.lstm_forward(U, None, W, h0, c0)
    with pytest.raises(
        ValueError, match=r"lstm_backward: expected .*g_hT, g_cT \[B, H\].*got .* g_hT \(3, 4\)"
    ):
        _ffi.lstm_backward(S_h, S_c, G, W, None, h0[:, :4], c0)
    with pytest.raises(
        ValueError, match=r"gate_blocks: expected \[\.\.\., 4 x H = 24\]; got \(4, 3, 20\)"
    ):
        _ffi.gate_blocks(G, 6)
    with pytest.raises(TypeError, match="float32; got float64"):
        _ffi.lstm_forward(U.astype(jnp.float64), None, W, h0, c0)


def test_gate_blocks_reorders_groups_of_16_units():
    # H = 20, stored per group: units 0..15 as 4 gates x 16 floats at 0, units 16..19 as
    # 4 gates x 4 floats at 64; gate blocks: gate q's 20 units at 20 q
    stored = jnp.arange(80.0)
    want = np.concatenate([np.r_[16 * q : 16 * q + 16, 64 + 4 * q : 68 + 4 * q] for q in range(4)])
    np.testing.assert_array_equal(np.asarray(_ffi.gate_blocks(stored, 20)), want)
    # the GRU's 3 gates, H = 18: groups of 16 and 2 units
    want = np.concatenate([np.r_[16 * q : 16 * q + 16, 48 + 2 * q : 50 + 2 * q] for q in range(3)])
    np.testing.assert_array_equal(np.asarray(_ffi.gate_blocks(jnp.arange(54.0), 18, 3)), want)


# ------------------------------------------------------------------------------------ GRU


def _gru_data(T, B, H, V=None, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(V, 3 * H) if V else (T, B, 3 * H))
    idx = rng.integers(0, V, size=(T, B)) if V else None
    W = rng.normal(size=(H, 3 * H)) / np.sqrt(H)
    return U, idx, W, rng.normal(size=3 * H) * 0.3, rng.normal(size=(B, H)) * 0.5


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


def _np_gru_backward(S, Sv, W, g, idx=None, V=0):
    """``(D = dL/du, A = dL/da, carry = z_0 dL/dh_1, dW_h, db_h, dTable)`` by hand."""
    T, H = Sv.shape[0], S.shape[2]
    D = np.zeros((T + 1, S.shape[1], 3 * H))
    A = np.zeros_like(D)
    dh = np.zeros_like(S[0])
    for t in range(T - 1, -1, -1):
        dh = dh + (g[t] if g.ndim == 3 else (g if t == T - 1 else 0))
        z, r, n, u_n = (Sv[t][:, q * H : (q + 1) * H] for q in range(4))
        dz = dh * (S[t] - n) * z * (1 - z)
        dn = dh * (1 - z) * (1 - n * n)
        dr = dn * u_n * r * (1 - r)
        D[t] = np.concatenate([dz, dr, dn * r], axis=1)
        A[t] = np.concatenate([dz, dr, dn], axis=1)
        carry = dh * z
        dh = carry + D[t] @ W.T
    dW = np.einsum("tbk,tbj->kj", S, D)
    dTable = None if idx is None else _scatter(idx, A[:-1], V)
    return D, A, carry, dW, D.sum((0, 1)), dTable


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gru_forward_matches_numpy(shape, table):
    T, B, H = shape
    U, idx, W, b, h0 = _gru_data(T, B, H, V=11 if table else None)
    S, Sv = _ffi.gru_forward(*_f32(U), _ids(idx), *_f32(W, b, h0))
    assert Sv.shape == (T, B, 4 * H)
    Sv = _ffi.gate_blocks(Sv, H)  # stored per 16 units
    for got, want in zip((S, Sv), _np_gru_forward(U, idx, W, b, h0), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want)


@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fused", [True, False])
def test_gru_backward_matches_numpy(fused, shape, last_only, monkeypatch):
    """D = dL/du, A = dL/da, the carry through the update gate, dW_h (in the loop or after
    it), db_h and dTable; ``g`` for every ``h_t`` or for ``h_T`` only."""
    monkeypatch.setattr(_ffi, "fuse_dw", lambda H, G: fused)
    T, B, H = shape
    V = 13
    U, idx, W, b, h0 = _gru_data(T, B, H, V=V, seed=11)
    S_ref, Sv_ref = _np_gru_forward(U, idx, W, b, h0)
    g = np.random.default_rng(12).normal(size=(B, H) if last_only else (T, B, H))
    S, Sv = _ffi.gru_forward(*_f32(U), _ids(idx), *_f32(W, b, h0))
    _close(S, S_ref)
    got = _ffi.gru_backward(S, Sv, *_f32(W, g), _ids(idx), V)
    want = _np_gru_backward(S_ref, Sv_ref, W, g, idx, V)
    for a, w in zip(got, want, strict=True):
        assert a.shape == w.shape and a.dtype == jnp.float32
        _close(a, w, tol=2e-5)


def test_gru_thread_count_does_not_change_the_states():
    T, B, H, V = 30, 64, 100, 50
    U, idx, W, b, h0 = _gru_data(T, B, H, V=V, seed=13)
    ref_S = _np_gru_forward(U, idx, W, b, h0)[0]
    ids = _ids(idx)
    U, W, b, h0 = _f32(U, W, b, h0)
    g = jnp.asarray(np.random.default_rng(14).normal(size=(T, B, H)), jnp.float32)
    ref = None
    for threads in (1, 2, 3):
        S, Sv = _ffi.gru_forward(U, ids, W, b, h0, threads=threads)
        D, A, carry, dW, db, dT = _ffi.gru_backward(S, Sv, W, g, ids, V, threads=threads)
        # db_h: D summed in the call (per-chunk partials), D[:1] alone when asked for
        _close(db, np.asarray(D, np.float64).sum((0, 1)), tol=1e-6)
        D1 = _ffi.gru_backward(S, Sv, W, g, ids, V, threads=threads, d_rows="first")[0]
        np.testing.assert_array_equal(np.asarray(D1), np.asarray(D[:1]))
        exact = [S, Sv, D, A, carry]
        if ref is None:
            _close(S, ref_S)
            ref = (exact, dW, dT, db)
            continue
        for x, y in zip(exact, ref[0], strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        _close(dW, ref[1], tol=1e-6)  # per-chunk partials
        _close(dT, ref[2], tol=1e-6)
        _close(db, ref[3], tol=1e-6)


def test_gru_bad_inputs_raise_in_python():
    U, _, W, b, h0 = _f32(*_gru_data(4, 3, 5))
    with pytest.raises(
        ValueError, match=r"gru_forward: expected .*b_h \[3H\].* got .* b_h \(14,\)"
    ):
        _ffi.gru_forward(U, None, W, b[:14], h0)
    S, Sv = _ffi.gru_forward(U, None, W, b, h0)
    with pytest.raises(
        ValueError, match=r"gru_backward: expected .*g \[T, B, H\] or \[B, H\].*got .* g \(3, 4\)"
    ):
        _ffi.gru_backward(S, Sv, W, h0[:, :4])


# ------------------------------------------------------------------ gradient rows, all cells


@pytest.mark.parametrize("rows", ["first", "inputs"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("table", [True, False], ids=["table", "dense"])
@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
def test_backward_gradient_rows(cell, table, fused, rows, monkeypatch):
    """``rows="first"``: the [T + 1, B, G H] gradient stays inside the call (two rows of it)
    and only its first row comes back (with a table, whose gradient is all that needs the
    rest); ``"inputs"``: its first T rows come back (the cotangent of U without the zero
    row). Everything else is bitwise the same as with ``rows="all"``. Where ``dW_h`` is
    computed outside the call (not fused) the buffer comes back whole; the GRU's
    recurrent-side D always comes back whole (its A is the input-side gradient)."""
    monkeypatch.setattr(_ffi, "fuse_dw", lambda H, G: fused)
    T, B, H, V = 20, 12, 24, 40
    vocab = V if table else 0
    rng = np.random.default_rng(13)
    if cell == "simple":
        U, idx, W, h0 = _data(T, B, H, V=V if table else None, seed=13)
        U, W, h0 = _f32(U, W, h0)
        S = _ffi.simple_forward(U, _ids(idx), W, h0, "tanh")
        (g,) = _f32(rng.normal(size=(T, B, H)))
        f64 = [np.asarray(x, np.float64) for x in (S, W, g)]
        want_D = _np_backward(*f64, "tanh")[0]
        run = lambda r: _ffi.simple_backward(S, W, g, "tanh", _ids(idx), vocab, rows=r)  # noqa: E731
        which, kept = 0, not fused  # dW_h = S^T D outside: D comes back whole
    elif cell == "lstm":
        U, idx, W, h0, c0 = _lstm_data(T, B, H, V=V if table else None, seed=13)
        U, W, h0, c0 = _f32(U, W, h0, c0)
        S = _ffi.lstm_forward(U, _ids(idx), W, h0, c0)
        g = _f32(rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H)))
        f64 = [np.asarray(x, np.float64) for x in (*S[:2], _ffi.gate_blocks(S[2], H), W, *g)]
        want_D = _np_lstm_backward(*f64)[0]
        run = lambda r: _ffi.lstm_backward(*S, W, *g, _ids(idx), vocab, rows=r)  # noqa: E731
        which, kept = 0, not fused  # dW_h = S_h^T D outside: D comes back whole
    else:
        U, idx, W, b, h0 = _gru_data(T, B, H, V=V if table else None, seed=13)
        U, W, b, h0 = _f32(U, W, b, h0)
        S = _ffi.gru_forward(U, _ids(idx), W, b, h0)
        (g,) = _f32(rng.normal(size=(T, B, H)))
        f64 = [np.asarray(x, np.float64) for x in (S[0], _ffi.gate_blocks(S[1], H), W, g)]
        want_D = _np_gru_backward(*f64)[1]  # A
        run = lambda r: _ffi.gru_backward(*S, W, g, _ids(idx), vocab, rows=r)  # noqa: E731
        which, kept = 1, False  # A
    full, part = run("all"), run(rows)
    G = full[which].shape[-1]
    assert full[which].shape == (T + 1, B, G)
    _close(full[which], want_D, tol=2e-5)
    want = T + 1 if kept else {"first": 1, "inputs": T}[rows]
    assert part[which].shape == (want, B, G)
    np.testing.assert_array_equal(np.asarray(part[which]), np.asarray(full[which][:want]))
    for i, (a, b_) in enumerate(zip(full, part, strict=True)):  # every other output the same
        if i != which and a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))
    with pytest.raises(ValueError, match=r"rows must be one of \(.*'all'.*\); got 'last'"):
        run("last")


# -------------------------------------------------------------------- embedding projections


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1), (5, 3, 7), pytest.param((130, 17, 33), marks=slow), (300, 32, 400)],
)
def test_table_projection_and_its_gradient_match_numpy(shape, threads):
    """table = E W (+ b); dE = dTable W^T, dW = E^T dTable, db = dTable.sum(0) from one pass
    over dTable: K and N not multiples of 16 (masked columns), V split over the threads."""
    V, K, N = shape
    rng = np.random.default_rng(21)
    dT, E, W = rng.normal(size=(V, N)), rng.normal(size=(V, K)), rng.normal(size=(K, N))
    b = rng.normal(size=(N,))
    _close(_ffi.table_projection(*_f32(E, W, b), threads=threads), E @ W + b, tol=2e-6)
    _close(_ffi.table_projection(*_f32(E, W), threads=threads), E @ W, tol=2e-6)
    with raises_naming(
        ValueError,
        "table_projection: expected float32 E [V, K], W [K, N], b [N] or None",
        f"b (({N - 1},), ",
    ):
        _ffi.table_projection(*_f32(E, W, b[:-1]))
    dE, dW, db = _ffi.table_projection_backward(*_f32(dT, E, W), threads=threads)
    for got, want in ((dE, dT @ W.T), (dW, E.T @ dT), (db, dT.sum(0))):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want, tol=2e-6)
    with raises_naming(
        ValueError,
        "expected float32 dTable [V, N], E [V, K], W [K, N]",
        f"W {(K, N - 1) if N > 1 else (0, N)} float32",
    ):
        _ffi.table_projection_backward(*_f32(dT, E, W[:, :-1] if N > 1 else W[:0]))


ROWS_SHAPES = [(2, 1, 1, 1), (9, 3, 7, 4), pytest.param((250, 1, 32, 100), marks=slow)]


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [*ROWS_SHAPES, (40, 33, 17, 130)])
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
        got = _ffi.rows_projection(*_f32(E), jnp.asarray(ids), *_f32(W, bias), threads=threads)
        assert got.shape == (T, B, N) and got.dtype == jnp.float32
        assert np.isnan(np.asarray(got)[~inside]).all()
        _close(np.asarray(got)[inside], (want + (0 if bias is None else b))[inside], tol=2e-6)
    with raises_naming(
        ValueError,
        "rows_projection: expected float32 E [V, K], integer ids",
        f"ids {(T, B)} float32",
    ):
        _ffi.rows_projection(*_f32(E), jnp.asarray(ids, jnp.float32), *_f32(W, b))
    with raises_naming(
        ValueError,
        "rows_projection: expected float32 E [V, K], integer ids, W [K, N]",
        f"W {(K - 1, N) if K > 1 else (0, N)} float32",
    ):
        _ffi.rows_projection(*_f32(E), jnp.asarray(ids), *_f32(W[:-1] if K > 1 else W[:0], b))


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [*ROWS_SHAPES, (70, 33, 17, 130)])
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
    dE, dW, db = _ffi.rows_projection_backward(*_f32(dO, E), jnp.asarray(ids), *_f32(W), threads=threads)  # fmt: skip
    for got, want in ((dE, dE_want), (dW, E[ids.reshape(-1)].T @ rows), (db, rows.sum(0))):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want, tol=2e-6)
    outside = ids.copy()
    outside[0, 0] = V  # its dE row dropped
    np.add.at(dE_want, ids[0, 0], -(rows[0] @ W.T))
    dE, dW, db = _ffi.rows_projection_backward(*_f32(dO, E), jnp.asarray(outside), *_f32(W), threads=threads)  # fmt: skip
    _close(dE, dE_want, tol=2e-6)
    assert np.isnan(np.asarray(dW)).all()
    _close(db, rows.sum(0), tol=2e-6)
    with raises_naming(
        ValueError,
        "rows_projection_backward: expected float32 dOut [..., N]",
        f"got dOut {(T, B, N - 1)} float32",
    ):
        _ffi.rows_projection_backward(*_f32(dO[..., :-1], E), jnp.asarray(ids), *_f32(W))


# ------------------------------------------------------------------------ the seed model


# the default tier: one cell on each projection path; the others in the slow tier
SEED_CASES = [
    pytest.param(cell, case, marks=() if (cell, case) in {("lstm", "table"), ("gru", "rows")} else slow)
    for cell in ("simple", "lstm", "gru")
    for case in ("table", "rows", "lengths-dropout")
]  # fmt: skip


@pytest.mark.parametrize("cell,case", SEED_CASES)
def test_seed_classifier_native_float32_vs_scan_float64(cell, case):
    """The seed classifier's loss and gradients on the native backend in float32 against the
    same model on ``scan`` in float64. ``table``: more tokens than the vocabulary (the
    embedding folded into W_x, the table projected once, project_table); ``rows``: fewer
    (B = 4: only the batch's rows projected, project_rows); ``lengths-dropout``: post-padded
    reviews and input dropout (the inputs gathered and masked, then the recurrence kernels)."""
    masked = case == "lengths-dropout"
    B = 4 if case == "rows" else 16
    model = dict(vocab_size=300, embed_dim=8, hidden_size=20, cell=cell)
    model.update(dropout=0.5 if masked else 0.0)
    cfg32 = models.ClassifierConfig(**model, backend="native")
    cfg64 = models.ClassifierConfig(**model, backend="scan")
    rng = np.random.default_rng(6)
    tokens = jnp.asarray(rng.integers(0, 300, size=(B, 40)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 2, size=(B,)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, 41, size=(B,)), jnp.int32) if masked else None
    key = jax.random.key(4) if masked else None
    p64 = models.init_classifier(jax.random.key(1), cfg64, dtype=jnp.float64)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p64)

    def grad(cfg):
        return jax.jit(
            jax.value_and_grad(
                lambda p: models.classifier_loss(cfg, p, tokens, labels, lengths, key=key)
            )
        )

    lowered = grad(cfg32).lower(p32)
    hlo = lowered.as_text()
    assert f"jaxrnn_{cell}_forward" in hlo and f"jaxrnn_{cell}_backward" in hlo
    assert ("jaxrnn_table_projection_backward" in hlo) == (case == "table")
    assert ("jaxrnn_rows_projection_backward" in hlo) == (case == "rows")
    (l32, g32), (l64, g64) = lowered.compile()(p32), grad(cfg64)(p64)
    assert l32.dtype == jnp.float32 and l64.dtype == jnp.float64
    np.testing.assert_allclose(float(l32), float(l64), rtol=1e-6)
    assert jax.tree.structure(g32) == jax.tree.structure(g64)
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g64), strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=2e-5)


@slow  # compiles three seed-size training steps
@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
def test_seed_training_step_temporaries_fit_a_thread_heap(cell):
    """The seed training step on the native backend (B = 64, T = 250, H = 100, V = 5000, Adam)
    keeps XLA's per-step temporaries under 64 MiB, the most a glibc worker-thread heap holds:
    above that glibc maps and unmaps the buffer every step whatever its tunables."""

    cfg = models.ClassifierConfig(
        vocab_size=5000, embed_dim=32, hidden_size=100, cell=cell, backend="native"
    )
    params = models.init_classifier(jax.random.key(0), cfg)
    tokens = jnp.zeros((64, 250), jnp.int32)
    labels = jnp.zeros((64,), jnp.float32)
    opt = optax.adam(1e-3)

    def step(p, s):
        loss, g = jax.value_and_grad(lambda p: models.classifier_loss(cfg, p, tokens, labels))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params))
    assert f"jaxrnn_{cell}_backward" in lowered.as_text()
    temp = lowered.compile().memory_analysis().temp_size_in_bytes
    assert 0 < temp < 64 * 2**20, f"{cell}: {temp / 2**20:.1f} MiB of temporaries per step"
