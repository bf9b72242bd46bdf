"""The Linear Recurrent Unit (LRU): a complex diagonal linear recurrence with a real readout.

.. math::

    \\lambda = \\exp(-\\exp(\\nu^{\\log}) + i \\exp(\\theta^{\\log})), \\qquad
    \\gamma = \\exp(\\gamma^{\\log}), \\\\
    h_t = \\lambda \\odot h_{t-1} + \\gamma \\odot (x_t B), \\qquad
    y_t = \\mathrm{Re}(h_t C) + D \\odot x_t

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De (2023), "Resurrecting recurrent neural
networks for long sequences", ICML: the exponential parameterisation keeps every
``|λ_j| = exp(-exp(ν_j)) < 1`` (stable) while training ``ν, θ`` freely; ``γ`` is initialised
to ``sqrt(1 - |λ|^2)`` so that the state's scale does not depend on how close ``|λ|`` is to
one; the eigenvalues start uniformly on the ring ``r_min <= |λ| <= r_max`` with phases in
``[0, max_phase]`` (the paper's ring initialisation).

Layout: ``B = B_re + i B_im: [D, N]`` (``N`` = ``state_size``), ``C = C_re + i C_im: [N, H]``,
``ν^log, θ^log, γ^log: [N]``. The skip ``D`` is the paper's ``D ⊙ x_t``, ``D: [H]``, when
``input_size == hidden_size``; otherwise a dense ``x_t @ D``, ``D: [input_size, H]``, so that
an LRU can read inputs of another width (e.g. the adding problem's two features).

The LRU is linear in its inputs, so one layer alone cannot form products of them (the adding
problem's value × marker); in the paper the nonlinearity sits in the GLU/MLP between stacked
layers. ``init(..., encoder_size=E)`` adds a position-wise encoder in front of a single
layer: ``x_t`` is replaced by the bilinear GLU (Shazeer 2020, "GLU variants improve
transformer") ``u_t = (x_t W_e + b_e) ⊙ (x_t W_g + b_g)`` (``W_e, W_g: [D, E]``,
``b_e, b_g: [E]``) everywhere above, and ``B``, ``D`` read ``E`` features. A product of two
inputs is one of its features at moderate weights, where a gelu encoder needs large ones.
Without it (the default) the cell is the paper's LRU.

The carry is ``LRUCarry(y, h)``: ``h [*batch, N]`` the complex state (complex64 for float32
parameters, complex128 for float64) and ``y [*batch, H]`` the last output. The recurrence
never reads ``y``; it is there so that, like the LSTM's ``(h, c)``, the carry's first entry
is the layer's output (what classifiers read from a final carry, and what stays put on
masked steps). :func:`initial_carry` gives zeros for both.

:func:`scan` runs all steps at once with :func:`jaxrnn.parallel.linear_scan` (complex);
:func:`cell` is the same step for :func:`jaxrnn.rnn`, ``stack``, masks and training.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import cells, rnn
    >>> params = cells.lru.init(jax.random.key(0), input_size=4, hidden_size=4, state_size=8)
    >>> carry = cells.lru.initial_carry(params, batch_shape=(2,))
    >>> carry.y.shape, carry.h.shape, carry.h.dtype
    ((2, 4), (2, 8), dtype('complex64'))
    >>> xs = jax.random.normal(jax.random.key(1), (2, 9, 4), jnp.float32)  # [B, T, D]
    >>> (y_T, h_T), ys = cells.lru.scan(params, xs)
    >>> _, ys_ref = rnn(cells.lru.cell, params, xs, backend="scan")
    >>> ys.shape, bool(jnp.allclose(ys, ys_ref, atol=1e-5))
    ((2, 9, 4), True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import parallel
from jaxrnn.cells import _linear_checks

Array = jax.Array
NAME = "lru"


class LRUCarry(NamedTuple):
    """The LRU's carry: ``y [*batch, H]`` (real, the last output) and ``h [*batch, N]`` (complex)."""

    y: Array
    h: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LRUParams:
    """Parameters of the LRU (all arrays, real; ``B`` and ``C`` as real and imaginary parts).

    Attributes:
        nu_log: ``[N]``, ``|λ| = exp(-exp(nu_log))``.
        theta_log: ``[N]``, ``arg λ = exp(theta_log)``.
        gamma_log: ``[N]``, the input normalisation ``γ = exp(gamma_log)``.
        B_re, B_im: ``[D, N]`` input matrix.
        C_re, C_im: ``[N, H]`` output matrix.
        D: ``[H]`` elementwise skip (when ``B`` reads ``H`` features) or ``[D, H]`` dense skip.
        W_e, b_e, W_g, b_g: ``[D, E]``, ``[E]``, ``[D, E]``, ``[E]``: the optional encoder
            ``(x W_e + b_e) ⊙ (x W_g + b_g)``, or ``None``.
    """

    nu_log: Array
    theta_log: Array
    gamma_log: Array
    B_re: Array
    B_im: Array
    C_re: Array
    C_im: Array
    D: Array
    W_e: Array | None = None
    b_e: Array | None = None
    W_g: Array | None = None
    b_g: Array | None = None

    @property
    def input_size(self) -> int:
        return int((self.B_re if self.W_e is None else self.W_e).shape[0])

    @property
    def feature_size(self) -> int:
        """What ``B`` and the skip read: ``D``, or the encoder's ``E``."""
        return int(self.B_re.shape[0])

    @property
    def state_size(self) -> int:
        return int(self.B_re.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.C_re.shape[1])


