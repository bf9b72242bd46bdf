"""Live comparisons of jaxrnn against Keras 3 (JAX backend), PyTorch and Flax linen.

Each ``*_case`` function builds the peer's layer with random weights, converts the
weights with :mod:`jaxrnn.convert`, runs both on the same random float32 inputs
and returns the measured maxima::

    {"out": max |y_peer - y_jaxrnn|, "state": max |final state diff|,
     "grad": max |g_peer - g_jaxrnn| / max |g_peer| over parameter gradients}

``tests/test_parity.py`` asserts them (1e-5 absolute, 1e-4 relative);
``python -m tests.parity_report`` tabulates them for the closing note.
Peers are imported inside the functions (Keras only after ``KERAS_BACKEND=jax``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import bidirectional, cells, convert, recurrent, stack, torch_state
from jaxrnn.dropout import rnn_dropout_masks

B, T, D, H = 3, 6, 4, 5

# Right-padded (lengths 6, 3, 1) and arbitrary masks; row 2 of the latter starts masked.
MASKS = {
    "right": np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool),
    "arbitrary": np.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]], bool),
}
LENGTHS = np.array([6, 3, 1])


def import_keras():
    """Imports Keras 3 with the JAX backend (it must be chosen before the first import)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras was imported with backend {keras.backend.backend()!r}, not jax")
    return keras


def float32_only(fn):
    """Runs a case with JAX's x64 mode off, as users of the peers run them (the suite turns
    x64 on; Keras's GRU without bias then mixes float64 into its scan carry and fails)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(False):
            return fn(*args, **kwargs)

    return wrapped


def _rng(seed):
    return np.random.default_rng(seed)


def _xs(seed=0):
    return _rng(seed + 100).standard_normal((B, T, D)).astype(np.float32)


def _maxdiff(a, b):
    """max |a - b| / max(1, max |a|): absolute for values of order one, relative for large ones
    (relu layers); ``a`` is the peer's value."""
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (x.shape, y.shape)
        out = max(
            out,
            float(np.max(np.abs(x - y), initial=0.0) / max(1.0, np.max(np.abs(x), initial=0.0))),
        )
    return out


def _relgrad(g_peer, g_ours):
    out = 0.0
    for x, y in zip(jax.tree.leaves(g_peer), jax.tree.leaves(g_ours), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30)))
    return out


def _loss_weights(shape, seed):
    return jnp.asarray(_rng(seed + 200).standard_normal(shape).astype(np.float32))


def _weighted_sum(tree, seed):
    """sum_i <w_i, leaf_i> with fixed random w: a loss that every output entry affects."""
    leaves = jax.tree.leaves(tree)
    return sum(jnp.sum(leaf * _loss_weights(leaf.shape, seed + i)) for i, leaf in enumerate(leaves))


# ------------------------------------------------------------------------------------ Keras

KERAS_LAYERS = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


def _randomize_keras(layer, seed):
    rng = _rng(seed)
    layer.set_weights(
        [0.5 * rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()]
    )


@functools.cache
def _keras_layer(kind, opts, go_backwards, dropout, recurrent_dropout, seed):
    keras = import_keras()
    layer = getattr(keras.layers, KERAS_LAYERS[kind])(
        H,
        return_sequences=True,
        return_state=True,
        go_backwards=go_backwards,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        **dict(opts),
    )
    layer(_xs(seed))  # build
    _randomize_keras(layer, seed)
    return layer


def _patch_keras_dropout(cell, masks):
    """Makes a Keras cell use our masks (its own are drawn from its seed generator)."""
    cell.get_dropout_mask = lambda step_input: masks.x
    cell.get_recurrent_dropout_mask = lambda step_input: masks.h


