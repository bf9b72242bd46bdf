"""GPU kernels for :mod:`jaxrnn.fast`: each recurrence as ONE persistent Pallas (Triton) kernel.

On a GPU the XLA loops of :mod:`jaxrnn.fast` launch a few kernels per time step (the
``[B, H] @ [H, G H]`` product, the cell's element-wise update, the in-place row writes):
the seed training step measured ~14 us per time step on an H100, launch and loop
overhead, not arithmetic (benchmarks/RESULTS.md, GPU section). cuDNN instead runs the
whole sequence inside one kernel. The kernels here do the same, written in Pallas:

* the grid runs over batch tiles of :data:`BLOCK_B` rows, one program each (a
  recurrence has no parallelism along T; tiles are independent);
* a program holds its tile's state ``h [BLOCK_B, Hp]`` (and ``c``) in registers and loops
  over all ``T`` steps inside the kernel (``lax.fori_loop`` -> ``scf.for``): per step it
  reads ``u_t``, multiplies by ``W_h`` (tensor cores, one ``[Hp, Hp]`` operand per gate
  block), applies the cell and writes the saved state rows;
* the weight blocks are read once, before the loop, and stay on chip where they fit in
  shared memory (:func:`held`: on an H100 / H200 all of the simple cell's and the GRU's at
  H <= 128, two of the LSTM's four); the others are re-read from L1 / L2 at every step. On
  an H100 this took the seed training step from 1.44 to 0.97 ms (GRU 4.22 -> 2.97); on an
  H200 the LSTM's from 5.13 (all re-read) to 4.35 (two held; the XLA loops: 4.77-4.93);
* the backward kernels run the reversed loop of :mod:`jaxrnn.fast`'s hand-written BPTT
  (the same formulas as its XLA loops) and write ``dL/dz`` for every step; ``dW_h`` is
  then ONE ``[H, T B] @ [T B, G H]`` matmul in XLA, as on the other paths.

Layout: ``H`` is padded to ``Hp`` (a power of two, at least 16; Triton's block sizes)
and each gate gets its own ``[.., Hp]`` block (``[T, G, Bp, Hp]``), the batch to a
multiple of :data:`BLOCK_B`. Padding is exact: zero weights, inputs and initial states
keep the padded units and rows at zero through the cell (``sigmoid(0) = 1/2`` gates
multiply zeros) and their gradients at zero.

Scope (:func:`supports`): float32, ``H <= MAX_HIDDEN`` (a gate block's ``[Hp, Hp]``
operand must fit in a multiprocessor's shared memory beside the rest), CUDA (``cuda`` in
``lax.platform_dependent``). Kernels exist for the simple cell with ``tanh``, the LSTM and
the GRU (``reset_after``); :mod:`jaxrnn.fast` uses them as :data:`CELLS` says (by default
the simple cell's and the GRU's always, the LSTM's where at least :data:`LSTM_MIN_HELD` of
its four weight blocks stay on chip: with fewer, re-read every step, it measured slower than
the XLA loops). Anything else runs the XLA loops. Matmul precision
follows JAX's (``jax.default_matmul_precision``: the default is TF32 on NVIDIA GPUs, as
for XLA's own dots; ``"highest"`` gives IEEE float32).

The kernels are plain JAX functions of their inputs; ``interpret=True`` runs them on any
backend through Pallas's interpreter, which is how the CPU test suite checks them against
the XLA loops (``tests/test_gpu.py``). ``JAXRNN_GPU_KERNELS=0`` turns them off.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jaxrnn.cells import lstm as _lstm
from jaxrnn.cells._common import Array

SWITCH = "JAXRNN_GPU_KERNELS"  # "0": off (XLA loops on the GPU too)
BLOCK_B = 16  # batch rows per program (the smallest M of a tensor-core product)
MAX_HIDDEN = 128  # H <= this: one [Hp, Hp] float32 gate block is 64 KiB
# H100, seed training step (B 64, T 250, H 100), medians (benchmarks/RESULTS.md, GPU section):
# 4 -> 8 warps: simple 1.45 -> 1.35 ms, LSTM 5.91 -> 4.92, GRU 4.92 -> 4.04 (weights re-read
# every step); hoisted weights, 8 -> 16 warps: simple 0.97 -> 1.16, GRU 2.97 -> 3.12.
NUM_WARPS = 8
# The cells whose kernels jaxrnn.fast uses: a set forces those on and the others off
# (``gpu.CELLS = gpu.ALL_CELLS``: every kernel, as the tests do); ``None`` (default): by
# measurement, see :func:`supports`. H100 (fourth GPU run): simple 0.97 ms (hoisted weights)
# vs 2.25 with the XLA loops; GRU 2.97 (hoisted) vs 4.15; LSTM 4.95 vs 4.69: its four
# [128, 128] blocks (256 KiB) do not all fit (see HOIST_WEIGHTS), and re-read from L2 every
# step the kernel was slower than the loops. H200 (eighth run, two runs): LSTM with its
# first two blocks held 4.35 / 4.32 ms vs the loops 4.77-4.93 (all re-read: 5.13).
ALL_CELLS = frozenset({"simple", "lstm", "gru"})
CELLS: frozenset[str] | None = None
# By default the LSTM's kernels run where at least this many of its 4 weight blocks are held
# (2 on sm_90 at H = 128; with 0 they measured slower than the loops, 1 is unmeasured).
LSTM_MIN_HELD = 2
# Read the recurrent weight blocks once, before the time loop, and keep them on chip (Triton
# stages a dot's operand through shared memory) instead of re-reading them from L1 / L2 at
# every step (Triton does not hoist a loop-invariant load by itself). ``None``: as many as
# fit in the GPU's shared memory beside the kernel's scratch (see :func:`held`); ``True`` /
# ``False`` force all / none (too large: Triton fails with RESOURCE_EXHAUSTED); an int k
# holds the first min(k, G) blocks and re-reads the others (benchmark variants, see
# benchmarks/frameworks.py GPU_VARIANTS).
HOIST_WEIGHTS: bool | int | None = None
# Shared memory per block (the opt-in maximum, KiB) by CUDA compute capability, from NVIDIA's
# CUDA C++ Programming Guide (compute capabilities table); others: the smallest, 64.
SMEM_KIB = {(7, 0): 96, (7, 5): 64, (8, 0): 163, (8, 6): 99, (8, 7): 163, (8, 9): 99,
            (9, 0): 227, (10, 0): 227, (12, 0): 99}  # fmt: skip
SCRATCH_KIB = 32  # shared memory left to the kernel's own use (layout conversions)
# Triton's software-pipelining stages of the time loop (1: none; 2 measured slower than
# hoisting and, for the gated cells, beyond the shared memory: RESULTS.md, GPU run 4).
NUM_STAGES = 1
# Run the kernels through Pallas's interpreter (any backend; what the CPU tests do when they
# route jaxrnn.fast's GPU branch onto the CPU). The kernels' ``interpret`` argument overrides it.
INTERPRET = False

# ------------------------------------------------------------------------------ helpers


def _pallas():
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton  # noqa: F401  (the backend the kernels need)

    return pl


def enabled() -> bool:
    """Whether the kernels are switched on (``$JAXRNN_GPU_KERNELS`` is not ``"0"``) and Pallas
    with its Triton backend imports (jax 0.11 deprecates that backend for Mosaic GPU: where a
    later jax no longer has it, the GPU runs the XLA loops instead of failing)."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    try:
        _pallas()
    except ImportError:
        return False
    return True


