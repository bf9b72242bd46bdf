"""Pieces every cell shares: activations, Keras-equal initializers, input checks.

The checks run in Python while JAX traces a cell (shapes and dtypes are
static then), so a wrong shape is a plain ``ValueError``/``TypeError`` naming
what was expected and what was received, never an XLA error, and costs nothing
at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Activation = str | Callable[[Array], Array]
Cell = Callable[[Any, Any, Array], tuple[Any, Any]]  # cell(params, carry, x) -> (carry, y)


def carry_output(carry: Any) -> Array:
    """The part of a carry that is the cell's output ``h``: the carry itself, or ``carry[0]``
    for a tuple carry such as the LSTM's ``(h, c)`` (also Keras's rule for masked steps:
    "the first state is the previous output")."""
    return carry[0] if isinstance(carry, tuple) else carry


def with_output(carry: Any, h: Array) -> Any:
    """``carry`` with its output part (:func:`carry_output`) replaced by ``h``."""
    if not isinstance(carry, tuple):
        return h
    rest = tuple(carry[1:])
    return carry._make((h, *rest)) if hasattr(carry, "_make") else (h, *rest)


class Split(NamedTuple):
    """A cell step written as ``update(params, carry, project(params, x), h @ W_h + b_h)``.

    ``project`` reads ``x`` alone, so a backend of :func:`jaxrnn.rnn` computes it for all
    ``T`` steps as one matrix product before the loop; ``update`` is element-wise, so the
    loop keeps only the ``[B, H] @ [H, G H]`` product and its backward pass can take
    ``dW_h`` as one product after the loop.

    Attributes:
        project: ``(params, x, x_mask=None) -> u``: ``[*batch, D] -> [*batch, G H]``, which
            is ``x @ W_x + b_x`` without a mask.
        update: ``(params, carry, u, r) -> carry`` with ``r = h @ W_h + b_h``; the step's
            output is the new carry's ``h`` (:func:`carry_output`). It reads only the
            options of ``params`` (static fields), not its arrays.
        W_x: ``[D, G H]``.
        b_x: ``[G H]`` bias of the input projection, or ``None``.
        W_h: ``[H, G H]``.
        b_h: ``[G H]`` bias added to ``h @ W_h`` (the GRU's reset-after bias), or ``None``.
        kernel: ``(cell, activation)`` when jaxrnn's kernels compute this ``update``
            (``("simple", "tanh")``, ``("lstm", "")``, ``("gru", "")``), else ``None``.
    """

    project: Callable[..., Array]
    update: Callable[..., Any]
    W_x: Array
    b_x: Array | None
    W_h: Array
    b_h: Array | None
    kernel: tuple[str, str] | None


def _hard_sigmoid(x: Array) -> Array:
    # Keras 3 definition: relu6(x + 3) / 6  (Keras 2 used clip(0.2 x + 0.5, 0, 1)).
    return jnp.clip(x / 6.0 + 0.5, 0.0, 1.0)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "identity": lambda x: x,
    "linear": lambda x: x,  # Keras's name for identity
    "softsign": jax.nn.soft_sign,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}


def resolve_activation(
    activation: Activation, what: str = "activation"
) -> Callable[[Array], Array]:
    """Returns the function for an activation given by name or as a callable."""
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"{what} must be one of {sorted(ACTIVATIONS)} or a callable; got {activation!r}"
        ) from None


def check_activation(activation: Activation, what: str = "activation") -> Activation:
    """Validates an activation option (named ``what`` in the error) at init time and returns
    it unchanged."""
    resolve_activation(activation, what)
    return activation


# Initializers with the distributions of Keras's defaults.
glorot_uniform = jax.nn.initializers.glorot_uniform()  # U(-a, a), a = sqrt(6 / (fan_in + fan_out))
orthogonal = jax.nn.initializers.orthogonal()  # QR of a Gaussian matrix, sign-corrected
zeros = jax.nn.initializers.zeros


def identity_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Identity matrix (IRNN, Le et al. 2015); ``key`` unused, square shapes only."""
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"identity init needs a square [H, H] shape; got {shape}")
    return jnp.eye(shape[0], dtype=dtype)


INITIALIZERS: dict[str, Callable[..., Array]] = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": jax.nn.initializers.glorot_normal(),
    "he_uniform": jax.nn.initializers.he_uniform(),
    "he_normal": jax.nn.initializers.he_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "orthogonal": orthogonal,
    "identity": identity_init,
    "zeros": zeros,
    "ones": jax.nn.initializers.ones,
}


def resolve_initializer(init: str | Callable[..., Array], what: str) -> Callable[..., Array]:
    """Returns an ``init(key, shape, dtype)`` function given by name or as a callable."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        raise ValueError(
            f"{what} must be one of {sorted(INITIALIZERS)} or a callable "
            f"init(key, shape, dtype); got {init!r}"
        ) from None


def check_sizes(input_size: Any, hidden_size: Any) -> None:
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_float(name: str, x: Any) -> None:
    """Raises ``TypeError`` unless ``x`` has a floating dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (e.g. float32); got {dtype}. "
            "Token ids go through an embedding first; other data: cast with .astype(jnp.float32)."
        )


def check_step_input(cell_name: str, x: Any, input_size: int) -> tuple[int, ...]:
    """Checks one step's input ``x: [*batch, D]`` and returns its batch shape."""
    check_float(f"{cell_name}: x", x)
    shape = jnp.shape(x)
    if len(shape) < 1 or shape[-1] != input_size:
        raise ValueError(
            f"{cell_name}: x must have shape [..., {input_size}] (input_size={input_size}); "
            f"got shape {tuple(shape)}"
        )
    return tuple(shape[:-1])


def check_state(
    cell_name: str, name: str, h: Any, batch_shape: tuple[int, ...], hidden: int
) -> None:
    """Checks one carry array ``h: [*batch, H]`` against the batch shape of ``x``."""
    expected = (*batch_shape, hidden)
    if tuple(jnp.shape(h)) != expected:
        raise ValueError(
            f"{cell_name}: {name} must have shape {list(expected)} "
            f"(batch {list(batch_shape)}, hidden_size={hidden}); got shape {tuple(jnp.shape(h))}"
        )
    check_float(f"{cell_name}: {name}", h)