@float32_only
def keras_case(
    kind, opts=(), *, mask=None, go_backwards=False, dropout=0.0, recurrent_dropout=0.0, seed=0
):
    """A Keras RNN layer vs :func:`jaxrnn.recurrent`; ``opts``: tuple of (k, v)."""
    layer = _keras_layer(kind, tuple(opts), go_backwards, dropout, recurrent_dropout, seed)
    params = convert.from_keras(layer)
    cell = cells.get(kind).cell
    xs = _xs(seed)
    m = None if mask is None else MASKS[mask]
    training = bool(dropout or recurrent_dropout)
    key = jax.random.key(seed)
    if training:  # the masks recurrent() draws from `key`, handed to Keras
        masks = rnn_dropout_masks(
            key, cell, D, H, (B,), dropout=dropout, recurrent_dropout=recurrent_dropout
        )
        _patch_keras_dropout(layer.cell, masks)
    ours = functools.partial(
        recurrent,
        cell,
        xs=xs,
        mask=m,
        go_backwards=go_backwards,
        return_state=True,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        key=key,
        deterministic=not training,
    )

    def peer(tv):
        out, _ = layer.stateless_call(
            tv, [v.value for v in layer.non_trainable_variables], xs, mask=m, training=training
        )
        return out[0], tuple(out[1:])

    tv = [v.value for v in layer.trainable_variables]
    y_k, s_k = peer(tv)
    y_j, carry = ours(params)
    s_j = tuple(carry) if kind == "lstm" else (carry,)
    # how much dropout changed the outputs (to see that the masks did act, in both)
    effect = _maxdiff(y_k, ours(params, deterministic=True)[0]) if training else 0.0

    def with_leaves(tv):  # our params with Keras's variables as leaves (same order)
        return dataclasses.replace(params, W_x=tv[0], W_h=tv[1], b=tv[2] if len(tv) > 2 else None)

    g_k = jax.grad(lambda tv: _weighted_sum(peer(tv), seed))(tv)
    g_j = jax.grad(
        lambda tv: _weighted_sum(
            (
                ours(with_leaves(tv))[0],
                tuple(ours(with_leaves(tv))[1]) if kind == "lstm" else (ours(with_leaves(tv))[1],),
            ),
            seed,
        )
    )(tv)
    return {
        "out": _maxdiff(y_k, y_j),
        "state": _maxdiff(s_k, s_j),
        "grad": _relgrad(g_k, g_j),
        "dropout_effect": effect,
    }


@functools.cache
def _keras_bidirectional(kind, opts, merge_mode, return_sequences, seed):
    keras = import_keras()
    inner = getattr(keras.layers, KERAS_LAYERS[kind])(
        H, return_sequences=return_sequences, return_state=True, **dict(opts)
    )
    layer = keras.layers.Bidirectional(inner, merge_mode=merge_mode)
    layer(_xs(seed))
    _randomize_keras(layer, seed)
    return layer


@float32_only
def keras_bidirectional_case(
    kind, opts=(), *, merge_mode="concat", return_sequences=True, mask=None, seed=0
):
    """keras.layers.Bidirectional vs :func:`jaxrnn.bidirectional`."""
    layer = _keras_bidirectional(kind, tuple(opts), merge_mode, return_sequences, seed)
    params = convert.from_keras(layer)
    xs, m = _xs(seed), (None if mask is None else MASKS[mask])
    n_states = 2 if kind == "lstm" else 1
    out_k = layer(xs, mask=m)
    n_out = 2 if merge_mode is None else 1
    y_k, s_k = out_k[:n_out], out_k[n_out:]
    y_j, (c_fw, c_bw) = bidirectional(
        cells.get(kind).cell,
        params,
        xs,
        mask=m,
        merge_mode=merge_mode,
        return_sequences=return_sequences,
        return_state=True,
    )
    y_j = y_j if merge_mode is None else (y_j,)
    s_j = (tuple(c_fw) + tuple(c_bw)) if kind == "lstm" else (c_fw, c_bw)
    assert len(s_k) == 2 * n_states
    return {"out": _maxdiff(tuple(y_k), y_j), "state": _maxdiff(tuple(s_k), s_j)}


# ---------------------------------------------------------------------------------- PyTorch

