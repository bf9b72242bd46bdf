"""One hoisted recurrence, run by a chosen implementation, with every JAX transformation.

:func:`recurrence` runs a :class:`~jaxrnn.cells.Split` cell over projected inputs ``U`` and
returns every state and the final carry. An :class:`Impl` says how: its ``forward`` computes
the states and what its ``backward`` reads (the XLA loops' saved buffers, a kernel's gate
buffers); its ``backward`` is the hand-written BPTT. :func:`~jaxrnn.backends._linear.differentiable`
makes reverse mode run that pair and every other transformation see :func:`_xla.loop`, so
each implementation gives the numbers of the XLA loops under any composition of
transformations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from jaxrnn.backends import _linear, _xla
from jaxrnn.cells._common import Array, Split


class Impl(NamedTuple):
    """How one backend computes a hoisted recurrence.

    ``forward(update, W_h, b_h, U, ids, carry0, unroll) -> (states, final, private)``;
    ``backward(update, W_h, b_h, U, ids, carry0, states, private, g_states, g_final, unroll)
    -> (dW_h, db_h, dU, dcarry0)``, where the leaves of ``g_states`` / ``g_final`` are
    ``None`` when zero.
    """

    name: str
    forward: Callable[..., tuple[Any, Any, Any]]
    backward: Callable[..., tuple[Array, Array | None, Array, Any]]


def _xla_backward(update, W_h, b_h, U, ids, carry0, states, saved, g_states, g_final, unroll):
    return _xla.backward(W_h, b_h, U, ids, carry0, states, saved, g_states, g_final, unroll)


XLA = Impl("xla", _xla.loop_saving, _xla_backward)


def options_only(params: Any) -> Any:
    """``params`` with every array replaced by ``None``: what :attr:`Split.update` may read (its
    static options), safe to close over in a traced primitive's functions."""
    leaves, tree = jax.tree.flatten(params)
    return jax.tree.unflatten(tree, [None] * len(leaves))


def recurrence(
    impl: Impl, split: Callable[[Any], Split], params: Any, U: Array, ids: Array | None,
    carry0: Any, unroll: int | bool = 1,
) -> tuple[Any, Any]:  # fmt: skip
    """``(states, final)``: a split cell's carry after every step (leaves ``[T, B, ...]``) and
    after the last (leaves ``[B, ...]``).

    Args:
        impl: the implementation (:data:`XLA`, or a kernel's).
        split: ``params -> Split`` (the cell's ``split``).
        params: the cell's parameters.
        U: ``[T, B, G H]`` projected inputs, or a projected table ``[V, G H]`` with ``ids``.
        ids: ``None`` or ``[T, B]`` int rows of the table.
        carry0: leaves ``[B, ...]``.
        unroll: steps per iteration of the XLA loops.
    """
    s = split(params)
    update = functools.partial(s.update, options_only(params))

    def forward(W_h, b_h, U, ids, carry0):
        states, final, private = impl.forward(update, W_h, b_h, U, ids, carry0, unroll)
        return (states, final), private

    def backward(args, outs, private, cts):
        W_h, b_h, U, ids, carry0 = args
        g_states, g_final = cts
        g_states = None if _all_none(g_states) else g_states
        g_final = None if _all_none(g_final) else g_final
        dW_h, db_h, dU, dcarry0 = impl.backward(
            update, W_h, b_h, U, ids, carry0, outs[0], private, g_states, g_final, unroll
        )
        return dW_h, db_h, dU, None, dcarry0

    def reference(W_h, b_h, U, ids, carry0):
        return _xla.loop(update, W_h, b_h, U, ids, carry0, unroll)

    f = _linear.differentiable(forward, backward, reference, f"jaxrnn_{impl.name}_recurrence")
    (states, final), _ = f(s.W_h, s.b_h, U, ids, carry0)
    return states, final


def _all_none(tree: Any) -> bool:
    return all(x is None for x in jax.tree.leaves(tree, is_leaf=lambda x: x is None))
