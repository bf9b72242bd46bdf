"""GPU kernels: each recurrence as ONE persistent Pallas (Triton) kernel, for CUDA GPUs.

On a GPU the XLA loops launch a few kernels per time step (the ``[B, H] @ [H, G H]`` product,
the cell's element-wise update, the row writes): launch and loop overhead, not arithmetic,
bound the step. cuDNN instead runs the whole sequence inside one kernel; these kernels do the
same, in Pallas:

* the grid runs over batch tiles of :data:`BLOCK_B` rows, one program each (a recurrence
  has no parallelism along T; tiles are independent);
* a program holds its tile's state ``h [BLOCK_B, Hp]`` (and ``c``) in registers and loops
  over all ``T`` steps inside the kernel: per step it reads ``u_t``, multiplies by ``W_h``
  (tensor cores, one ``[Hp, Hp]`` operand per gate block), applies the cell and writes the
  saved state rows;
* the weight blocks are read once, before the loop, and stay on chip where they fit in
  shared memory (:func:`held`); the others are re-read from L1 / L2 at every step;
* the backward kernels run the reversed loop of the hand-written BPTT and write ``dL/dz``
  for every step; ``dW_h`` is then ONE ``[H, T B] @ [T B, G H]`` matmul in XLA.

Layout: ``H`` is padded to ``Hp`` (a power of two, at least 16; Triton's block sizes) and
each gate gets its own ``[.., Hp]`` block (``[T, G, Bp, Hp]``), the batch to a multiple of
:data:`BLOCK_B`. Padding is exact: zero weights, inputs and initial states keep the padded
units and rows at zero through the cell and their gradients at zero.

Scope (:func:`supports`): float32, ``H <= MAX_HIDDEN`` (a gate block's ``[Hp, Hp]`` operand
must fit in a multiprocessor's shared memory beside the rest), kernels for the simple cell
with ``tanh``, the LSTM and the GRU (``reset_after``). Matmul precision follows JAX's
(``jax.default_matmul_precision``; TF32 by default on NVIDIA GPUs, as for XLA's own dots).

The kernels are plain JAX functions of their inputs; ``Config(interpret=True)`` runs them on
any backend through Pallas's interpreter, which is how the CPU test suite checks them.
``JAXRNN_GPU_KERNELS=0`` turns them off.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.cells._common import Array

SWITCH = "JAXRNN_GPU_KERNELS"  # "0": off (XLA loops on the GPU too)
BLOCK_B = 16  # batch rows per program (the smallest M of a tensor-core product)
MAX_HIDDEN = 128  # H <= this: one [Hp, Hp] float32 gate block is 64 KiB
ALL_CELLS = frozenset({"simple", "lstm", "gru"})
# The LSTM's kernels run by default where at least this many of its 4 weight blocks are held
# on chip: re-read from L2 at every step they were slower than the XLA loops.
LSTM_MIN_HELD = 2
# Shared memory per block (the opt-in maximum, KiB) by CUDA compute capability, from NVIDIA's
# CUDA C++ Programming Guide (compute capabilities table); others: the smallest, 64.
SMEM_KIB = {(7, 0): 96, (7, 5): 64, (8, 0): 163, (8, 6): 99, (8, 7): 163, (8, 9): 99,
            (9, 0): 227, (10, 0): 227, (12, 0): 99}  # fmt: skip
SCRATCH_KIB = 32  # shared memory left to the kernel's own use (layout conversions)


class Config(NamedTuple):
    """How the kernels are compiled and run.

    Attributes:
        cells: the cells whose kernels run (``None``: the simple cell and the GRU, and the
            LSTM where at least :data:`LSTM_MIN_HELD` of its weight blocks are held).
        hold: weight blocks held on chip across the time loop: ``None`` as many as fit
            (:func:`held`), ``True`` / ``False`` all / none, an int ``k`` the first ``k``.
        interpret: run through Pallas's interpreter (any backend; the CPU tests).
        warps: Triton warps per program.
        stages: Triton's software-pipelining stages of the time loop (1: none; hoisting the
            weights serves better and leaves the shared memory to them).
        cross_platform: lower for a CUDA GPU although the default platform is not one
            (``jax.export(..., platforms=["cuda"])`` on another host).
    """

    cells: frozenset[str] | None = None
    hold: bool | int | None = None
    interpret: bool = False
    warps: int = 8
    stages: int = 1
    cross_platform: bool = False


DEFAULT = Config()


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


def unsupported(dtype, H: int, cell: str, config: Config = DEFAULT) -> str | None:
    """Why the kernels do not run ``cell`` for this dtype and hidden size (``None``: they
    do): float32, ``H <= MAX_HIDDEN``, switched on, and ``cell`` in ``config.cells`` (by
    default the simple cell and the GRU, and the LSTM where :func:`held` keeps at least
    :data:`LSTM_MIN_HELD` of its blocks on chip)."""
    if jnp.dtype(dtype) != jnp.float32 and not config.interpret:  # interpreted: any float
        return f"the GPU kernels are float32; got {jnp.dtype(dtype)}"
    if not 0 < H <= MAX_HIDDEN:
        return f"the GPU kernels take hidden sizes up to {MAX_HIDDEN}; got {H}"
    if not enabled():
        return f"the GPU kernels are off ({SWITCH}=0) or Pallas's Triton backend is missing"
    if config.cells is not None:
        return (
            None
            if cell in config.cells
            else f"config.cells {sorted(config.cells)} leaves out {cell!r}"
        )
    if cell == "lstm" and held(4, padded(H), 4, config.hold) < LSTM_MIN_HELD:
        return "the LSTM's kernels need 2 of its 4 weight blocks on chip; this GPU holds fewer"
    return None


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


def _triton_params(config: Config):
    """Triton's compiler parameters, or ``None`` (Pallas's defaults) where this JAX names them
    differently."""
    try:
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=config.warps, num_stages=config.stages)
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


def held(G: int, Hp: int, itemsize: int = 4, hold: bool | int | None = None) -> int:
    """How many of the ``G`` weight blocks ``[Hp, Hp]`` the kernels hold on chip (the first
    ones; the others are re-read at each step). ``hold`` ``None``: all ``G`` where they fit
    in the GPU's shared memory with :data:`SCRATCH_KIB` to spare, else as many as fit beside
    one staged block of the re-read ones (Triton stages a dot operand through shared memory):
    on an H100 / H200 (227 KiB) at Hp = 128 (64 KiB blocks) the LSTM's first 2 of 4, on an
    A100 (163 KiB) 1 of the GRU's 3 and of the LSTM's 4. ``True`` / ``False``: all or none;
    an int ``k``: ``min(k, G)``."""
    if hold is not None:
        if isinstance(hold, bool):
            return G if hold else 0
        return max(0, min(int(hold), G))
    block, room = Hp * Hp * itemsize, (_smem_kib() - SCRATCH_KIB) * 1024
    return G if G * block <= room else max(0, room // block - 1)


def _weights(w_ref, n_held: int, G: int | None = None) -> list:
    """Getters of the recurrent weight operand inside the time loop: ``[w_ref[...]]`` (``G``
    None) or ``[w_ref[k] for k < G]``, the first ``n_held`` read once here, the others at
    each call."""
    index = [...] if G is None else list(range(G))
    return [
        (lambda w=w_ref[k]: w) if i < n_held else (lambda k=k: w_ref[k])
        for i, k in enumerate(index)
    ]


def _n_held(config: Config, G: int, Hp: int) -> int:
    return held(G, Hp, 4, config.hold)


def _call(kernel, inputs, outputs, config: Config):
    """``pallas_call`` over batch tiles. ``inputs`` / ``outputs``: ``[(array or shape,
    batch_axis)]``; arrays' batch axes are padded to a multiple of BLOCK_B already."""
    pl = _pallas()
    interpret = config.interpret
    arrays = [a for a, _ in inputs]
    Bp = next(a.shape[ax] for a, ax in inputs if ax is not None)
    params = None if interpret else _triton_params(config)
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