TORCH_MODULES = {"simple": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _torch_module(kind, num_layers, bidirectional_, bias, nonlinearity, seed):
    import torch

    torch.manual_seed(seed)
    kwargs = {"nonlinearity": nonlinearity} if kind == "simple" else {}
    m = getattr(torch.nn, TORCH_MODULES[kind])(
        D,
        H,
        num_layers=num_layers,
        bias=bias,
        batch_first=True,
        bidirectional=bidirectional_,
        **kwargs,
    )
    with torch.no_grad():  # larger than PyTorch's U(-1/sqrt(H), 1/sqrt(H)) so every term matters
        for p in m.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return m


@float32_only
def torch_case(
    kind,
    *,
    num_layers=1,
    bidirectional=False,
    bias=True,
    nonlinearity="tanh",
    lengths=False,
    seed=0,
):
    """nn.RNN/LSTM/GRU (packed when ``lengths``) vs :func:`jaxrnn.stack`."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    m = _torch_module(kind, num_layers, bidirectional, bias, nonlinearity, seed)
    xs = _xs(seed)
    lens = LENGTHS if lengths else None
    x_t = torch.from_numpy(xs)
    if lengths:
        packed = pack_padded_sequence(
            x_t, torch.from_numpy(LENGTHS), batch_first=True, enforce_sorted=False
        )
        out_p, state = m(packed)
        y_t, _ = pad_packed_sequence(out_p, batch_first=True, total_length=T)
    else:
        y_t, state = m(x_t)
    s_t = state if kind == "lstm" else (state,)
    loss_t = _weighted_sum_torch((y_t, *s_t), seed)
    loss_t.backward()

    params = convert.from_torch(m)
    cell = cells.get(kind).cell

    def ours(params):
        finals, ys = stack(cell, params, xs, lengths=lens)
        st = torch_state(finals)
        return ys, (st if kind == "lstm" else (st,))

    y_j, s_j = ours(params)
    g_j = jax.grad(lambda p: _weighted_sum(ours(p), seed))(params)
    # PyTorch's gradients, read into jaxrnn's layout by the same converter. For simple/LSTM,
    # b = bias_ih + bias_hh, so d/dbias_ih = d/dbias_hh = d/db and the converter sums 2 d/db.
    gm = copy.deepcopy(m)
    with torch.no_grad():
        for (_, p), (_, q) in zip(m.named_parameters(), gm.named_parameters(), strict=True):
            q.copy_(p.grad)
    g_t = convert.from_torch(gm)
    if kind != "gru" and bias:
        g_j = _double_bias(g_j)
    detach = lambda t: t.detach().numpy()  # noqa: E731
    return {
        "out": _maxdiff(detach(y_t), y_j),
        "state": _maxdiff(tuple(detach(s) for s in s_t), s_j),
        "grad": _relgrad(g_t, g_j),
    }


def _double_bias(tree):
    def fix(p):
        if dataclasses.is_dataclass(p) and getattr(p, "b", None) is not None:
            return dataclasses.replace(p, b=2 * p.b)
        return p

    return jax.tree.map(fix, tree, is_leaf=dataclasses.is_dataclass)


def _weighted_sum_torch(tensors, seed):
    import torch

    total = 0.0
    for i, t in enumerate(tensors):
        w = torch.from_numpy(np.array(_loss_weights(tuple(t.shape), seed + i)))
        total = total + (t * w).sum()
    return total


# ------------------------------------------------------------------------------------- Flax

FLAX_CELLS = {
    "simple": "SimpleCell",
    "lstm": "LSTMCell",
    "gru": "GRUCell",
    "lstm_optimized": "OptimizedLSTMCell",
}


@float32_only
def flax_case(kind, *, lengths=False, seed=0):
    """linen ``nn.RNN(cell)`` (with ``seq_lengths``) vs :func:`jaxrnn.rnn`, through from_flax."""
    import flax.linen as nn

    from jaxrnn import rnn

    module = nn.RNN(getattr(nn, FLAX_CELLS[kind])(features=H), return_carry=True)
    xs = jnp.asarray(_xs(seed))
    variables = module.init(jax.random.key(seed), xs)
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    variables = jax.tree.unflatten(
        treedef,
        [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
    )
    lens = jnp.asarray(LENGTHS) if lengths else None
    valid = (np.arange(T)[None, :] < (LENGTHS if lengths else np.full(B, T))[:, None])[..., None]
    ours_kind = "lstm" if kind.startswith("lstm") else kind

    def peer(v):
        carry, ys = module.apply(v, xs, seq_lengths=lens)
        if ours_kind == "lstm":
            carry = (carry[1], carry[0])  # Flax (c, h) -> (h, c)
        return jnp.where(valid, ys, 0.0), carry

    def ours(v):
        params = convert.from_flax(v)
        carry, ys = rnn(cells.get(ours_kind).cell, params, xs, lengths=lens)
        return ys, (tuple(carry) if ours_kind == "lstm" else carry)

    y_f, s_f = peer(variables)
    y_j, s_j = ours(variables)
    g_f = jax.grad(lambda v: _weighted_sum(peer(v), seed))(variables)
    g_j = jax.grad(lambda v: _weighted_sum(ours(v), seed))(variables)
    return {"out": _maxdiff(y_f, y_j), "state": _maxdiff(s_f, s_j), "grad": _relgrad(g_f, g_j)}
