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

PyTorch modules (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) and their state dicts convert to a
**list of layers** (``BiParams`` for bidirectional layers) for :func:`jaxrnn.stack`;
PyTorch cells (``nn.RNNCell`` ...) to one cell's params. Keras layers convert to
a cell's params (``BiParams`` for ``Bidirectional``), Flax ``nn.Bidirectional``
variables to ``BiParams``.

Whole models become a :class:`Converted` (params + layer settings, ``model(xs)``):
a Keras ``Sequential`` / chain model or ``.keras`` file (:func:`from_keras`), a
classic PyTorch ``Embedding -> RNN -> Linear`` state dict (:func:`from_torch_model`).

Keras and PyTorch are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn._bidirectional import BiParams, bidirectional
from jaxrnn._recurrent import recurrent
from jaxrnn.cells import _common, gru, lstm, simple

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


# --------------------------------------------------------------------------- whole models

_CELLS = {"simple": simple.cell, "lstm": lstm.cell, "gru": gru.cell}
# Dense activations: the cells' exact ones, plus softmax over the last axis (Keras's default).
_DENSE_ACTIVATIONS = {**_common.ACTIVATIONS, "softmax": jax.nn.softmax}


@dataclasses.dataclass(frozen=True)
class Recurrent:
    """One recurrent layer of a :class:`Converted` model (Keras's semantics, see
    :func:`jaxrnn.recurrent` and :func:`jaxrnn.bidirectional`).

    Attributes:
        cell: ``"simple"`` | ``"lstm"`` | ``"gru"``.
        return_sequences: outputs ``[B, T, H]`` (else the last one, ``[B, H]``).
        merge_mode: a bidirectional layer's merge (``"concat"``, ``"sum"``, ...).
    """

    cell: str
    return_sequences: bool
    merge_mode: str | None = "concat"


@dataclasses.dataclass(frozen=True)
class Dense:
    """A dense layer ``act(h @ W + b)`` of a :class:`Converted` model; ``activation`` is a name
    of ``jaxrnn.cells._common.ACTIVATIONS`` or ``"softmax"``."""

    activation: str = "linear"