def init(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    state_size: int | None = None,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    encoder_size: int | None = None,
    dtype: Any = jnp.float32,
) -> LRUParams:
    """Creates LRU parameters with the paper's initialisation.

    ``|λ|^2 ~ U(r_min^2, r_max^2)`` (uniform on the ring), ``arg λ ~ U(0, max_phase)``,
    ``γ = sqrt(1 - |λ|^2)``, ``B_re, B_im ~ N(0, 1 / (2 D))``, ``C_re, C_im ~ N(0, 1 / N)``,
    ``D ~ N(0, 1)`` (dense skip: ``N(0, 1 / D)``); the encoder: glorot-uniform ``W_e, W_g``,
    ``b_e = 0``, ``b_g = 1`` (so that it starts near the linear map ``x W_e``).

    Args:
        key: PRNG key.
        input_size: ``D``.
        hidden_size: ``H``, the width of ``y``.
        state_size: ``N``, complex state entries; ``None``: ``hidden_size``.
        r_min, r_max: the ring of initial ``|λ|``, ``0 <= r_min < r_max <= 1`` (long-range
            tasks: e.g. ``0.9, 0.999``).
        max_phase: initial phases lie in ``[0, max_phase]``.
        encoder_size: ``E``, the width of the optional bilinear encoder; ``None``: none.
        dtype: real parameter dtype (the state is the matching complex dtype).

    Returns:
        ``LRUParams``.
    """
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"lru.init: {name} must be a positive int; got {value!r}")
    N = hidden_size if state_size is None else state_size
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"lru.init: state_size must be a positive int or None; got {state_size!r}")
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(
            f"lru.init: need 0 <= r_min < r_max <= 1; got r_min={r_min!r}, r_max={r_max!r}"
        )
    if not max_phase > 0:
        raise ValueError(f"lru.init: max_phase must be > 0; got {max_phase!r}")
    if encoder_size is not None and (
        isinstance(encoder_size, bool) or not isinstance(encoder_size, int) or encoder_size < 1
    ):
        raise ValueError(
            f"lru.init: encoder_size must be a positive int or None; got {encoder_size!r}"
        )
    k_u1, k_u2, k_bre, k_bim, k_cre, k_cim, k_d, k_e, k_g = jax.random.split(key, 9)
    encoder = {}
    if encoder_size is not None:
        glorot, shape = jax.nn.initializers.glorot_uniform(), (input_size, encoder_size)
        encoder = dict(
            W_e=glorot(k_e, shape, dtype),
            b_e=jnp.zeros((encoder_size,), dtype),
            W_g=glorot(k_g, shape, dtype),
            b_g=jnp.ones((encoder_size,), dtype),
        )
    D = input_size if encoder_size is None else encoder_size  # what B and the skip read
    H = hidden_size
    u1 = jax.random.uniform(k_u1, (N,), dtype)
    u2 = jax.random.uniform(k_u2, (N,), dtype)
    nu_log = jnp.log(
        -0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2)
    )  # |λ|^2 = u1 on the ring
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    gamma_log = jnp.log(jnp.sqrt(1 - modulus**2))
    skip_shape = (H,) if D == H else (D, H)
    skip_scale = 1.0 if D == H else 1 / math.sqrt(D)
    return LRUParams(
        nu_log=nu_log,
        theta_log=theta_log,
        gamma_log=gamma_log,
        B_re=jax.random.normal(k_bre, (D, N), dtype) / math.sqrt(2 * D),
        B_im=jax.random.normal(k_bim, (D, N), dtype) / math.sqrt(2 * D),
        C_re=jax.random.normal(k_cre, (N, H), dtype) / math.sqrt(N),
        C_im=jax.random.normal(k_cim, (N, H), dtype) / math.sqrt(N),
        D=jax.random.normal(k_d, skip_shape, dtype) * skip_scale,
        **encoder,
    )