def _simple_forward_kernel(u_ref, w_ref, h0_ref, s_ref, *, n_held: int):
    T = u_ref.shape[0]
    h0 = h0_ref[...]
    s_ref[0] = h0
    (w,) = _weights(w_ref, n_held)

    def step(t, h):
        h = jnp.tanh(u_ref[t] + jnp.dot(h, w()))
        s_ref[t + 1] = h
        return h

    jax.lax.fori_loop(0, T, step, h0)


def simple_forward(U: Array, W_h: Array, h0: Array, *, config: Config = DEFAULT) -> Array:
    """``S = [h_0, .., h_T]: [T + 1, B, H]`` with ``h_t = tanh(U_t + h_{t-1} W_h)``.

    Args:
        U: ``[T, B, H]`` input projections. W_h: ``[H, H]``. h0: ``[B, H]``.
    """
    T, B, H = U.shape
    Hp, Bp = padded(H), _batch_pad(B)
    (S,) = _call(
        functools.partial(_simple_forward_kernel, n_held=_n_held(config, 1, Hp)),
        [(_pad_state(U, Hp, Bp), 1), (_weight_blocks(W_h, 1, Hp)[0], None), (_pad_state(h0, Hp, Bp), 0)],
        [((T + 1, Bp, Hp), 1)],
        config,
    )  # fmt: skip
    return S[:, :B, :H]


