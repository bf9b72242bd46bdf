"""Which implementation runs :func:`jaxrnn.rnn`, and why.

======== ================================================================================
``scan``   ``jax.lax.scan`` over ``cell(params, carry, x)``: the reference; any cell.
``xla``    the hoisted XLA loops: the input projection ``x @ W_x + b`` for all ``T`` steps as
           one product before the loop, the loop keeps only ``h @ W_h`` and the cell's
           element-wise update, and the backward pass takes ``dW_h`` as one product after it.
           Any cell with a :class:`~jaxrnn.cells.Split` (the simple cell, the LSTM, the GRU
           with ``reset_after``), any dtype, any platform.
``native`` hand-written CPU kernels (XLA FFI) for the simple cell, the LSTM and the GRU: each
           loop one call, batch rows over the CPU's threads. float32, x86-64 with AVX-512 or AVX2 + FMA.
``pallas`` Pallas (Triton) kernels, each loop one persistent GPU kernel. float32,
           ``H <= 128``, CUDA.
``linear`` no loop: the cell's own ``scan``, which solves its linear recurrence for all
           steps at once with :func:`jaxrnn.parallel.linear_scan` (``O(log T)`` depth).
           The linear recurrent cells (``lru``, ``mingru``, ``minlstm``), any dtype.
``auto``   the fastest of these that can run the call on the default platform: ``native``
           on a CPU, ``pallas`` on a GPU, else ``xla``, else ``scan``; a linear cell runs
           on ``linear`` off the CPU, and step by step (``scan``) on a CPU, where the scan
           showed no consistent win.
======== ================================================================================

Every backend gives the numbers of ``scan`` up to float rounding, under every JAX
transformation (``jit``, ``grad``, ``vmap``, ``jvp``, ``jacfwd``, ``hessian``, ...): reverse
mode runs the backend's own backward pass; forward mode and second derivatives go through
the XLA loops' (:mod:`._linear`). Naming a backend that cannot run a call raises
``ValueError`` with the reason; :func:`explain` gives the decision as text.

Settings of the kernels are a :class:`Backend` (``rnn(..., backend=Backend("pallas",
gpu=gpu.Config(interpret=True)))``) or, for every call by name traced inside a block,
:func:`options`. The environment switches ``JAXRNN_NATIVE`` (``0``: off, ``require``: a
failed build is an error) and ``JAXRNN_GPU_KERNELS`` (``0``: off) turn the kernels off
without code changes.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import backends, cells
    >>> p = cells.lstm.init(jax.random.key(0), 8, 16)
    >>> xs = jnp.ones((4, 20, 8), jnp.float64)                     # [B, T, D]
    >>> backends.select(cells.lstm.cell, p, xs).name                # float64: no kernels
    'xla'
    >>> backends.select(cells.gru.cell, cells.gru.init(jax.random.key(0), 8, 16, reset_after=False), xs).name
    'scan'
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn.backends import _recurrence, cpu, gpu
from jaxrnn.cells._common import Array, Split

NAMES = ("auto", "scan", "xla", "native", "pallas", "linear")


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend by name, with the settings of its kernels.

    Attributes:
        name: one of :data:`NAMES`.
        native_threads: row chunks the native kernels run in parallel (0: the size of XLA's
            CPU thread pool).
        gpu: the Pallas kernels' :class:`~jaxrnn.backends.gpu.Config` (cells, weights held
            on chip, ``interpret=True`` to run them on any platform through Pallas's
            interpreter).
    """

    name: str = "auto"
    native_threads: int = 0
    gpu: gpu.Config = gpu.Config()

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"backend must be one of {NAMES} or a Backend; got {self.name!r}")


_DEFAULTS: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "jaxrnn_backend_defaults", default=()
)


@contextlib.contextmanager
def options(**settings: Any) -> Iterator[None]:
    """Settings of :class:`Backend` (``native_threads``, ``gpu``) for every backend given by
    name in calls traced inside this block (a ``jax.jit``-compiled function keeps what it was
    traced with).

    Examples:
        >>> from jaxrnn import backends
        >>> with backends.options(gpu=backends.gpu.Config(interpret=True)):
        ...     backends.resolve("pallas").gpu.interpret
        True
    """
    fields = {f.name for f in dataclasses.fields(Backend)} - {"name"}
    unknown = set(settings) - fields
    if unknown:
        raise TypeError(
            f"backends.options: unknown settings {sorted(unknown)}; expected {sorted(fields)}"
        )
    token = _DEFAULTS.set(tuple({**dict(_DEFAULTS.get()), **settings}.items()))
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def resolve(backend: str | Backend) -> Backend:
    """``backend`` as a :class:`Backend` (a name takes the settings of :func:`options`)."""
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name in {NAMES} or a Backend; got {backend!r}")
    return Backend(backend, **dict(_DEFAULTS.get()))