@dataclasses.dataclass(frozen=True)
class Converted:
    """A whole converted model: ``[Embedding] -> recurrent layers -> [Dense ...]``.

    ``model(xs)`` predicts what the original model predicts; ``model.apply(params, xs)`` is the
    same pure function of the parameters (for ``jax.jit``, ``jax.grad``, fine-tuning with optax).
    The layers are run by :func:`jaxrnn.recurrent` and :func:`jaxrnn.bidirectional`.

    Attributes:
        params: ``{"embedding": [V, E] | None, "rnn": [cell params or BiParams, ...],
            "dense": [(W [H, O], b [O] | None), ...]}``.
        layers: per entry of ``params["rnn"]``, its :class:`Recurrent` settings.
        dense: per entry of ``params["dense"]``, its :class:`Dense` settings.
        mask_zero: token id 0 is padding (Keras's ``Embedding(mask_zero=True)``): padded steps
            are skipped by every recurrent layer.
        mask_value: Keras's ``Masking(mask_value)``: a step whose features all equal it is
            skipped.
        last_step: after the recurrent layers, keep only step ``T - 1`` (PyTorch's
            ``fc(out[:, -1])``).
        unused: names of source weights the model does not use (PyTorch state dicts).
    """

    params: dict[str, Any]
    layers: tuple[Recurrent, ...]
    dense: tuple[Dense, ...] = ()
    mask_zero: bool = False
    mask_value: float | None = None
    last_step: bool = False
    unused: tuple[str, ...] = ()

    def apply(self, params: dict[str, Any], xs: Any) -> Any:
        """Runs the model with ``params`` (structured as ``self.params``).

        Args:
            params: the model's parameters.
            xs: ``[B, T]`` int token ids when the model has an embedding, else ``[B, T, D]``.

        Returns:
            What the last layer outputs, e.g. ``[B, 1]`` for a ``Dense(1)`` head after an RNN
            returning its last output, ``[B, T, O]`` after one returning sequences.
        """
        table = params["embedding"]
        mask = None
        if table is not None:
            xs = jnp.asarray(xs)
            if not jnp.issubdtype(xs.dtype, jnp.integer) or xs.ndim != 2:
                raise TypeError(
                    f"this model starts with an Embedding [{table.shape[0]}, {table.shape[1]}]: "
                    f"it takes int token ids [B, T]; got {xs.dtype} with shape {xs.shape}"
                )
            if self.mask_zero:
                mask = xs != 0  # [B, T]
            h = jnp.take(table, xs, axis=0)  # [B, T, E]
        else:
            h = jnp.asarray(xs)
            if h.ndim != 3:
                raise ValueError(f"this model takes xs [B, T, D]; got shape {h.shape}")
            if self.mask_value is not None:
                mask = jnp.any(h != self.mask_value, axis=-1)  # [B, T]
        for spec, p in zip(self.layers, params["rnn"], strict=True):
            cell = _CELLS[spec.cell]
            if isinstance(p, BiParams):
                h = bidirectional(
                    cell, p, h, mask=mask, merge_mode=spec.merge_mode,
                    return_sequences=spec.return_sequences,
                )  # fmt: skip
            else:
                h = recurrent(cell, p, h, mask=mask, return_sequences=spec.return_sequences)
            if not spec.return_sequences:
                mask = None  # the next layers see one vector per sequence
        if self.last_step:
            h = h[:, -1]  # [B, T, H] -> [B, H]
        for spec, (W, b) in zip(self.dense, params["dense"], strict=True):
            h = h @ W if b is None else h @ W + b
            h = _DENSE_ACTIVATIONS[spec.activation](h)
        return h

    def __call__(self, xs: Any) -> Any:
        """``self.apply(self.params, xs)``."""
        return self.apply(self.params, xs)

    def classifier_params(self) -> dict[str, Any]:
        """The params of :func:`jaxrnn.models.classifier_logits` for a model of its layout,
        ``Embedding -> one RNN layer (last output) -> Dense(1, sigmoid)``: ``{"embedding",
        "rnn", "W_o", "b_o"}``; ``sigmoid`` of its logits is this model's output ``[:, 0]``.
        The config needs no cell or sizes (``models.ClassifierConfig()``: they come from the
        params).

        Raises:
            ValueError: the model has another layout, saying which part differs.
        """
        p, why = self.params, []
        if p["embedding"] is None or self.mask_zero:
            why.append("an Embedding without mask_zero first")
        if len(self.layers) != 1 or isinstance(p["rnn"][0], BiParams):
            why.append("one unidirectional RNN layer")
        elif self.layers[0].return_sequences or self.last_step:
            why.append("the RNN's last output (return_sequences=False)")
        if len(self.dense) != 1 or self.dense[0].activation != "sigmoid":
            why.append("one Dense(1, activation='sigmoid')")
        elif p["dense"][0][0].shape[1] != 1 or p["dense"][0][1] is None:
            why.append("Dense with 1 unit and a bias")
        if why:
            got = [] if p["embedding"] is None else ["Embedding" + " (mask_zero)" * self.mask_zero]
            for layer, lp in zip(self.layers, p["rnn"], strict=True):
                bi = "Bidirectional " if isinstance(lp, BiParams) else ""
                got.append(f"{bi}{layer.cell}(return_sequences={layer.return_sequences})")
            for d, (W, _) in zip(self.dense, p["dense"], strict=True):
                got.append(f"Dense({W.shape[1]}, activation={d.activation!r})")
            raise ValueError(
                "classifier_params: models.classifier_logits's layout needs "
                + "; ".join(why)
                + f"; got {', '.join(got)}"
            )
        ((W, b),) = p["dense"]
        return {"embedding": p["embedding"], "rnn": p["rnn"][0], "W_o": W, "b_o": b}


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


