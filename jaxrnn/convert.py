"""Move weights between jaxrnn and Keras 3, PyTorch and Flax (linen) — exactly.

=========  ==========================  =============================  ============================
cell       Keras (= jaxrnn layout)     PyTorch                        Flax linen cell params
=========  ==========================  =============================  ============================
simple     kernel ``W_x [D, H]``,      ``weight_ih = W_x.T``,         ``i: {kernel W_x, bias b}``,
           recurrent ``W_h``, ``b``    ``weight_hh = W_h.T``,         ``h: {kernel W_h}``
                                       ``b = bias_ih + bias_hh``
lstm       gates ``i, f, g(c), o``;    same gate order, transposed,   ``ii, if, ig, io: {kernel}``,
           ``[D, 4H], [H, 4H], [4H]``  ``b = bias_ih + bias_hh``      ``hi..ho: {kernel, bias}``
gru        gates ``z, r, h``;          gates ``r, z, n``, transposed; ``ir, iz, in: {kernel, bias}``,
           ``b [2, 3H]`` (reset_after)  ``bias_ih = b[0]``,           ``hr, hz: {kernel}``,
           or ``[3H]``                 ``bias_hh = b[1]`` (reordered) ``hn: {kernel, bias}``
=========  ==========================  =============================  ============================

Exactness: Keras <-> jaxrnn is the identity for every cell and option.
PyTorch and Flax keep two biases where jaxrnn keeps one sum; importing adds
them (``b = bias_ih + bias_hh``: one float rounding), exporting puts the sum in
one of them and zeros in the other, so ``from_torch(to_torch(p)) == p``
bit for bit. PyTorch has no GRU with ``reset_after=False`` and no LSTM/GRU
activation options; Flax's GRU is ``reset_after=True`` with the recurrent
``z, r`` biases folded into the input ones (``iz.bias = b[0]_z + b[1]_z``).
Conversions that cannot be exact raise ``ValueError`` instead.

PyTorch modules (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) convert to a **list of
layers** (``BiParams`` for bidirectional layers) for :func:`jaxrnn.stack`;
PyTorch cells (``nn.RNNCell`` ...) to one cell's params. Keras layers convert to
a cell's params (``BiParams`` for ``Bidirectional``).

Keras and PyTorch are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrnn._bidirectional import BiParams
from jaxrnn.cells import gru, lstm, simple

_GRU_KERAS_FROM_TORCH = (1, 0, 2)  # Keras block g comes from PyTorch block _[g]: z<-z, r<-r, h<-n
# (PyTorch r, z, n): Keras (z, r, h) = PyTorch blocks (1, 0, 2); the permutation is its own inverse.

# Activations whose Keras definition equals jaxrnn's (cells._common.ACTIVATIONS).
_EXACT_ACTIVATIONS = {
    "tanh",
    "relu",
    "sigmoid",
    "hard_sigmoid",
    "linear",
    "softsign",
    "elu",
    "selu",
    "silu",
}


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _blocks(M: np.ndarray, order: tuple[int, ...], axis: int) -> np.ndarray:
    """Reorders the equal gate blocks of ``M`` along ``axis``."""
    parts = np.split(M, len(order), axis=axis)
    return np.concatenate([parts[g] for g in order], axis=axis)


def _kind(params: Any) -> str:
    kinds = ((simple.SimpleParams, "simple"), (lstm.LSTMParams, "lstm"), (gru.GRUParams, "gru"))
    for cls, name in kinds:
        if isinstance(params, cls):
            return name
    raise TypeError(f"expected SimpleParams, LSTMParams or GRUParams; got {type(params).__name__}")


def _act_name(params: Any, field: str) -> str:
    name = getattr(params, field)
    if not isinstance(name, str):
        raise ValueError(f"{field}={name!r} is a callable; only named activations can be converted")
    return "linear" if name == "identity" else name


# --------------------------------------------------------------------------- Keras


def _keras_act(fn: Any) -> str:
    import keras

    name = keras.activations.serialize(fn)
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    if name not in _EXACT_ACTIVATIONS:
        raise ValueError(
            f"Keras activation {name!r} has no exactly equal jaxrnn activation "
            f"(supported: {sorted(_EXACT_ACTIVATIONS)})"
        )
    return name


def _keras_cell(layer: Any) -> Any:
    return getattr(layer, "cell", layer)


def from_keras(layer: Any) -> Any:
    """Keras 3 ``SimpleRNN``/``LSTM``/``GRU`` (or their cells, or ``Bidirectional``) -> params.

    Args:
        layer: a **built** Keras layer.

    Returns:
        ``SimpleParams`` | ``LSTMParams`` | ``GRUParams`` (float arrays as in Keras), or
        ``BiParams(forward, backward)`` for ``keras.layers.Bidirectional``.
    """
    import keras

    if isinstance(layer, keras.layers.Bidirectional):
        return BiParams(from_keras(layer.forward_layer), from_keras(layer.backward_layer))
    cell = _keras_cell(layer)
    if not cell.built:
        raise ValueError(f"Keras layer {layer.name!r} is not built; call it or .build() first")
    W_x, W_h = jnp.asarray(_np(cell.kernel)), jnp.asarray(_np(cell.recurrent_kernel))
    b = None if cell.bias is None else jnp.asarray(_np(cell.bias))
    act = _keras_act(cell.activation)
    if isinstance(cell, keras.layers.SimpleRNNCell):
        return simple.SimpleParams(W_x, W_h, b, activation=act)
    rec = _keras_act(cell.recurrent_activation)
    if isinstance(cell, keras.layers.LSTMCell):
        return lstm.LSTMParams(W_x, W_h, b, activation=act, recurrent_activation=rec)
    if isinstance(cell, keras.layers.GRUCell):
        return gru.GRUParams(
            W_x, W_h, b, activation=act, recurrent_activation=rec, reset_after=cell.reset_after
        )
    raise TypeError(f"from_keras: unsupported Keras layer/cell {type(cell).__name__}")


def to_keras(params: Any, layer: Any) -> Any:
    """Writes params into a built Keras layer of the same kind and options; returns the layer.

    Raises:
        ValueError: kind, sizes, bias, activations or ``reset_after`` differ.
    """
    import keras

    if isinstance(layer, keras.layers.Bidirectional):
        if not isinstance(params, BiParams):
            raise TypeError(f"a Bidirectional layer takes BiParams; got {type(params).__name__}")
        to_keras(params.forward, layer.forward_layer)
        to_keras(params.backward, layer.backward_layer)
        return layer
    cell = _keras_cell(layer)
    kind = _kind(params)
    expected = {
        "simple": keras.layers.SimpleRNNCell,
        "lstm": keras.layers.LSTMCell,
        "gru": keras.layers.GRUCell,
    }[kind]
    if not isinstance(cell, expected):
        raise ValueError(
            f"to_keras: {kind} params need a {expected.__name__}; got {type(cell).__name__}"
        )
    if _keras_act(cell.activation) != _act_name(params, "activation"):
        raise ValueError(
            f"to_keras: activation differs: layer {_keras_act(cell.activation)!r}, "
            f"params {params.activation!r}"
        )
    if kind != "simple" and _keras_act(cell.recurrent_activation) != _act_name(
        params, "recurrent_activation"
    ):
        raise ValueError("to_keras: recurrent_activation differs between layer and params")
    if kind == "gru" and cell.reset_after != params.reset_after:
        raise ValueError(
            f"to_keras: reset_after differs: layer {cell.reset_after}, params {params.reset_after}"
        )
    if (cell.bias is None) != (params.b is None):
        raise ValueError(
            f"to_keras: use_bias differs: layer {cell.bias is not None}, params {params.b is not None}"
        )
    values = [params.W_x, params.W_h] + ([] if params.b is None else [params.b])
    targets = [cell.kernel, cell.recurrent_kernel] + ([] if cell.bias is None else [cell.bias])
    for v, t in zip(values, targets, strict=True):
        if tuple(v.shape) != tuple(t.shape):
            raise ValueError(
                f"to_keras: {t.path} has shape {tuple(t.shape)}; params give {tuple(v.shape)}"
            )
        t.assign(np.asarray(v, dtype=t.dtype))
    return layer


# --------------------------------------------------------------------------- PyTorch


def _torch_kind(module: Any) -> tuple[str, str]:
    import torch.nn as tnn

    for cls, kind in (
        (tnn.LSTM, "lstm"),
        (tnn.GRU, "gru"),
        (tnn.RNN, "simple"),
        (tnn.LSTMCell, "lstm"),
        (tnn.GRUCell, "gru"),
        (tnn.RNNCell, "simple"),
    ):
        if isinstance(module, cls):
            return kind, ("cell" if cls.__name__.endswith("Cell") else "module")
    raise TypeError(f"unsupported PyTorch module {type(module).__name__}")


def _from_torch_weights(kind: str, w_ih, w_hh, b_ih, b_hh, nonlinearity: str) -> Any:
    w_ih, w_hh = _np(w_ih), _np(w_hh)
    b_ih = None if b_ih is None else _np(b_ih)
    b_hh = None if b_hh is None else _np(b_hh)
    if kind == "gru":
        W_x = _blocks(w_ih, _GRU_KERAS_FROM_TORCH, axis=0).T
        W_h = _blocks(w_hh, _GRU_KERAS_FROM_TORCH, axis=0).T
        b = None
        if b_ih is not None:
            b = np.stack(
                [_blocks(b_ih, _GRU_KERAS_FROM_TORCH, 0), _blocks(b_hh, _GRU_KERAS_FROM_TORCH, 0)]
            )
        return gru.GRUParams(
            jnp.asarray(W_x), jnp.asarray(W_h), None if b is None else jnp.asarray(b)
        )
    b = None if b_ih is None else jnp.asarray(b_ih + b_hh)
    W_x, W_h = jnp.asarray(w_ih.T), jnp.asarray(w_hh.T)
    if kind == "lstm":
        return lstm.LSTMParams(W_x, W_h, b)
    return simple.SimpleParams(W_x, W_h, b, activation=nonlinearity)


def from_torch(module: Any) -> Any:
    """PyTorch ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (any ``num_layers``, ``bidirectional``) -> params.

    Args:
        module: a PyTorch recurrent module or cell.

    Returns:
        For ``nn.RNN/LSTM/GRU``: a list with one entry per layer, the cell's params or
        ``BiParams(forward, backward)`` (``weight_*_l{k}`` and ``weight_*_l{k}_reverse``).
        For ``nn.RNNCell/LSTMCell/GRUCell``: the cell's params.
        GRUs come out with ``reset_after=True``.
    """
    kind, what = _torch_kind(module)
    nonlin = getattr(module, "nonlinearity", "tanh")
    if what == "cell":
        return _from_torch_weights(
            kind, module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh, nonlin
        )
    if getattr(module, "proj_size", 0):
        raise ValueError("from_torch: LSTM with proj_size > 0 has no jaxrnn equivalent")

    def direction(k: int, suffix: str) -> Any:
        g = lambda n: getattr(module, f"{n}_l{k}{suffix}", None)  # noqa: E731
        return _from_torch_weights(
            kind, g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"), nonlin
        )

    layers = []
    for k in range(module.num_layers):
        fw = direction(k, "")
        layers.append(BiParams(fw, direction(k, "_reverse")) if module.bidirectional else fw)
    return layers


def _to_torch_weights(kind: str, params: Any, nonlinearity: str) -> dict[str, np.ndarray]:
    if _kind(params) != kind:
        raise ValueError(f"to_torch: module is {kind}; params are {_kind(params)}")
    if kind == "simple":
        if _act_name(params, "activation") != nonlinearity:
            raise ValueError(
                f"to_torch: nonlinearity {nonlinearity!r} differs from params.activation "
                f"{params.activation!r} (PyTorch has only tanh and relu)"
            )
    else:
        if (params.activation, params.recurrent_activation) != ("tanh", "sigmoid"):
            raise ValueError(
                f"to_torch: PyTorch's {kind.upper()} is fixed to tanh/sigmoid; params have "
                f"{params.activation!r}/{params.recurrent_activation!r}"
            )
    W_x, W_h = np.asarray(params.W_x), np.asarray(params.W_h)
    b = None if params.b is None else np.asarray(params.b)
    if kind == "gru":
        if not params.reset_after:
            raise ValueError(
                "to_torch: PyTorch's GRU is reset_after=True; params have reset_after=False"
            )
        out = {
            "weight_ih": _blocks(W_x.T, _GRU_KERAS_FROM_TORCH, 0),
            "weight_hh": _blocks(W_h.T, _GRU_KERAS_FROM_TORCH, 0),
        }
        if b is not None:
            out["bias_ih"] = _blocks(b[0], _GRU_KERAS_FROM_TORCH, 0)
            out["bias_hh"] = _blocks(b[1], _GRU_KERAS_FROM_TORCH, 0)
        return out
    out = {"weight_ih": W_x.T, "weight_hh": W_h.T}
    if b is not None:
        out["bias_ih"], out["bias_hh"] = b, np.zeros_like(b)
    return out


def to_torch(params: Any, module: Any) -> Any:
    """Writes params (as :func:`from_torch` returns them) into a PyTorch module; returns it.

    Raises:
        ValueError: kind, layer count, direction, sizes, bias or activations differ.
    """
    import torch

    kind, what = _torch_kind(module)
    nonlin = getattr(module, "nonlinearity", "tanh")
    if what == "cell":
        assignments = {k: v for k, v in _to_torch_weights(kind, params, nonlin).items()}
    else:
        if not isinstance(params, (list, tuple)) or isinstance(params, BiParams):
            params = [params]
        if len(params) != module.num_layers:
            raise ValueError(f"to_torch: module has {module.num_layers} layers; got {len(params)}")
        assignments = {}
        for k, p in enumerate(params):
            if isinstance(p, BiParams) != bool(module.bidirectional):
                raise ValueError(
                    f"to_torch: layer {k}: module bidirectional={module.bidirectional}, "
                    f"params {'BiParams' if isinstance(p, BiParams) else type(p).__name__}"
                )
            dirs = (
                [(p.forward, ""), (p.backward, "_reverse")]
                if isinstance(p, BiParams)
                else [(p, "")]
            )
            for pd, suffix in dirs:
                for name, v in _to_torch_weights(kind, pd, nonlin).items():
                    assignments[f"{name}_l{k}{suffix}"] = v
    own = dict(module.named_parameters())
    if set(own) != set(assignments):
        raise ValueError(
            f"to_torch: parameter names differ (bias?): module {sorted(own)}, params {sorted(assignments)}"
        )
    with torch.no_grad():
        for name, v in assignments.items():
            if tuple(own[name].shape) != tuple(v.shape):
                raise ValueError(
                    f"to_torch: {name} has shape {tuple(own[name].shape)}; params give {v.shape}"
                )
            own[name].copy_(torch.from_numpy(np.array(v)).to(own[name].dtype))  # a writable copy
    return module


# --------------------------------------------------------------------------- Flax (linen)


def _flax_cell_dict(variables: Any) -> dict:
    d = variables
    if "params" in d:
        d = d["params"]
    if "cell" in d:  # nn.RNN(cell)'s variables
        d = d["cell"]
    return dict(d)


def from_flax(
    variables: Any, *, activation: str = "tanh", recurrent_activation: str = "sigmoid"
) -> Any:
    """Flax linen ``SimpleCell``/``LSTMCell``/``OptimizedLSTMCell``/``GRUCell`` params -> params.

    Flax keeps activations on the module, not in the params: pass them if not the defaults.

    Args:
        variables: the cell's variables (``{"params": {...}}``), its params dict, or the
            variables of ``nn.RNN(cell)`` (``{"params": {"cell": {...}}}``).
        activation: the cell's ``activation_fn`` name.
        recurrent_activation: the cell's ``gate_fn`` name (LSTM, GRU).

    Returns:
        ``SimpleParams`` | ``LSTMParams`` | ``GRUParams`` (``reset_after=True``).
    """
    d = _flax_cell_dict(variables)
    a = lambda name, leaf: jnp.asarray(d[name][leaf])  # noqa: E731  (traceable: grads flow)
    keys = set(d)
    if keys == {"i", "h"}:
        b = a("i", "bias") if "bias" in d["i"] else None
        return simple.SimpleParams(a("i", "kernel"), a("h", "kernel"), b, activation=activation)
    if keys == {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}:
        W_x = jnp.concatenate([a(f"i{g}", "kernel") for g in "ifgo"], axis=1)
        W_h = jnp.concatenate([a(f"h{g}", "kernel") for g in "ifgo"], axis=1)
        b = jnp.concatenate([a(f"h{g}", "bias") for g in "ifgo"])
        return lstm.LSTMParams(
            W_x, W_h, b, activation=activation, recurrent_activation=recurrent_activation
        )
    if keys == {"ir", "iz", "in", "hr", "hz", "hn"}:
        W_x = jnp.concatenate([a(f"i{g}", "kernel") for g in "zrn"], axis=1)
        W_h = jnp.concatenate([a(f"h{g}", "kernel") for g in "zrn"], axis=1)
        b_x = jnp.concatenate([a(f"i{g}", "bias") for g in "zrn"])
        b_n = a("hn", "bias")
        b_h = jnp.concatenate([jnp.zeros_like(b_n), jnp.zeros_like(b_n), b_n])
        return gru.GRUParams(
            W_x,
            W_h,
            jnp.stack([b_x, b_h]),
            activation=activation,
            recurrent_activation=recurrent_activation,
            reset_after=True,
        )
    raise ValueError(f"from_flax: unrecognised cell params with keys {sorted(keys)}")


def to_flax(params: Any, *, for_rnn: bool = False) -> dict:
    """Params -> Flax linen variables for the matching cell (``{"params": {...}}``).

    Build the cell with the same activations (``activation_fn``, ``gate_fn``); Flax
    has no bias-free cells and no ``reset_after=False`` GRU (ValueError).

    Args:
        params: ``SimpleParams`` | ``LSTMParams`` | ``GRUParams``.
        for_rnn: nest under ``"cell"`` for ``nn.RNN(cell)``.

    Returns:
        ``{"params": cell_params}`` or ``{"params": {"cell": cell_params}}``.
    """
    kind = _kind(params)
    if params.b is None:
        raise ValueError("to_flax: Flax's cells always have biases; params have none")
    H = params.hidden_size
    col = lambda M, g: M[:, g * H : (g + 1) * H]  # noqa: E731
    if kind == "simple":
        d = {"i": {"kernel": params.W_x, "bias": params.b}, "h": {"kernel": params.W_h}}
    elif kind == "lstm":
        d = {}
        for g, n in enumerate("ifgo"):
            d[f"i{n}"] = {"kernel": col(params.W_x, g)}
            d[f"h{n}"] = {"kernel": col(params.W_h, g), "bias": params.b[g * H : (g + 1) * H]}
    else:
        if not params.reset_after:
            raise ValueError(
                "to_flax: Flax's GRUCell is reset_after=True; params have reset_after=False"
            )
        b_x, b_h = params.b[0], params.b[1]
        d = {}
        for g, n in enumerate("zrh"):
            fn = "n" if n == "h" else n
            sl = slice(g * H, (g + 1) * H)
            bias = b_x[sl] if n == "h" else b_x[sl] + b_h[sl]  # z, r: recurrent bias folded in
            d[f"i{fn}"] = {"kernel": col(params.W_x, g), "bias": bias}
            d[f"h{fn}"] = {"kernel": col(params.W_h, g)}
        d["hn"]["bias"] = b_h[2 * H :]
    return {"params": {"cell": d}} if for_rnn else {"params": d}