class Hoisted(NamedTuple):
    """A cell the hoisted backends can run: its :class:`~jaxrnn.cells.Split` and the
    dropout mask on its input bound with ``functools.partial`` (or ``None``)."""

    split: Callable[[Any], Split]
    x_mask: Array | None


class Choice(NamedTuple):
    """What runs a call: a backend ``name``, why, and (for the hoisted backends) the hoisted
    cell and the implementation, or (for ``linear``) the cell's whole-sequence ``scan``."""

    name: str
    reason: str
    hoisted: Hoisted | None = None
    impl: _recurrence.Impl | None = None
    scan: Callable | None = None


def unwrap(cell: Callable) -> tuple[Callable, dict[str, Any]] | None:
    """``(function, keywords)`` of a cell that may be a ``functools.partial`` (nested ones
    merged); ``None`` where positional arguments are bound."""
    keywords: dict[str, Any] = {}
    while isinstance(cell, functools.partial):
        if cell.args:
            return None
        keywords = {**cell.keywords, **keywords}
        cell = cell.func
    return cell, keywords


def hoisting(cell: Callable, params: Any) -> tuple[Hoisted | None, str]:
    """The cell as :class:`Hoisted`, or ``None`` and why it cannot be hoisted."""
    unwrapped = unwrap(cell)
    if unwrapped is None:
        return None, "the cell is a functools.partial with positional arguments bound"
    fn, keywords = unwrapped
    split = getattr(fn, "split", None)
    if split is None:
        name = getattr(fn, "cell_name", getattr(fn, "__name__", repr(fn)))
        return None, f"{name} has no split (only cells written as a Split can be hoisted)"
    extra = set(keywords) - {"x_mask", "h_mask"}
    if extra:
        return None, f"the cell has {sorted(extra)} bound (only x_mask / h_mask are understood)"
    if keywords.get("h_mask") is not None:
        return None, "a recurrent dropout mask (h_mask) acts inside the recurrence"
    if split(params) is None:
        return None, "this cell's parameters have no split (e.g. a GRU with reset_after=False)"
    return Hoisted(split, keywords.get("x_mask")), ""


def linear_scan_of(cell: Callable) -> tuple[Callable | None, str]:
    """The cell's whole-sequence ``scan(params, xs [B, T, D], h0, *, lengths, reverse) ->
    (final_carry, ys [B, T, H])`` (an attribute of the cell function, as the linear recurrent
    cells have), or ``None`` and why it has none."""
    unwrapped = unwrap(cell)
    fn = cell if unwrapped is None else unwrapped[0]
    name = getattr(fn, "cell_name", getattr(fn, "__name__", repr(fn)))
    scan = getattr(fn, "scan", None)
    if scan is None:
        why = "the lru, mingru and minlstm cells have one"
        return None, f"{name} has no linear recurrence to scan ({why})"
    if cell is not fn:
        why = "its scan would not see the bound arguments"
        return None, f"{name} is wrapped in a functools.partial ({why})"
    return scan, ""