def from_keras(obj: Any) -> Any:
    """A Keras 3 layer, whole model, or ``.keras`` file -> jaxrnn params or a :class:`Converted`.

    Args:
        obj: one of

            * a **built** ``SimpleRNN``/``LSTM``/``GRU`` layer, one of their cells, or a
              ``Bidirectional`` of one;
            * a ``keras.Sequential`` or single-input, single-output functional model whose layers
              form a chain ``[InputLayer] [Embedding | Masking] RNN ... [Dense | Dropout ...]``
              (RNN: the layers above, stacked, each possibly ``Bidirectional``);
            * a path (``str`` or ``os.PathLike``) of a saved model (``model.save("m.keras")``).

    ``InputLayer`` and ``Dropout`` (and the layers' own ``dropout`` / ``recurrent_dropout``)
    do nothing at inference and are skipped; ``Embedding(mask_zero=True)`` and ``Masking``
    change it and are kept (``Converted.mask_zero``, ``Converted.mask_value``).

    Returns:
        For a layer: ``SimpleParams`` | ``LSTMParams`` | ``GRUParams`` (float arrays as in Keras),
        or ``BiParams(forward, backward)`` for ``Bidirectional``. For a model or a file: a
        :class:`Converted`, ``model(tokens)`` predicting what ``keras_model.predict(tokens)``
        does.

    Raises:
        TypeError: a layer with no jaxrnn equivalent (``Conv1D``, a custom layer, an RNN with
            ``go_backwards`` or ``stateful``, ...), named with its class.
    """
    import keras

    if isinstance(obj, (str, os.PathLike)):
        if not os.path.exists(obj):
            raise FileNotFoundError(f"from_keras: no saved Keras model at {os.fspath(obj)!r}")
        obj = keras.saving.load_model(obj)
    if isinstance(obj, keras.Model):
        return _from_keras_model(obj)
    if not isinstance(obj, keras.layers.Layer):
        raise TypeError(
            "from_keras: expected a Keras layer, a Keras model or a path of a .keras file; "
            f"got {type(obj).__name__}"
        )
    return _from_keras_layer(obj)


def _from_keras_layer(layer: Any) -> Any:
    import keras

    if isinstance(layer, keras.layers.Bidirectional):
        return BiParams(
            _from_keras_layer(layer.forward_layer), _from_keras_layer(layer.backward_layer)
        )
    cell = _keras_cell(layer)
    if not isinstance(
        cell, (keras.layers.SimpleRNNCell, keras.layers.LSTMCell, keras.layers.GRUCell)
    ):
        raise TypeError(
            f"from_keras: layer {layer.name!r} ({type(layer).__name__}) has no jaxrnn equivalent; "
            "expected SimpleRNN, LSTM, GRU, their cells or Bidirectional"
        )
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
    return gru.GRUParams(
        W_x, W_h, b, activation=act, recurrent_activation=rec, reset_after=cell.reset_after
    )


def _keras_chain(model: Any) -> list[Any]:
    """The model's layers in order, checked to be a chain (each reads the previous one's output)."""
    import keras

    layers = list(model.layers)
    if isinstance(model, keras.Sequential):
        return layers
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise TypeError(
            f"from_keras: model {model.name!r} has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; only a chain of layers (one input, one output) converts"
        )
    prev = None  # the layer whose output the next one must read (None: the model's input)
    for layer in layers:
        nodes = getattr(layer, "_inbound_nodes", [])  # Keras 3: the calls of the layer
        parents = (
            [n.operation for n in nodes[0].parent_nodes
             if isinstance(n.operation, keras.layers.Layer)]  # not the ops computing a mask
            if len(nodes) == 1 else None
        )  # fmt: skip
        if isinstance(layer, keras.layers.InputLayer):
            ok = not parents
        else:
            ok = (
                parents == [prev]
                if prev is not None
                else parents in ([], None)
                or (len(parents) == 1 and isinstance(parents[0], keras.layers.InputLayer))
            )
        if not ok:
            want = "the model's input" if prev is None else repr(prev.name)
            reads = "several calls" if parents is None else [p.name for p in parents]
            raise TypeError(
                f"from_keras: layer {layer.name!r} ({type(layer).__name__}) does not read the "
                f"previous layer's output ({want}); it reads {reads}; only a chain of layers "
                "converts"
            )
        prev = layer
    return layers


