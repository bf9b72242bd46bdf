"""Recurrent cells: pure functions of (params, carry, x).

The contract every cell module here follows (and any cell you write for
:func:`jaxrnn.rnn` should follow)::

    params = init(key, input_size, hidden_size, ...)  # a pytree of arrays (options static)
    carry, y = cell(params, carry, x)                 # one step; x: [*batch, D] -> y: [*batch, H]
    carry0 = initial_carry(params, batch_shape)       # zeros; leaves [*batch_shape, H]

A cell works on one time step and any leading batch shape (``()`` for a single
example). It knows nothing about time, scan, padding or lengths: that is
:func:`jaxrnn.rnn`'s job. ``cell.initial_carry`` is set on each cell function so
that ``rnn`` can build a zero state when no ``h0`` is given.

Optionally, a cell states how its step splits (:class:`Split`), which lets ``rnn``'s faster
backends (:mod:`jaxrnn.backends`) compute the input projection for all steps at once and
keep only ``h @ W_h`` and an element-wise ``update`` in the loop::

    split = cell.split(params)                  # Split, or None where the step does not split
    u = split.project(params, x)                # x @ W_x + b_x: reads x alone
    carry = split.update(params, carry, u, h @ split.W_h + split.b_h)

The built-in cells set ``cell.split``; a cell of your own that has one (or that is a
``functools.partial`` of a built-in cell) runs on the faster backends too.

Modules:
    simple: the Elman cell, ``h = act(x @ W_x + h @ W_h + b)`` (Keras ``SimpleRNNCell``).
    lstm: the LSTM cell, carry ``LSTMCarry(h, c)`` (Keras ``LSTMCell``).
    gru: the GRU cell, ``reset_after=True`` (Keras 3 / PyTorch) or ``False`` (Keras ``GRUCell``).
    lru: the Linear Recurrent Unit (Orvieto et al. 2023), complex diagonal state, ``scan`` in parallel.
    mingru, minlstm: minGRU and minLSTM (Feng et al. 2024), gates from ``x`` only, ``scan`` in parallel.
"""

from types import ModuleType

from jaxrnn.cells import gru, lru, lstm, mingru, minlstm, simple
from jaxrnn.cells._common import Split, carry_output

_REGISTRY: dict[str, ModuleType] = {
    "simple": simple,
    "lstm": lstm,
    "gru": gru,
    "lru": lru,
    "mingru": mingru,
    "minlstm": minlstm,
}


def get(name: str) -> ModuleType:
    """Returns the cell module registered under ``name`` (e.g. ``"simple"``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; expected one of {sorted(_REGISTRY)}") from None


def register(name: str, module: ModuleType) -> None:
    """Registers a module following the cell contract under ``name``."""
    for attr in ("init", "cell", "initial_carry"):
        if not callable(getattr(module, attr, None)):
            raise TypeError(f"cell module {module.__name__} lacks a callable {attr!r}")
    _REGISTRY[name] = module


__all__ = [
    "Split",
    "carry_output",
    "get",
    "gru",
    "lru",
    "lstm",
    "mingru",
    "minlstm",
    "register",
    "simple",
]