def _complex_dtype(params: LRUParams) -> Any:
    return jnp.result_type(params.B_re.dtype, jnp.complex64)


def initial_carry(params: LRUParams, batch_shape: tuple[int, ...] = ()) -> LRUCarry:
    """Zeros: ``LRUCarry(y [*batch_shape, H] real, h [*batch_shape, N] complex)``."""
    batch_shape = tuple(batch_shape)
    return LRUCarry(
        y=jnp.zeros((*batch_shape, params.hidden_size), params.B_re.dtype),
        h=jnp.zeros((*batch_shape, params.state_size), _complex_dtype(params)),
    )


def eigenvalues(params: LRUParams) -> Array:
    """``λ = exp(-exp(ν^log) + i exp(θ^log))``, ``[N]`` complex."""
    return jnp.exp(jax.lax.complex(-jnp.exp(params.nu_log), jnp.exp(params.theta_log)))


def _features(params: LRUParams, x: Array) -> Array:
    """What the recurrence reads: ``x``, or ``(x W_e + b_e) ⊙ (x W_g + b_g)`` with the encoder."""
    if params.W_e is None:
        return x
    return (x @ params.W_e + params.b_e) * (x @ params.W_g + params.b_g)  # [..., E]


def _drive(params: LRUParams, u: Array) -> Array:
    """``γ ⊙ (u B)``: ``[..., D] -> [..., N]`` complex."""
    Bu = jax.lax.complex(u @ params.B_re, u @ params.B_im)  # [..., N]
    return jnp.exp(params.gamma_log) * Bu


def _readout(params: LRUParams, h: Array, u: Array) -> Array:
    """``Re(h C) + skip(u)``: ``[..., N], [..., D] -> [..., H]``."""
    y = h.real @ params.C_re - h.imag @ params.C_im  # [..., H]
    return y + (u * params.D if params.D.ndim == 1 else u @ params.D)


def cell(params: LRUParams, carry: LRUCarry, x: Array) -> tuple[LRUCarry, Array]:
    """One step: ``h = λ ⊙ h_prev + γ ⊙ (x B)``, ``y = Re(h C) + D ⊙ x``; returns ``(LRUCarry(y, h), y)``.

    Args:
        params: ``LRUParams``.
        carry: ``LRUCarry(y [*batch, H], h [*batch, N] complex)``; ``y`` is not read.
        x: ``[*batch, D]``.

    Returns:
        ``(LRUCarry(y, h), y)`` with ``y: [*batch, H]``.
    """
    batch_shape = _check_step("lru.cell", params, x)
    _check_carry("lru.cell", params, carry, batch_shape)
    u = _features(params, x)  # [*batch, D] (or [*batch, E] through the encoder)
    h = eigenvalues(params) * carry.h + _drive(params, u)  # [*batch, N]
    y = _readout(params, h, u)  # [*batch, H]
    return LRUCarry(y=y, h=h), y