def _simple_backward_kernel(s_ref, g_ref, wt_ref, d_ref, *, last_only: bool, n_held: int):
    T = s_ref.shape[0] - 1
    (wt,) = _weights(wt_ref, n_held)

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
    S: Array, W_h: Array, g: Array, last_only: bool, *, config: Config = DEFAULT
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
        functools.partial(_simple_backward_kernel, last_only=last_only, n_held=_n_held(config, 1, Hp)),
        [(_pad_state(S, Hp, Bp), 1), (_pad_state(g, Hp, Bp), g_ax),
         (_weight_blocks(W_h, 1, Hp, transpose=True)[0], None)],
        [((T1 - 1, Bp, Hp), 1)],
        config,
    )  # fmt: skip
    return D[:, :B, :H]


# ------------------------------------------------------------------------------ LSTM cell


def _lstm_forward_kernel(u_ref, w_ref, h0_ref, c0_ref, sh_ref, sc_ref, g_ref, *, n_held: int):
    T = u_ref.shape[0]
    h0, c0 = h0_ref[...], c0_ref[...]
    sh_ref[0] = h0
    sc_ref[0] = c0
    w = _weights(w_ref, n_held, 4)

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
    U: Array, W_h: Array, h0: Array, c0: Array, *, config: Config = DEFAULT
) -> tuple[Array, Array, Array]:
    """``(S_h, S_c, Gs)`` as the XLA loops: states ``[T + 1, B, H]``
    and gate activations ``Gs: [T, B, 4H]`` (``i, f, g, o``).

    Args:
        U: ``[T, B, 4H]`` input projections. W_h: ``[H, 4H]``. h0, c0: ``[B, H]``.
    """
    T, B, H4 = U.shape
    H = H4 // 4
    Hp, Bp = padded(H), _batch_pad(B)
    S_h, S_c, Gs = _call(
        functools.partial(_lstm_forward_kernel, n_held=_n_held(config, 4, Hp)),
        [(_blocks(U, 4, H, Hp, Bp), 2), (_weight_blocks(W_h, 4, Hp), None),
         (_pad_state(h0, Hp, Bp), 0), (_pad_state(c0, Hp, Bp), 0)],
        [((T + 1, Bp, Hp), 1), ((T + 1, Bp, Hp), 1), ((T, 4, Bp, Hp), 2)],
        config,
    )  # fmt: skip
    return S_h[:, :B, :H], S_c[:, :B, :H], _unblocks(Gs, B, H)


