"""From-scratch NumPy reference: the simple RNN and the seed model, forward and backward.

No JAX here: explicit Python loops over time, and backpropagation through time
(BPTT) derived by hand, one equation per line. It is slow on purpose, and is the
independent truth the JAX code is tested against.

The seed model (Keras: ``Embedding(V, E) -> SimpleRNN(H) -> Dense(1, sigmoid)``),
for tokens ``w [B, T]`` and labels ``y [B]``::

    x_t   = E[w_t]                              # [B, E]      embedding lookup
    a_t   = x_t W_x + h_{t-1} W_h + b           # [B, H]      pre-activation
    h_t   = tanh(a_t)                           # [B, H]      h_0 = 0
    z     = h_T W_o + b_o                       # [B, 1]      logit
    p     = sigmoid(z)                          # [B, 1]
    L     = mean_b[ -y log p - (1 - y) log(1 - p) ]

So "(250, 32) with 100 units -> (100,)" is: 250 steps of ``h = tanh(x_t @ W_x
[32, 100] + h @ W_h [100, 100] + b [100])``, keeping only the last ``h``.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> xs = rng.normal(size=(250, 32))                      # one sequence [T, D]
    >>> W_x, W_h, b = rng.normal(size=(32, 100)) * 0.1, np.eye(100) * 0.5, np.zeros(100)
    >>> h_T, hs = simple_rnn_forward(xs, W_x, W_h, b)
    >>> h_T.shape, hs.shape
    ((100,), (250, 100))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow


# name -> (f(a), f'(a) written in terms of a and h = f(a))
ACTIVATIONS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    "tanh": (np.tanh, lambda a, h: 1.0 - h**2),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a, h: (a > 0).astype(a.dtype)),
    "sigmoid": (_sigmoid, lambda a, h: h * (1.0 - h)),
    "identity": (lambda a: a, lambda a, h: np.ones_like(a)),
    "linear": (lambda a: a, lambda a, h: np.ones_like(a)),
}


def _act(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"reference activation must be one of {sorted(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]


def simple_rnn_forward(
    xs: np.ndarray,
    W_x: np.ndarray,
    W_h: np.ndarray,
    b: np.ndarray | None,
    h0: np.ndarray | None = None,
    activation: str = "tanh",
    lengths: np.ndarray | None = None,
    reverse: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Simple RNN layer, one sequence and one step at a time.

    Args:
        xs: ``[B, T, D]`` or ``[T, D]``.
        W_x: ``[D, H]``; W_h: ``[H, H]``; b: ``[H]`` or None.
        h0: ``[B, H]`` / ``[H]``; zeros when None.
        activation: ``"tanh"``, ``"relu"``, ``"sigmoid"`` or ``"identity"``.
        lengths: ``[B]``: only ``xs[i, :lengths[i]]`` is read; outputs past it are 0.
        reverse: read each sequence from its last (valid) step to its first;
            outputs are stored at the time index they were computed from.

    Returns:
        ``(h_last [B, H], hs [B, T, H])`` (no batch axis for unbatched ``xs``).
    """
    f, _ = _act(activation)
    unbatched = xs.ndim == 2
    if unbatched:
        xs = xs[None]
        h0 = None if h0 is None else np.asarray(h0)[None]
        lengths = None if lengths is None else np.asarray(lengths).reshape(1)
    B, T, _ = xs.shape
    H = W_h.shape[0]
    bias = np.zeros(H, xs.dtype) if b is None else b
    h_last = np.zeros((B, H), xs.dtype) if h0 is None else np.array(h0, dtype=xs.dtype)
    hs = np.zeros((B, T, H), xs.dtype)
    for i in range(B):  # each sequence on its own
        L = T if lengths is None else int(lengths[i])
        order = range(L - 1, -1, -1) if reverse else range(L)
        h = h_last[i]  # [H]
        for t in order:
            h = f(xs[i, t] @ W_x + h @ W_h + bias)  # [D] @ [D, H] + [H] @ [H, H] -> [H]
            hs[i, t] = h
        h_last[i] = h
    if unbatched:
        return h_last[0], hs[0]
    return h_last, hs