def scan(
    params: LRUParams,
    xs: Array,
    h0: LRUCarry | None = None,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
) -> tuple[LRUCarry, Array]:
    """Runs the LRU over all steps at once; the numbers of ``rnn(cell, params, xs, ...)``.

    Args:
        params: ``LRUParams``.
        xs: ``[B, T, D]`` or ``[T, D]``.
        h0: ``LRUCarry`` (leaves ``[B, .]`` or unbatched); ``None``: zeros.
        lengths: ``[B]`` int (a scalar when unbatched), as in :func:`jaxrnn.rnn`: steps past a
            sequence's length keep its carry (``y`` included) and output zeros.
        reverse: from the last step to the first (each sequence from its own last step).

    Returns:
        ``(LRUCarry(y, h) after the last processed step, ys [B, T, H])``.
    """
    where = "lru.scan"
    batch_shape, T = _linear_checks.check_sequence(where, params, xs)
    if h0 is None:
        h0 = initial_carry(params, batch_shape)
    _check_carry(where, params, h0, batch_shape)
    lam = eigenvalues(params)  # [N]
    us = _features(params, xs)  # [B, T, D] (or E)
    b = _drive(params, us)  # [B, T, N] complex
    a = jnp.broadcast_to(lam, b.shape)
    hs = parallel.linear_scan(a, b, h0.h, reverse=reverse, lengths=lengths)  # [B, T, N]
    ys = _readout(params, hs, us)  # [B, T, H]
    h_final = hs[..., 0, :] if reverse else hs[..., -1, :]
    if lengths is None:
        return LRUCarry(ys[..., 0, :] if reverse else ys[..., -1, :], h_final), ys
    lengths = jnp.asarray(lengths)
    last = jnp.zeros_like(lengths) if reverse else jnp.maximum(lengths - 1, 0)  # last step run
    y_last = jnp.take_along_axis(ys, last[..., None, None], axis=-2)[..., 0, :]  # [B, H]
    y_final = jnp.where((lengths > 0)[..., None], y_last, h0.y)
    alive = jnp.arange(T) < lengths[..., None]  # [B, T]: outputs past a length are 0
    return LRUCarry(y_final, h_final), jnp.where(alive[..., None], ys, 0)


def _check_step(where: str, params: LRUParams, x: Any) -> tuple[int, ...]:
    """Checks ``x: [*batch, D]`` and the skip's shape; returns the batch shape."""
    _linear_checks.check_float(where, "x", x)
    shape, D, H = tuple(jnp.shape(x)), params.input_size, params.hidden_size
    if len(shape) < 1 or shape[-1] != D:
        raise ValueError(f"{where}: x must have shape [..., {D}] (input_size); got shape {shape}")
    F = params.feature_size
    if tuple(params.D.shape) not in ((H,), (F, H)) or (params.D.ndim == 1 and F != H):
        expected = [H] if F == H else [F, H]
        raise ValueError(f"{where}: D must have shape {expected}; got {list(params.D.shape)}")
    return shape[:-1]


def _check_carry(where: str, params: LRUParams, carry: Any, batch_shape: tuple[int, ...]) -> None:
    if not isinstance(carry, tuple) or len(carry) != 2:
        raise TypeError(
            f"{where}: carry must be LRUCarry(y [*batch, H], h [*batch, N] complex); "
            f"got {type(carry).__name__}"
        )
    y, h = carry
    for what, leaf, width in (("y", y, params.hidden_size), ("h", h, params.state_size)):
        expected = (*batch_shape, width)
        if tuple(jnp.shape(leaf)) != expected:
            raise ValueError(
                f"{where}: carry {what} must have shape {list(expected)}; "
                f"got {list(jnp.shape(leaf))}"
            )
    if not jnp.issubdtype(jnp.result_type(h), jnp.complexfloating):
        raise TypeError(
            f"{where}: carry h must be complex ({_complex_dtype(params)}); got {jnp.result_type(h)}"
        )
    _linear_checks.check_float(where, "carry y", y)


cell.initial_carry = initial_carry  # type: ignore[attr-defined]  # lets rnn() build h0
cell.cell_name = NAME  # type: ignore[attr-defined]
cell.scan = scan  # type: ignore[attr-defined]  # rnn's "linear" backend: all steps at once
