"""Flax modules that wrap the pure cells: the same maths, in Flax's object style.

``RNN`` (Flax NNX) and ``LinenRNN`` (Flax Linen) hold a cell's arrays as Flax
parameters and, when called, rebuild the pure parameter pytree and run
:func:`jaxrnn.rnn` on it. There is no second implementation of the cell:
a module and the pure function give identical numbers by construction, and
parameters move both ways (``RNN.from_params`` / ``module.to_params()``).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxrnn import cells, nn, rnn
    >>> layer = nn.RNN("simple", 32, 100, rngs=nnx.Rngs(0))   # SimpleRNN(100) on 32 features
    >>> xs = jnp.ones((4, 250, 32), jnp.float32)                           # [B, T, D]
    >>> h_T, hs = layer(xs)
    >>> h_T.shape, hs.shape
    ((4, 100), (4, 250, 100))
    >>> bool((rnn(cells.simple.cell, layer.to_params(), xs)[0] == h_T).all())
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as linen
import jax
from flax import nnx

from jaxrnn import cells
from jaxrnn._rnn import rnn
from jaxrnn.cells._common import Array


def _split_fields(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a cell-params dataclass into (array fields, static fields)."""
    if not dataclasses.is_dataclass(params):
        raise TypeError(
            f"expected cell parameters (a dataclass such as SimpleParams); got {type(params)}"
        )
    arrays, static = {}, {}
    for f in dataclasses.fields(params):
        (static if f.metadata.get("static") else arrays)[f.name] = getattr(params, f.name)
    return arrays, static


class RNN(nnx.Module):
    """A recurrent layer (Flax NNX) whose step is the pure ``cells.<cell_name>.cell``.

    Args:
        cell_name: a registered cell, e.g. ``"simple"``.
        in_features: ``D``.
        hidden_size: ``H``.
        rngs: ``nnx.Rngs`` for initialisation (stream ``params``).
        params: instead of ``rngs``, existing pure parameters to hold.
        **cell_options: passed to ``cells.<cell_name>.init`` (``activation=...``, ...).

    Call: ``layer(xs, h0=None, *, lengths=None, reverse=False, unroll=1, time_major=False)``
    ``-> (final_carry, ys)``, exactly as :func:`jaxrnn.rnn`.
    """

    def __init__(
        self,
        cell_name: str,
        in_features: int | None = None,
        hidden_size: int | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        params: Any = None,
        **cell_options: Any,
    ):
        self.cell_name = cell_name
        cell_mod = cells.get(cell_name)
        if params is None:
            given = {"in_features": in_features, "hidden_size": hidden_size, "rngs": rngs}
            missing = [k for k, v in given.items() if v is None]
            if missing:
                raise ValueError(
                    f"RNN needs in_features, hidden_size and rngs, or params=; missing {missing}"
                )
            params = cell_mod.init(rngs.params(), in_features, hidden_size, **cell_options)
        elif cell_options:
            raise ValueError(f"cell options {sorted(cell_options)} are fixed by params=; drop them")
        self.load_params(params)

    @classmethod
    def from_params(cls, cell_name: str, params: Any) -> RNN:
        """A module holding ``params`` (the pure pytree of ``cells.<cell_name>``)."""
        return cls(cell_name, params=params)

    def load_params(self, params: Any) -> None:
        """Replaces this module's parameters with the pure pytree ``params``."""
        arrays, static = _split_fields(params)
        self._params_type = type(params)
        self._static = static
        self._names = tuple(arrays)
        for name, value in arrays.items():
            setattr(self, name, None if value is None else nnx.Param(value))

    def to_params(self) -> Any:
        """The pure parameter pytree, for ``cells.<cell_name>.cell`` and :func:`jaxrnn.rnn`."""
        arrays = {}
        for name in self._names:
            v = getattr(self, name)
            arrays[name] = None if v is None else v[...]
        return self._params_type(**arrays, **self._static)

    def __call__(self, xs: Array, h0: Any = None, **rnn_kwargs: Any) -> tuple[Any, Any]:
        return rnn(cells.get(self.cell_name).cell, self.to_params(), xs, h0, **rnn_kwargs)


class LinenRNN(linen.Module):
    """The same layer for Flax Linen; parameters are named after the pure pytree's fields.

    Attributes:
        cell_name: a registered cell, e.g. ``"simple"``.
        hidden_size: ``H``; ``D`` is read from the input.
        cell_options: ``cells.<cell_name>.init`` options as ``((name, value), ...)``.

    ``LinenRNN.params_from(pure)`` gives the ``{"params": ...}`` dict that holds ``pure``,
    and ``LinenRNN.to_params(variables)`` the pure pytree back.
    """

    cell_name: str
    hidden_size: int
    cell_options: tuple[tuple[str, Any], ...] = ()

    @linen.compact
    def __call__(self, xs: Array, h0: Any = None, **rnn_kwargs: Any) -> tuple[Any, Any]:
        cell_mod = cells.get(self.cell_name)
        D = xs.shape[-1]

        def make(key: Array) -> Any:
            return cell_mod.init(key, D, self.hidden_size, **dict(self.cell_options))

        template = jax.eval_shape(make, jax.random.key(0))
        arrays, static = _split_fields(template)
        values = {
            name: None if spec is None else self.param(name, lambda k, n=name: getattr(make(k), n))
            for name, spec in arrays.items()
        }
        params = type(template)(**values, **static)
        return rnn(cell_mod.cell, params, xs, h0, **rnn_kwargs)

    @staticmethod
    def params_from(pure: Any) -> dict[str, Any]:
        """``{"params": {field: array}}`` holding the pure pytree ``pure``."""
        arrays, _ = _split_fields(pure)
        return {"params": {k: v for k, v in arrays.items() if v is not None}}

    def to_params(self, variables: dict[str, Any], input_size: int) -> Any:
        """The pure pytree held by ``variables`` (from ``init`` or :meth:`params_from`)."""
        cell_mod = cells.get(self.cell_name)
        template = jax.eval_shape(
            lambda k: cell_mod.init(k, input_size, self.hidden_size, **dict(self.cell_options)),
            jax.random.key(0),
        )
        arrays, static = _split_fields(template)
        p = variables["params"]
        return type(template)(
            **{k: (None if v is None else p[k]) for k, v in arrays.items()}, **static
        )