def _check_keras_rnn(layer: Any) -> None:
    """Refuses the RNN options that change what a converted model would compute."""
    inner = layer.forward_layer if hasattr(layer, "forward_layer") else layer
    opts = {
        "go_backwards": getattr(layer, "go_backwards", False),
        "stateful": getattr(inner, "stateful", False),
        "return_state": getattr(inner, "return_state", False),
    }
    on = [name for name, value in opts.items() if value]
    if on:
        raise TypeError(
            f"from_keras: layer {layer.name!r} ({type(layer).__name__}) has {', '.join(on)}=True, "
            "which a converted model does not support"
        )


def _from_keras_model(model: Any) -> Converted:
    import keras

    rnn_types = (keras.layers.SimpleRNN, keras.layers.LSTM, keras.layers.GRU)
    kinds = {keras.layers.SimpleRNN: "simple", keras.layers.LSTM: "lstm", keras.layers.GRU: "gru"}
    skip = (keras.layers.InputLayer, keras.layers.Dropout)
    embedding, mask_zero, mask_value = None, False, None
    rnn_params, layers, dense_params, dense = [], [], [], []
    for layer in _keras_chain(model):
        name = f"layer {layer.name!r} ({type(layer).__name__})"
        if isinstance(layer, skip):
            continue
        if isinstance(layer, (keras.layers.Embedding, keras.layers.Masking)):
            if rnn_params or embedding is not None or mask_value is not None:
                raise TypeError(f"from_keras: {name} must come first, before the RNN layers")
            if isinstance(layer, keras.layers.Embedding):
                embedding = jnp.asarray(_np(layer.embeddings))  # [V, E]
                mask_zero = bool(layer.mask_zero)
            else:
                mask_value = float(layer.mask_value)
            continue
        if isinstance(layer, keras.layers.Bidirectional) or isinstance(layer, rnn_types):
            if dense:
                raise TypeError(f"from_keras: {name} comes after a Dense layer; not supported")
            _check_keras_rnn(layer)
            inner = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
            if type(inner) not in kinds:
                raise TypeError(f"from_keras: {name} wraps {type(inner).__name__}; not supported")
            back = getattr(layer, "backward_layer", inner)
            if type(back) is not type(inner):
                raise TypeError(
                    f"from_keras: {name} runs {type(inner).__name__} forward and "
                    f"{type(back).__name__} backward; a converted layer has one cell kind"
                )
            if not layers or layers[-1].return_sequences:
                rnn_params.append(_from_keras_layer(layer))
                layers.append(
                    Recurrent(
                        kinds[type(inner)],
                        bool(inner.return_sequences),
                        getattr(layer, "merge_mode", "concat"),
                    )
                )
                continue
            raise TypeError(
                f"from_keras: {name} follows an RNN layer with return_sequences=False; not supported"
            )
        if isinstance(layer, keras.layers.Dense) and rnn_params:
            act = keras.activations.serialize(layer.activation)
            act = act.get("config", act.get("class_name")) if isinstance(act, dict) else act
            if act not in _DENSE_ACTIVATIONS:
                raise TypeError(
                    f"from_keras: {name} has activation {act!r}; supported: "
                    f"{sorted(_DENSE_ACTIVATIONS)}"
                )
            b = None if layer.bias is None else jnp.asarray(_np(layer.bias))
            dense_params.append((jnp.asarray(_np(layer.kernel)), b))
            dense.append(Dense(act))
            continue
        raise TypeError(
            f"from_keras: {name} has no jaxrnn equivalent in a converted model; supported: "
            "[InputLayer] [Embedding | Masking] SimpleRNN/LSTM/GRU/Bidirectional ... "
            "[Dense ...] (Dropout anywhere)"
        )
    if not rnn_params:
        raise TypeError(f"from_keras: model {model.name!r} has no SimpleRNN, LSTM or GRU layer")
    params = {"embedding": embedding, "rnn": rnn_params, "dense": dense_params}
    return Converted(
        params, tuple(layers), tuple(dense), mask_zero=mask_zero, mask_value=mask_value
    )