def _rnn_arrays(rnn_params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """Reads ``W_x, W_h, b, activation`` from a mapping or a ``SimpleParams``-like object."""
    get = (
        rnn_params.get
        if isinstance(rnn_params, Mapping)
        else lambda k, d=None: getattr(rnn_params, k, d)
    )
    b = get("b")
    activation = get("activation", "tanh")
    if not isinstance(activation, str):
        raise ValueError("the NumPy reference supports named activations only")
    return (
        np.asarray(get("W_x"), np.float64),
        np.asarray(get("W_h"), np.float64),
        None if b is None else np.asarray(b, np.float64),
        activation,
    )


def seed_forward(
    params: Mapping[str, Any], tokens: np.ndarray, labels: np.ndarray
) -> tuple[float, dict[str, Any]]:
    """Loss of the seed model, and everything the backward pass needs.

    Args:
        params: ``{"embedding" [V, E], "rnn": {W_x [E, H], W_h [H, H], b [H]} or SimpleParams,
            "W_o" [H, 1], "b_o" [1]}`` (as from ``jaxrnn.models.init_classifier``).
        tokens: ``[B, T]`` int word ids.
        labels: ``[B]`` in {0, 1}.

    Returns:
        ``(loss, cache)``; ``loss`` is the mean binary cross-entropy (float64).
    """
    E = np.asarray(params["embedding"], np.float64)  # [V, E]
    W_x, W_h, b, activation = _rnn_arrays(params["rnn"])
    W_o = np.asarray(params["W_o"], np.float64)  # [H, 1]
    b_o = np.asarray(params["b_o"], np.float64)  # [1]
    f, _ = _act(activation)
    tokens = np.asarray(tokens)
    y = np.asarray(labels, np.float64).reshape(-1, 1)  # [B, 1]
    B, T = tokens.shape
    H = W_h.shape[0]

    xs = E[tokens]  # [B, T, E]
    hs = np.zeros((T + 1, B, H))  # hs[0] = h_0 = 0, hs[t + 1] = h_t after step t
    a_s = np.zeros((T, B, H))  # pre-activations
    for t in range(T):
        a_s[t] = xs[:, t] @ W_x + hs[t] @ W_h + (0.0 if b is None else b)  # [B, H]
        hs[t + 1] = f(a_s[t])  # [B, H]
    z = hs[T] @ W_o + b_o  # [B, H] @ [H, 1] -> [B, 1]
    p = _sigmoid(z)  # [B, 1]
    # log p = -softplus(-z), log(1 - p) = -softplus(z): exact and stable for any z.
    loss = np.mean(y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z))
    cache = dict(tokens=tokens, y=y, xs=xs, hs=hs, a_s=a_s, p=p)
    return float(loss), cache


def seed_backward(params: Mapping[str, Any], cache: Mapping[str, Any]) -> dict[str, Any]:
    """Gradients of the seed-model loss by hand-derived BPTT.

    Args:
        params: the parameters given to :func:`seed_forward`.
        cache: the activations it returned.

    Derivation (``B`` sequences, mean loss; ``⊙`` is element-wise)::

        dL/dz     = (p - y) / B                       # [B, 1]  sigmoid + BCE combined
        dL/dW_o   = h_T^T dz                          # [H, 1]
        dL/db_o   = sum_b dz                          # [1]
        dh_T      = dz W_o^T                          # [B, H]
        for t = T .. 1:                               # backwards through time
            da_t  = dh_t ⊙ f'(a_t)                    # [B, H]  (tanh: 1 - h_t²)
            dW_x += x_t^T da_t                        # [E, H]
            dW_h += h_{t-1}^T da_t                    # [H, H]
            db   += sum_b da_t                        # [H]
            dx_t  = da_t W_x^T                        # [B, E]
            dE[w_t] += dx_t                           # scatter-add into the rows used
            dh_{t-1} = da_t W_h^T                     # [B, H]  the recurrence

    Returns:
        ``{"embedding": [V, E], "rnn": {"W_x", "W_h", "b"}, "W_o": [H, 1], "b_o": [1]}``
        (``"b"`` is None for a cell without bias).
    """
    tokens, y, xs, hs, a_s, p = (cache[k] for k in ("tokens", "y", "xs", "hs", "a_s", "p"))
    W_x, W_h, b, activation = _rnn_arrays(params["rnn"])
    W_o = np.asarray(params["W_o"], np.float64)  # [H, 1]
    _, df = _act(activation)
    B, T = tokens.shape

    dz = (p - y) / B  # [B, 1]
    dW_o = hs[T].T @ dz  # [H, B] @ [B, 1] -> [H, 1]
    db_o = dz.sum(axis=0)  # [1]
    dh = dz @ W_o.T  # [B, 1] @ [1, H] -> [B, H]

    dW_x = np.zeros_like(W_x)  # [E, H]
    dW_h = np.zeros_like(W_h)  # [H, H]
    db = np.zeros(W_h.shape[0])  # [H]
    dE = np.zeros(np.shape(params["embedding"]))  # [V, E]
    for t in range(T - 1, -1, -1):
        da = dh * df(a_s[t], hs[t + 1])  # [B, H]
        dW_x += xs[:, t].T @ da  # [E, B] @ [B, H]
        dW_h += hs[t].T @ da  # [H, B] @ [B, H]   (hs[t] is h_{t-1})
        db += da.sum(axis=0)  # [H]
        dx = da @ W_x.T  # [B, H] @ [H, E] -> [B, E]
        np.add.at(dE, tokens[:, t], dx)  # rows of repeated words accumulate
        dh = da @ W_h.T  # [B, H] @ [H, H] -> [B, H]
    return {
        "embedding": dE,
        "rnn": {"W_x": dW_x, "W_h": dW_h, "b": None if b is None else db},
        "W_o": dW_o,
        "b_o": db_o,
    }


def seed_loss(params: Mapping[str, Any], tokens: np.ndarray, labels: np.ndarray) -> float:
    """Just the loss of :func:`seed_forward` (handy for finite differences)."""
    return seed_forward(params, tokens, labels)[0]