def select(cell: Callable, params: Any, xs: Any, backend: str | Backend = "auto") -> Choice:
    """The backend that runs ``rnn(cell, params, xs, backend=backend)``.

    Args:
        cell, params: as in :func:`jaxrnn.rnn`.
        xs: the inputs (only their dtype is read), or a dtype.
        backend: a name in :data:`NAMES` or a :class:`Backend`.

    Raises:
        ValueError: ``backend`` names one that cannot run the call (the message says why).
    """
    b = resolve(backend)
    dtype = jnp.dtype(getattr(xs, "dtype", xs))
    if b.name == "scan":
        return Choice("scan", "asked for")
    scan, why_not_linear = linear_scan_of(cell)
    if b.name == "linear":
        if scan is None:
            raise ValueError(
                f"backend 'linear' cannot run this call: {why_not_linear}; use 'scan' or 'auto'"
            )
        return Choice("linear", "asked for", scan=scan)
    if b.name == "auto" and scan is not None:
        if jax.default_backend() == "cpu":
            # the scan's O(log T) levels need many cores: on a 2-core CPU its training step
            # ran at 0.3-1.4x the loop's, no consistent win (benchmarks/parallel.py cells)
            return Choice("scan", "on a CPU the step-by-step loop runs a linear cell faster")
        return Choice("linear", "the cell's recurrence is linear: one associative scan", scan=scan)
    hoisted, why_not = hoisting(cell, params)
    if hoisted is None:
        if b.name != "auto":
            raise ValueError(
                f"backend {b.name!r} cannot run this call: {why_not}; use 'scan' or 'auto'"
            )
        return Choice("scan", why_not)
    s = hoisted.split(params)
    kind, act = s.kernel if s.kernel is not None else ("", "")
    H, GH = s.W_h.shape

    def native_reason():
        if s.kernel is None:
            return "no native kernel computes this cell's update (other activations)"
        return cpu.unsupported(kind, act, dtype, H, GH // H)

    def pallas_reason():
        if s.kernel is None:
            return "no GPU kernel computes this cell's update (other activations)"
        return gpu.unsupported(kind, act, dtype, H, b.gpu)

    if b.name == "xla":
        return _xla_choice("asked for", hoisted)
    if b.name == "native":
        reason = native_reason()
        if reason is not None:
            raise ValueError(f"backend 'native' cannot run this call: {reason}")
        return Choice("native", "asked for", hoisted, cpu.impl(kind, act, b.native_threads))
    if b.name == "pallas":
        remote = b.gpu.interpret or b.gpu.cross_platform
        reason = (
            pallas_reason()
            if remote or jax.default_backend() == "gpu"
            else (
                f"the default platform is {jax.default_backend()!r}, not a CUDA GPU "
                "(gpu.Config(interpret=True) runs the kernels anywhere; cross_platform=True "
                "lowers them for CUDA, e.g. for jax.export)"
            )
        )
        if reason is not None:
            raise ValueError(f"backend 'pallas' cannot run this call: {reason}")
        return Choice("pallas", "asked for", hoisted, gpu.impl(kind, b.gpu))
    platform = jax.default_backend()
    if platform == "cpu":
        reason = native_reason()
        if reason is None:
            return Choice("native", "the native CPU kernels run this cell", hoisted,
                          cpu.impl(kind, act, b.native_threads))  # fmt: skip
        return _xla_choice(f"not 'native': {reason}", hoisted)
    if platform == "gpu":
        reason = pallas_reason()
        if reason is None:
            return Choice("pallas", "the GPU kernels run this cell", hoisted, gpu.impl(kind, b.gpu))
        return _xla_choice(f"not 'pallas': {reason}", hoisted)
    return _xla_choice(f"no kernels for the {platform!r} platform", hoisted)


def _xla_choice(reason: str, hoisted: Hoisted) -> Choice:
    if jax.default_backend() == "cpu":
        cpu.keep_freed_memory()  # the loops' [T, B, ...] buffers are reused, not re-faulted
    return Choice("xla", reason, hoisted, _recurrence.XLA)


def explain(cell: Callable, params: Any, xs: Any, backend: str | Backend = "auto") -> str:
    """Which backend runs ``rnn(cell, params, xs, backend=backend)`` and why, as a sentence.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import backends, cells
        >>> p = cells.simple.init(jax.random.key(0), 3, 4, activation="softsign")
        >>> print(backends.explain(cells.simple.cell, p, jnp.ones((2, 5, 3), jnp.float32)))  # doctest: +ELLIPSIS
        backend 'xla' (hoisted XLA loops) on cpu: not 'native': ...
    """
    choice = select(cell, params, xs, backend)
    what = {
        "scan": "jax.lax.scan over the cell",
        "xla": "hoisted XLA loops",
        "native": "native CPU kernels",
        "pallas": "Pallas GPU kernels",
        "linear": "the cell's linear recurrence by associative scan",
    }[choice.name]
    return f"backend {choice.name!r} ({what}) on {jax.default_backend()}: {choice.reason}"


__all__ = [
    "NAMES", "Backend", "Choice", "Hoisted", "cpu", "explain", "gpu", "hoisting",
    "linear_scan_of", "options", "resolve", "select", "unwrap",
]  # fmt: skip