def _new_keras_layer(params: Any, kwargs: dict) -> Any:
    """A new Keras RNN layer with the params' kind, sizes and options."""
    import keras

    if isinstance(params, BiParams):
        return keras.layers.Bidirectional(_new_keras_layer(params.forward, kwargs))
    kind = _kind(params)
    opts = dict(activation=_act_name(params, "activation"), use_bias=params.b is not None)
    if kind != "simple":
        opts["recurrent_activation"] = _act_name(params, "recurrent_activation")
    if kind == "gru":
        opts["reset_after"] = params.reset_after
    cls = {"simple": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
    return cls[kind](params.hidden_size, **opts, **kwargs)


def _build_keras(layer: Any, params: Any) -> None:
    """Builds an unbuilt Keras RNN layer or cell for the params' input size (``[B, T, D]``)."""
    import keras

    first = params.forward if isinstance(params, BiParams) else params
    cell = _keras_cell(
        layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    )
    units = getattr(cell, "units", None)
    if units is not None and hasattr(first, "hidden_size") and units != first.hidden_size:
        raise ValueError(
            f"to_keras: layer {layer.name!r} has {units} units; the params' hidden size is "
            f"{first.hidden_size} (W_h {list(first.W_h.shape)})"
        )
    if layer.built or not hasattr(first, "input_size"):
        return
    is_cell = not isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))  # [B, D]
    layer.build((None, first.input_size) if is_cell else (None, None, first.input_size))


def to_keras(params: Any, layer: Any = None, **layer_kwargs: Any) -> Any:
    """Writes params into a Keras layer of the same kind and options; returns the layer.

    Args:
        params: a cell's params (``SimpleParams`` | ``LSTMParams`` | ``GRUParams``) or
            ``BiParams`` (for a ``Bidirectional`` layer).
        layer: the Keras layer (or cell) to fill; built here for the params' input size if it
            is not built yet. ``None``: a new ``SimpleRNN``/``LSTM``/``GRU`` (wrapped in
            ``Bidirectional`` for ``BiParams``) with the params' sizes and options.
        layer_kwargs: further arguments of the new layer (e.g. ``return_sequences=True``);
            only with ``layer=None``.

    Raises:
        ValueError: kind, sizes, bias, activations or ``reset_after`` differ.
    """
    import keras

    if layer is None:
        layer = _new_keras_layer(params, layer_kwargs)
    elif layer_kwargs:
        raise TypeError(
            f"to_keras: layer options {sorted(layer_kwargs)} apply to a new layer (layer=None); "
            f"got the layer {layer.name!r}"
        )
    _build_keras(layer, params)
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
    raise TypeError(
        "expected a PyTorch nn.RNN, nn.LSTM, nn.GRU or one of their cells; "
        f"got {type(module).__name__}"
    )


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


_TORCH_KEY = re.compile(r"^(?P<prefix>.*?)weight_ih_l(?P<k>\d+)(?P<rev>_reverse)?$")
_TORCH_GATES = {1: "simple", 4: "lstm", 3: "gru"}  # gate rows of weight_ih per hidden unit


def _torch_state(obj: Any) -> tuple[dict[str, Any], Any]:
    """``(state dict, the module or None)`` of a module or a state dict."""
    if isinstance(obj, Mapping):
        return dict(obj), None
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return dict(obj.state_dict()), obj
    raise TypeError(
        f"from_torch: expected a PyTorch module or a state dict (a mapping of names to tensors); "
        f"got {type(obj).__name__}"
    )