def _lstm_backward_kernel(*refs, has_hs: bool, has_cs: bool, n_held: int):
    refs = list(refs)
    sc_ref, gs_ref, wt_ref, ghT_ref, gcT_ref = refs[:5]
    ghs_ref = refs.pop(5) if has_hs else None
    gcs_ref = refs.pop(5) if has_cs else None
    d_ref, dc0_ref = refs[5:]
    T = gs_ref.shape[0]
    wt = _weights(wt_ref, n_held, 4)

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
    config: Config = DEFAULT,
) -> tuple[Array, Array]:
    """``(D, dc0)``: ``D = dL/dz: [T, B, 4H]`` (gate pre-activations) and ``dL/dc_0: [B, H]``,
    as the XLA loops.

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
        functools.partial(
            _lstm_backward_kernel,
            has_hs=g_hs is not None,
            has_cs=g_cs is not None,
            n_held=_n_held(config, 4, Hp),
        ),
        inputs,
        [((T, 4, Bp, Hp), 2), ((Bp, Hp), 0)],
        config,
    )
    return _unblocks(D, B, H), dc0[:B, :H]


# ------------------------------------------------------------------------------- GRU cell


def _gru_forward_kernel(a_ref, w_ref, b_ref, h0_ref, s_ref, sv_ref, *, n_held: int):
    T = a_ref.shape[0]
    h0 = h0_ref[...]
    s_ref[0] = h0
    w = _weights(w_ref, n_held, 3)

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
    A: Array, W_h: Array, b_h: Array, h0: Array, *, config: Config = DEFAULT
) -> tuple[Array, Array]:
    """``(S, Sv)`` as the XLA loops: states ``[T + 1, B, H]`` and
    ``Sv = [z, r, n, u_h]: [T, B, 4H]``.

    Args:
        A: ``[T, B, 3H]`` input projections. W_h: ``[H, 3H]``. b_h: ``[3H]``. h0: ``[B, H]``.
    """
    T, B, H3 = A.shape
    H = H3 // 3
    Hp, Bp = padded(H), _batch_pad(B)
    b = jnp.pad(b_h.reshape(3, 1, H), ((0, 0), (0, 0), (0, Hp - H)))  # [3, 1, Hp]
    S, Sv = _call(
        functools.partial(_gru_forward_kernel, n_held=_n_held(config, 3, Hp)),
        [(_blocks(A, 3, H, Hp, Bp), 2), (_weight_blocks(W_h, 3, Hp), None), (b, None),
         (_pad_state(h0, Hp, Bp), 0)],
        [((T + 1, Bp, Hp), 1), ((T, 4, Bp, Hp), 2)],
        config,
    )  # fmt: skip
    return S[:, :B, :H], _unblocks(Sv, B, H)


def _gru_backward_kernel(
    s_ref, sv_ref, wt_ref, g_ref, d_ref, n_ref, dh0_ref, *, last_only: bool, n_held: int
):
    T = sv_ref.shape[0]
    wt = _weights(wt_ref, n_held, 3)

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
    S: Array, Sv: Array, W_h: Array, g: Array, last_only: bool, *, config: Config = DEFAULT
) -> tuple[Array, Array, Array]:
    """``(D, N, dh0)`` as the XLA loops: ``D = dL/du: [T, B, 3H]``
    (``u = h W_h + b_h``), ``N = dL/d(n pre-activation): [T, B, H]``, ``dh0: [B, H]``.

    Args:
        S: ``[T + 1, B, H]``. Sv: ``[T, B, 4H]``. W_h: ``[H, 3H]``.
        g: ``[T, B, H]`` cotangents of every ``h_t``, or ``[B, H]`` of ``h_T`` (``last_only``).
    """
    T, B, H4 = Sv.shape
    H = H4 // 4
    Hp, Bp = padded(H), _batch_pad(B)
    D, N, dh0 = _call(
        functools.partial(_gru_backward_kernel, last_only=last_only, n_held=_n_held(config, 3, Hp)),
        [(_pad_state(S, Hp, Bp), 1), (_blocks(Sv, 4, H, Hp, Bp), 2),
         (_weight_blocks(W_h, 3, Hp, transpose=True), None),
         (_pad_state(g, Hp, Bp), 0 if last_only else 1)],
        [((T, 3, Bp, Hp), 2), ((T, Bp, Hp), 1), ((Bp, Hp), 0)],
        config,
    )  # fmt: skip
    return _unblocks(D, B, H), N[:, :B, :H], dh0[:B, :H]