def supports(dtype, H: int, cell: str = "simple") -> bool:
    """Whether :mod:`jaxrnn.fast` runs ``cell``'s kernels for this dtype and hidden size:
    float32, ``H <= MAX_HIDDEN``, switched on, and ``cell`` in :data:`CELLS`; by default
    (``CELLS`` None) the simple cell and the GRU, and the LSTM where :func:`held` keeps at
    least :data:`LSTM_MIN_HELD` of its blocks on chip (see the module docstring)."""
    if not (jnp.dtype(dtype) == jnp.float32 and 0 < H <= MAX_HIDDEN and enabled()):
        return False
    if CELLS is not None:
        return cell in CELLS
    if cell == "lstm":
        return held(_lstm.N_GATES, padded(H)) >= LSTM_MIN_HELD
    return cell in ALL_CELLS


def padded(H: int) -> int:
    """``Hp``: the power of two >= max(H, 16).

    >>> padded(100), padded(16), padded(3)
    (128, 16, 16)
    """
    return max(16, 1 << (H - 1).bit_length())


def _batch_pad(B: int) -> int:
    return -(-B // BLOCK_B) * BLOCK_B


def _blocks(x: Array, G: int, H: int, Hp: int, Bp: int) -> Array:
    """``[T, B, G H] -> [T, G, Bp, Hp]`` (each gate block padded with zeros)."""
    T, B = x.shape[:2]
    x = x.reshape(T, B, G, H).transpose(0, 2, 1, 3)
    return jnp.pad(x, ((0, 0), (0, 0), (0, Bp - B), (0, Hp - H)))


def _unblocks(x: Array, B: int, H: int) -> Array:
    """``[T, G, Bp, Hp] -> [T, B, G H]``."""
    T, G = x.shape[:2]
    return x[:, :, :B, :H].transpose(0, 2, 1, 3).reshape(T, B, G * H)


def _pad_state(x: Array, Hp: int, Bp: int) -> Array:
    """``[..., B, H] -> [..., Bp, Hp]``."""
    pads = [(0, 0)] * (x.ndim - 2) + [(0, Bp - x.shape[-2]), (0, Hp - x.shape[-1])]
    return jnp.pad(x, pads)


def _weight_blocks(W: Array, G: int, Hp: int, transpose: bool = False) -> Array:
    """``W_h: [H, G H] -> [G, Hp, Hp]`` (block ``k`` = ``W_h[:, kH:(k+1)H]``, or its transpose)."""
    H = W.shape[0]
    W = W.reshape(H, G, H).transpose(1, 0, 2)  # [G, H (in), H (out)]
    if transpose:
        W = W.transpose(0, 2, 1)
    return jnp.pad(W, ((0, 0), (0, Hp - H), (0, Hp - H)))


def _spec(shape: tuple[int, ...], batch_axis: int | None):
    """A BlockSpec over the whole array but a ``BLOCK_B`` tile of ``batch_axis``."""
    pl = _pallas()
    block = tuple(BLOCK_B if a == batch_axis else n for a, n in enumerate(shape))

    def index(i):
        return tuple(i if a == batch_axis else 0 for a in range(len(shape)))

    return pl.BlockSpec(block, index)


def _triton_params():
    """Triton's compiler parameters (:data:`NUM_WARPS`, :data:`NUM_STAGES`), or ``None``
    (Pallas's defaults) where this JAX names them differently."""
    try:
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other JAX versions
        return None


def _smem_kib() -> int:
    """Shared memory per block (KiB) of the default backend's first GPU (:data:`SMEM_KIB`; 64
    where unknown or when no GPU is attached, e.g. lowering for CUDA on a CPU host)."""
    try:
        dev = jax.devices()[0]
        cc = tuple(int(v) for v in str(dev.compute_capability).split(".")[:2])
    except (AttributeError, RuntimeError, ValueError):
        return 64
    return SMEM_KIB.get(cc, 64)


def hoisted(G: int, Hp: int, itemsize: int = 4) -> bool:
    """Whether the kernels hold all ``G`` weight blocks ``[Hp, Hp]`` on chip across the time
    loop (:func:`held` ``== G``): on an H100 (227 KiB) the simple cell's and the GRU's at
    H <= 128 (64 / 192 KiB), the LSTM's at H <= 64 (64 KiB; 256 KiB at H = 128)."""
    return held(G, Hp, itemsize) == G


def held(G: int, Hp: int, itemsize: int = 4) -> int:
    """How many of the ``G`` weight blocks ``[Hp, Hp]`` the kernels hold on chip (the first
    ones; the others are re-read at each step). By default (:data:`HOIST_WEIGHTS` None) all
    ``G`` where they fit in the GPU's shared memory with :data:`SCRATCH_KIB` to spare, else
    as many as fit beside one staged block of the re-read ones (Triton stages a dot operand
    through shared memory): on an H100 / H200 (227 KiB) at Hp = 128 (64 KiB blocks) the
    LSTM's first 2 of 4 (3 held asked for 256 KiB and failed to compile), on an A100 (163 KiB)
    1 of the GRU's 3 and of the LSTM's 4. ``HOIST_WEIGHTS``: ``True`` / ``False`` all or
    none, an int ``k`` ``min(k, G)``."""
    if HOIST_WEIGHTS is not None:
        if isinstance(HOIST_WEIGHTS, bool):
            return G if HOIST_WEIGHTS else 0
        return max(0, min(int(HOIST_WEIGHTS), G))
    block, room = Hp * Hp * itemsize, (_smem_kib() - SCRATCH_KIB) * 1024
    return G if G * block <= room else max(0, room // block - 1)


def _weights(w_ref, G: int | None = None) -> list:
    """Getters of the recurrent weight operand inside the time loop: ``[w_ref[...]]`` (``G``
    None) or ``[w_ref[k] for k < G]``, each read once here (the first :func:`held` ones) or at
    each call."""
    index = [...] if G is None else list(range(G))
    n = held(G or 1, w_ref.shape[-1], jnp.dtype(w_ref.dtype).itemsize)
    return [
        (lambda w=w_ref[k]: w) if i < n else (lambda k=k: w_ref[k]) for i, k in enumerate(index)
    ]


def _call(kernel, inputs, outputs, interpret: bool | None):
    """``pallas_call`` over batch tiles. ``inputs`` / ``outputs``: ``[(array or shape,
    batch_axis)]``; arrays' batch axes are padded to a multiple of BLOCK_B already."""
    pl = _pallas()
    interpret = INTERPRET if interpret is None else interpret
    arrays = [a for a, _ in inputs]
    Bp = next(a.shape[ax] for a, ax in inputs if ax is not None)
    params = None if interpret else _triton_params()
    return pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(s, arrays[0].dtype) for s, _ in outputs],
        grid=(Bp // BLOCK_B,),
        in_specs=[_spec(a.shape, ax) for a, ax in inputs],
        out_specs=[_spec(s, ax) for s, ax in outputs],
        interpret=interpret,
        compiler_params=params,
    )(*arrays)


# ---------------------------------------------------------------------------- simple cell


def _simple_forward_kernel(u_ref, w_ref, h0_ref, s_ref):
    T = u_ref.shape[0]
    h0 = h0_ref[...]
    s_ref[0] = h0
    (w,) = _weights(w_ref)

    def step(t, h):
        h = jnp.tanh(u_ref[t] + jnp.dot(h, w()))
        s_ref[t + 1] = h
        return h

    jax.lax.fori_loop(0, T, step, h0)


def simple_forward(U: Array, W_h: Array, h0: Array, *, interpret: bool | None = None) -> Array:
    """``S = [h_0, .., h_T]: [T + 1, B, H]`` with ``h_t = tanh(U_t + h_{t-1} W_h)``.

    Args:
        U: ``[T, B, H]`` input projections. W_h: ``[H, H]``. h0: ``[B, H]``.
    """
    T, B, H = U.shape
    Hp, Bp = padded(H), _batch_pad(B)
    (S,) = _call(
        _simple_forward_kernel,
        [(_pad_state(U, Hp, Bp), 1), (_weight_blocks(W_h, 1, Hp)[0], None), (_pad_state(h0, Hp, Bp), 0)],
        [((T + 1, Bp, Hp), 1)],
        interpret,
    )  # fmt: skip
    return S[:, :B, :H]


def _simple_backward_kernel(s_ref, g_ref, wt_ref, d_ref, *, last_only: bool):
    T = s_ref.shape[0] - 1
    (wt,) = _weights(wt_ref)

    def step(j, dh_next):  # dh_next = dL/dh_t through h_{t+1} (last_only: g at t = T - 1)
        t = T - 1 - j
        h = s_ref[t + 1]
        dh = dh_next if last_only else dh_next + g_ref[t]
        dz = dh * (1.0 - h * h)
        d_ref[t] = dz
        return jnp.dot(dz, wt())

    init = g_ref[...] if last_only else jnp.zeros(s_ref.shape[1:], s_ref.dtype)
    jax.lax.fori_loop(0, T, step, init)


def simple_backward(
    S: Array, W_h: Array, g: Array, last_only: bool, *, interpret: bool | None = None
) -> Array:
    """``D: [T, B, H]``, ``D[t] = dL/da_t`` (``a_t`` the pre-activation of step ``t``).

    Args:
        S: ``[T + 1, B, H]`` from :func:`simple_forward`. W_h: ``[H, H]``.
        g: ``[T, B, H]`` cotangents of every ``h_t``, or ``[B, H]`` of ``h_T`` (``last_only``).
    """
    T1, B, H = S.shape
    Hp, Bp = padded(H), _batch_pad(B)
    g_ax = 0 if last_only else 1
    (D,) = _call(
        functools.partial(_simple_backward_kernel, last_only=last_only),
        [(_pad_state(S, Hp, Bp), 1), (_pad_state(g, Hp, Bp), g_ax),
         (_weight_blocks(W_h, 1, Hp, transpose=True)[0], None)],
        [((T1 - 1, Bp, Hp), 1)],
        interpret,
    )  # fmt: skip
    return D[:, :B, :H]


# ------------------------------------------------------------------------------ LSTM cell


def _lstm_forward_kernel(u_ref, w_ref, h0_ref, c0_ref, sh_ref, sc_ref, g_ref):
    T = u_ref.shape[0]
    h0, c0 = h0_ref[...], c0_ref[...]
    sh_ref[0] = h0
    sc_ref[0] = c0
    w = _weights(w_ref, 4)

    def step(t, carry):
        h, c = carry
        i = jax.nn.sigmoid(u_ref[t, 0] + jnp.dot(h, w[0]()))
        f = jax.nn.sigmoid(u_ref[t, 1] + jnp.dot(h, w[1]()))
        g = jnp.tanh(u_ref[t, 2] + jnp.dot(h, w[2]()))
        o = jax.nn.sigmoid(u_ref[t, 3] + jnp.dot(h, w[3]()))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        sh_ref[t + 1] = h
        sc_ref[t + 1] = c
        g_ref[t, 0] = i
        g_ref[t, 1] = f
        g_ref[t, 2] = g
        g_ref[t, 3] = o
        return h, c

    jax.lax.fori_loop(0, T, step, (h0, c0))


def lstm_forward(
    U: Array, W_h: Array, h0: Array, c0: Array, *, interpret: bool | None = None
) -> tuple[Array, Array, Array]:
    """``(S_h, S_c, Gs)`` as :func:`jaxrnn.fast._lstm_forward_xla`: states ``[T + 1, B, H]``
    and gate activations ``Gs: [T, B, 4H]`` (``i, f, g, o``).

    Args:
        U: ``[T, B, 4H]`` input projections. W_h: ``[H, 4H]``. h0, c0: ``[B, H]``.
    """
    T, B, H4 = U.shape
    H = H4 // 4
    Hp, Bp = padded(H), _batch_pad(B)
    S_h, S_c, Gs = _call(
        _lstm_forward_kernel,
        [(_blocks(U, 4, H, Hp, Bp), 2), (_weight_blocks(W_h, 4, Hp), None),
         (_pad_state(h0, Hp, Bp), 0), (_pad_state(c0, Hp, Bp), 0)],
        [((T + 1, Bp, Hp), 1), ((T + 1, Bp, Hp), 1), ((T, 4, Bp, Hp), 2)],
        interpret,
    )  # fmt: skip
    return S_h[:, :B, :H], S_c[:, :B, :H], _unblocks(Gs, B, H)


def _lstm_backward_kernel(*refs, has_hs: bool, has_cs: bool):
    refs = list(refs)
    sc_ref, gs_ref, wt_ref, ghT_ref, gcT_ref = refs[:5]
    ghs_ref = refs.pop(5) if has_hs else None
    gcs_ref = refs.pop(5) if has_cs else None
    d_ref, dc0_ref = refs[5:]
    T = gs_ref.shape[0]
    wt = _weights(wt_ref, 4)

    def step(j, carry):
        dh, dc = carry  # dL/dh_t through h_{t+1}, dL/dc_t through c_{t+1}
        t = T - 1 - j
        if has_hs:
            dh = dh + ghs_ref[t]
        if has_cs:
            dc = dc + gcs_ref[t]
        i, f, gg, o = gs_ref[t, 0], gs_ref[t, 1], gs_ref[t, 2], gs_ref[t, 3]
        tc = jnp.tanh(sc_ref[t + 1])
        dc = dc + dh * o * (1.0 - tc * tc)
        dzi = dc * gg * i * (1.0 - i)
        dzf = dc * sc_ref[t] * f * (1.0 - f)
        dzg = dc * i * (1.0 - gg * gg)
        dzo = dh * tc * o * (1.0 - o)
        d_ref[t, 0] = dzi
        d_ref[t, 1] = dzf
        d_ref[t, 2] = dzg
        d_ref[t, 3] = dzo
        dh = (
            jnp.dot(dzi, wt[0]())
            + jnp.dot(dzf, wt[1]())
            + jnp.dot(dzg, wt[2]())
            + jnp.dot(dzo, wt[3]())
        )
        return dh, dc * f

    _, dc0 = jax.lax.fori_loop(0, T, step, (ghT_ref[...], gcT_ref[...]))
    dc0_ref[...] = dc0


def lstm_backward(
    S_c: Array,
    Gs: Array,
    W_h: Array,
    g_hs: Array | None,
    g_hT: Array,
    g_cT: Array,
    g_cs: Array | None = None,
    *,
    interpret: bool | None = None,
) -> tuple[Array, Array]:
    """``(D, dc0)``: ``D = dL/dz: [T, B, 4H]`` (gate pre-activations) and ``dL/dc_0: [B, H]``,
    as :func:`jaxrnn.fast._lstm_backward_xla`.

    Args:
        S_c: ``[T + 1, B, H]``. Gs: ``[T, B, 4H]``. W_h: ``[H, 4H]``.
        g_hs, g_cs: ``[T, B, H]`` cotangents of every ``h_t`` / ``c_t``, or ``None``.
        g_hT, g_cT: ``[B, H]`` cotangents of the final carry.
    """
    T, B, H4 = Gs.shape
    H = H4 // 4
    Hp, Bp = padded(H), _batch_pad(B)
    inputs = [(_pad_state(S_c, Hp, Bp), 1), (_blocks(Gs, 4, H, Hp, Bp), 2),
              (_weight_blocks(W_h, 4, Hp, transpose=True), None),
              (_pad_state(g_hT, Hp, Bp), 0), (_pad_state(g_cT, Hp, Bp), 0)]  # fmt: skip
    inputs += [(_pad_state(g, Hp, Bp), 1) for g in (g_hs, g_cs) if g is not None]
    D, dc0 = _call(
        functools.partial(_lstm_backward_kernel, has_hs=g_hs is not None, has_cs=g_cs is not None),
        inputs,
        [((T, 4, Bp, Hp), 2), ((Bp, Hp), 0)],
        interpret,
    )
    return _unblocks(D, B, H), dc0[:B, :H]


# ------------------------------------------------------------------------------- GRU cell


def _gru_forward_kernel(a_ref, w_ref, b_ref, h0_ref, s_ref, sv_ref):
    T = a_ref.shape[0]
    h0 = h0_ref[...]
    s_ref[0] = h0
    w = _weights(w_ref, 3)

    def step(t, h):
        u_z = jnp.dot(h, w[0]()) + b_ref[0]
        u_r = jnp.dot(h, w[1]()) + b_ref[1]
        u_h = jnp.dot(h, w[2]()) + b_ref[2]
        z = jax.nn.sigmoid(a_ref[t, 0] + u_z)
        r = jax.nn.sigmoid(a_ref[t, 1] + u_r)
        n = jnp.tanh(a_ref[t, 2] + r * u_h)
        h = z * h + (1.0 - z) * n
        s_ref[t + 1] = h
        sv_ref[t, 0] = z
        sv_ref[t, 1] = r
        sv_ref[t, 2] = n
        sv_ref[t, 3] = u_h
        return h

    jax.lax.fori_loop(0, T, step, h0)


def gru_forward(
    A: Array, W_h: Array, b_h: Array, h0: Array, *, interpret: bool | None = None
) -> tuple[Array, Array]:
    """``(S, Sv)`` as :func:`jaxrnn.fast._gru_forward_xla`: states ``[T + 1, B, H]`` and
    ``Sv = [z, r, n, u_h]: [T, B, 4H]``.

    Args:
        A: ``[T, B, 3H]`` input projections. W_h: ``[H, 3H]``. b_h: ``[3H]``. h0: ``[B, H]``.
    """
    T, B, H3 = A.shape
    H = H3 // 3
    Hp, Bp = padded(H), _batch_pad(B)
    b = jnp.pad(b_h.reshape(3, 1, H), ((0, 0), (0, 0), (0, Hp - H)))  # [3, 1, Hp]
    S, Sv = _call(
        _gru_forward_kernel,
        [(_blocks(A, 3, H, Hp, Bp), 2), (_weight_blocks(W_h, 3, Hp), None), (b, None),
         (_pad_state(h0, Hp, Bp), 0)],
        [((T + 1, Bp, Hp), 1), ((T, 4, Bp, Hp), 2)],
        interpret,
    )  # fmt: skip
    return S[:, :B, :H], _unblocks(Sv, B, H)


def _gru_backward_kernel(s_ref, sv_ref, wt_ref, g_ref, d_ref, n_ref, dh0_ref, *, last_only: bool):
    T = sv_ref.shape[0]
    wt = _weights(wt_ref, 3)

    def step(j, dh):  # dL/dh_t through h_{t+1} (last_only: g at t = T - 1)
        t = T - 1 - j
        if not last_only:
            dh = dh + g_ref[t]
        z, r, n, u_h = sv_ref[t, 0], sv_ref[t, 1], sv_ref[t, 2], sv_ref[t, 3]
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (s_ref[t] - n) * z * (1.0 - z)
        dr = dn * u_h * r * (1.0 - r)
        d_ref[t, 0] = dz
        d_ref[t, 1] = dr
        d_ref[t, 2] = dn * r
        n_ref[t] = dn
        return dh * z + jnp.dot(dz, wt[0]()) + jnp.dot(dr, wt[1]()) + jnp.dot(dn * r, wt[2]())

    init = g_ref[...] if last_only else jnp.zeros(s_ref.shape[1:], s_ref.dtype)
    dh0_ref[...] = jax.lax.fori_loop(0, T, step, init)


def gru_backward(
    S: Array, Sv: Array, W_h: Array, g: Array, last_only: bool, *, interpret: bool | None = None
) -> tuple[Array, Array, Array]:
    """``(D, N, dh0)`` as :func:`jaxrnn.fast._gru_backward_xla`'s loop: ``D = dL/du: [T, B, 3H]``
    (``u = h W_h + b_h``), ``N = dL/d(n pre-activation): [T, B, H]``, ``dh0: [B, H]``.

    Args:
        S: ``[T + 1, B, H]``. Sv: ``[T, B, 4H]``. W_h: ``[H, 3H]``.
        g: ``[T, B, H]`` cotangents of every ``h_t``, or ``[B, H]`` of ``h_T`` (``last_only``).
    """
    T, B, H4 = Sv.shape
    H = H4 // 4
    Hp, Bp = padded(H), _batch_pad(B)
    D, N, dh0 = _call(
        functools.partial(_gru_backward_kernel, last_only=last_only),
        [(_pad_state(S, Hp, Bp), 1), (_blocks(Sv, 4, H, Hp, Bp), 2),
         (_weight_blocks(W_h, 3, Hp, transpose=True), None),
         (_pad_state(g, Hp, Bp), 0 if last_only else 1)],
        [((T, 3, Bp, Hp), 2), ((T, Bp, Hp), 1), ((Bp, Hp), 0)],
        interpret,
    )  # fmt: skip
    return _unblocks(D, B, H), N[:, :B, :H], dh0[:B, :H]


__all__ = [
    "BLOCK_B", "MAX_HIDDEN", "enabled", "gru_backward", "gru_forward", "held", "hoisted",
    "lstm_backward", "lstm_forward", "padded", "simple_backward", "simple_forward", "supports",
]  # fmt: skip