def _torch_layers(
    obj: Any, prefix: str | None, nonlinearity: str | None, where: str
) -> tuple[list[Any], str, tuple[str, ...]]:
    """``(layers, prefix, unused keys)`` of the RNN in a PyTorch module or state dict; see
    :func:`from_torch`."""
    state, module = _torch_state(obj)
    found = {}
    for key in state:
        m = _TORCH_KEY.match(key)
        if m:
            found.setdefault(m["prefix"], set()).add((int(m["k"]), bool(m["rev"])))
    if prefix is not None and prefix and not prefix.endswith(".") and prefix + "." in found:
        prefix += "."
    if not found:
        raise ValueError(
            f"{where}: no PyTorch RNN weights (keys '<prefix>weight_ih_l<k>') among the keys "
            f"{sorted(state)[:10]}{' ...' if len(state) > 10 else ''}"
        )
    if prefix is None:
        if len(found) > 1:
            raise ValueError(
                f"{where}: the state dict holds several RNNs, prefixes {sorted(found)}; "
                "pass prefix= to pick one"
            )
        (prefix,) = found
    if prefix not in found:
        raise ValueError(f"{where}: no RNN weights under prefix {prefix!r}; found {sorted(found)}")
    entries = found[prefix]
    L = 1 + max(k for k, _ in entries)
    bidir = any(rev for _, rev in entries)
    expected = {(k, rev) for k in range(L) for rev in ((False, True) if bidir else (False,))}
    if entries != expected:
        missing = sorted(expected - entries)
        raise ValueError(
            f"{where}: {prefix}weight_ih_l<k> keys missing for (layer, reverse) {missing}"
        )
    if any(key.startswith(prefix + "weight_hr_l") for key in state):
        raise ValueError(
            f"{where}: LSTM with proj_size > 0 ({prefix}weight_hr_l0) has no jaxrnn equivalent"
        )
    w_ih, w_hh = _np(state[f"{prefix}weight_ih_l0"]), _np(state[f"{prefix}weight_hh_l0"])
    H = w_hh.shape[1]
    gates = w_ih.shape[0] // H if w_ih.shape[0] % H == 0 else None
    if gates not in _TORCH_GATES or w_hh.shape[0] != w_ih.shape[0]:
        raise ValueError(
            f"{where}: {prefix}weight_ih_l0 {list(w_ih.shape)} and weight_hh_l0 "
            f"{list(w_hh.shape)} are no RNN (H rows), GRU (3H) or LSTM (4H) with H={H}"
        )
    kind = _TORCH_GATES[gates]
    sub = None
    if module is not None:
        sub = module.get_submodule(prefix.rstrip(".")) if prefix else module
    if nonlinearity is None:
        nonlinearity = getattr(sub, "nonlinearity", "tanh")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{where}: nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
    if kind != "simple" and nonlinearity != "tanh":
        raise ValueError(
            f"{where}: nonlinearity={nonlinearity!r} applies to an nn.RNN; the weights are a "
            f"{kind.upper()}'s ({prefix}weight_ih_l0 {list(w_ih.shape)}, H={H})"
        )
    used = set()

    def direction(k: int, suffix: str) -> Any:
        names = [
            f"{prefix}{n}_l{k}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        used.update(n for n in names if n in state)
        return _from_torch_weights(kind, *(state.get(n) for n in names), nonlinearity)

    layers = []
    for k in range(L):
        fw = direction(k, "")
        layers.append(BiParams(fw, direction(k, "_reverse")) if bidir else fw)
    return layers, prefix, tuple(key for key in state if key not in used)


def from_torch(obj: Any, prefix: str | None = None, *, nonlinearity: str | None = None) -> Any:
    """A PyTorch RNN (module, cell, or state dict) -> jaxrnn params.

    The state dict's keys say what the RNN is: ``<prefix>weight_ih_l{k}`` gives the layer
    count, ``_reverse`` bidirectional, ``bias_*`` the biases, and the rows of ``weight_ih``
    per hidden unit the cell (``H``: ``nn.RNN``, ``4H``: ``nn.LSTM``, ``3H``: ``nn.GRU``).
    An ``nn.RNN``'s ``tanh`` or ``relu`` is not in its weights: it is read from the module when
    there is one, else ``nonlinearity`` says it (default ``"tanh"``).

    Args:
        obj: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (any ``num_layers``, ``bidirectional``), their
            cells (``nn.RNNCell`` ...), a whole model holding one, or a state dict of any of them
            (``torch.load(path, weights_only=True)``).
        prefix: the RNN's key prefix in a whole model's state dict (``"rnn."`` or ``"rnn"``);
            ``None``: the only one there is.
        nonlinearity: ``"tanh"`` | ``"relu"`` for an ``nn.RNN`` read from a state dict.

    Returns:
        For an RNN: a list (for :func:`jaxrnn.stack`), one entry per layer, the cell's params or
        ``BiParams(forward, backward)``. The source's keys that are not the RNN's are named in a
        ``UserWarning`` (:func:`from_torch_model` turns a classic ``Embedding -> RNN -> Linear``
        model's into the embedding and readout, and lists the rest in ``Converted.unused``).
        For a cell: the cell's params. GRUs come out with ``reset_after=True``.
    """
    if not isinstance(obj, Mapping):
        try:
            kind, what = _torch_kind(obj)
        except TypeError:
            kind, what = None, None
        if what == "cell":
            nonlin = getattr(obj, "nonlinearity", "tanh")
            return _from_torch_weights(
                kind, obj.weight_ih, obj.weight_hh, obj.bias_ih, obj.bias_hh, nonlin
            )
    layers, prefix, unused = _torch_layers(obj, prefix, nonlinearity, "from_torch")
    if unused:
        warnings.warn(
            f"from_torch: keys not used (not the RNN's under prefix {prefix!r}): "
            f"{list(unused)}; from_torch_model converts a classic "
            "Embedding -> RNN -> Linear model whole",
            stacklevel=2,
        )
    return layers


def from_torch_model(
    obj: Any,
    prefix: str | None = None,
    *,
    nonlinearity: str | None = None,
    readout: str = "final",
) -> Converted:
    """A classic PyTorch ``Embedding -> RNN -> Linear`` model (module or state dict) -> a
    :class:`Converted` model, ``model(tokens)`` giving the ``Linear``'s outputs (logits: apply
    the sigmoid / softmax your loss applied).

    Around the RNN (found as in :func:`from_torch`), the other keys are read as

    * the embedding: a ``<name>.weight`` ``[V, D]`` with no ``<name>.bias``, ``D`` the RNN's
      input size (without one, the model takes ``xs [B, T, D]``);
    * the readout: a ``<name>.weight`` ``[O, H_out]`` (``H_out = H``, or ``2H`` when
      bidirectional) with its optional ``<name>.bias [O]`` (without one, the model outputs
      what ``readout`` selects).

    Keys matching neither stay in ``Converted.unused``; more than one candidate for the
    embedding or the readout is a ``ValueError``.

    Args:
        obj: a module or a state dict, as :func:`from_torch`.
        prefix, nonlinearity: as :func:`from_torch`.
        readout: what the ``Linear`` reads: ``"final"``: the last layer's final hidden state,
            ``h_n[-1]`` (``cat(h_n[-2], h_n[-1])`` when bidirectional); ``"last"``: the
            outputs at the last step, ``out[:, -1]`` (the same as ``"final"`` for a
            unidirectional RNN); ``"sequence"``: every step, ``out`` ``[B, T, H_out]``.

    Returns:
        a :class:`Converted` (PyTorch's ``batch_first`` layout: tokens ``[B, T]``).
    """
    if readout not in ("final", "last", "sequence"):
        raise ValueError(
            f"from_torch_model: readout must be 'final', 'last' or 'sequence'; got {readout!r}"
        )
    layers, _, unused = _torch_layers(obj, prefix, nonlinearity, "from_torch_model")
    state, _ = _torch_state(obj)
    first = layers[0].forward if isinstance(layers[0], BiParams) else layers[0]
    last = layers[-1].forward if isinstance(layers[-1], BiParams) else layers[-1]
    D = first.input_size
    H_out = last.hidden_size * (2 if isinstance(layers[-1], BiParams) else 1)
    rest = [k for k in unused if k.endswith("weight")]
    shape = lambda k: tuple(_np(state[k]).shape)  # noqa: E731
    emb = [k for k in rest if shape(k)[1:] == (D,) and k[: -len("weight")] + "bias" not in state]
    lin = [k for k in rest if k not in emb and shape(k)[1:] == (H_out,)]
    for what, cands in (("embedding", emb), ("readout", lin)):
        if len(cands) > 1:
            raise ValueError(
                f"from_torch_model: several keys could be the {what}: {cands}; "
                "convert the RNN with from_torch and place the others by hand"
            )
    used = set()
    embedding = None
    if emb:
        embedding = jnp.asarray(_np(state[emb[0]]))  # [V, D]
        used.add(emb[0])
    dense_params, dense = [], []
    if lin:
        bias_key = lin[0][: -len("weight")] + "bias"
        b = jnp.asarray(_np(state[bias_key])) if bias_key in state else None
        dense_params.append((jnp.asarray(_np(state[lin[0]]).T), b))  # W [H_out, O]
        dense.append(Dense("linear"))
        used.update({lin[0], bias_key} & set(state))
    kinds = [_kind(p.forward if isinstance(p, BiParams) else p) for p in layers]
    specs = tuple(
        Recurrent(kind, return_sequences=(k < len(layers) - 1 or readout != "final"))
        for k, kind in enumerate(kinds)
    )
    return Converted(
        {"embedding": embedding, "rnn": layers, "dense": dense_params},
        specs,
        tuple(dense),
        last_step=readout == "last",
        unused=tuple(k for k in unused if k not in used),
    )


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


def _new_torch_module(params: Any) -> Any:
    """A new ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (``batch_first``) shaped like ``params``."""
    import torch

    layers = (
        list(params)
        if isinstance(params, (list, tuple)) and not isinstance(params, BiParams)
        else [params]
    )
    if not layers:
        raise ValueError("to_torch: params hold no layer")
    bidir = isinstance(layers[0], BiParams)
    first = layers[0].forward if bidir else layers[0]
    kind = _kind(first)
    opts = dict(
        num_layers=len(layers), bias=first.b is not None, batch_first=True, bidirectional=bidir
    )
    if kind == "simple":
        act = _act_name(first, "activation")
        if act not in ("tanh", "relu"):
            raise ValueError(f"to_torch: nn.RNN has only tanh and relu; params have {act!r}")
        opts["nonlinearity"] = act
    cls = {"simple": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return cls(first.input_size, first.hidden_size, **opts)


def to_torch(params: Any, module: Any = None) -> Any:
    """Writes params (as :func:`from_torch` returns them) into a PyTorch module; returns it.

    Args:
        params: a list of layers (cell params or ``BiParams``), one cell's params, or, for a
            PyTorch cell, that cell's params.
        module: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` or their cells. ``None``: a new module
            (``batch_first=True``) with the params' kind, sizes, layer count, direction, bias
            and (``nn.RNN``) nonlinearity.

    Raises:
        ValueError: kind, layer count, direction, sizes, bias or activations differ.
    """
    import torch

    if module is None:
        module = _new_torch_module(params)
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
        ``SimpleParams`` | ``LSTMParams`` | ``GRUParams`` (``reset_after=True``), or
        ``BiParams(forward, backward)`` for the variables of ``nn.Bidirectional(forward_rnn,
        backward_rnn)`` (``{"params": {"forward_rnn": {"cell": ...}, "backward_rnn": ...}}``;
        both directions take the same activations).
    """
    top = variables["params"] if "params" in variables else variables
    if set(top) == {"forward_rnn", "backward_rnn"}:
        opts = dict(activation=activation, recurrent_activation=recurrent_activation)
        return BiParams(
            from_flax(top["forward_rnn"], **opts), from_flax(top["backward_rnn"], **opts)
        )
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
        params: ``SimpleParams`` | ``LSTMParams`` | ``GRUParams``, or ``BiParams`` for
            ``nn.Bidirectional(nn.RNN(cell), nn.RNN(cell))``.
        for_rnn: nest under ``"cell"`` for ``nn.RNN(cell)`` (always, for ``BiParams``).

    Returns:
        ``{"params": cell_params}`` or ``{"params": {"cell": cell_params}}``; for ``BiParams``
        ``{"params": {"forward_rnn": {"cell": ...}, "backward_rnn": {"cell": ...}}}``.
    """
    if isinstance(params, BiParams):
        fw, bw = (to_flax(p, for_rnn=True)["params"] for p in params)
        return {"params": {"forward_rnn": fw, "backward_rnn": bw}}
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
