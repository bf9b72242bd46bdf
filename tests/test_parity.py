"""Parity with the live peers: Keras 3 (JAX backend), PyTorch (CPU) and Flax linen.

Random weights and inputs, float32: outputs and final states equal to 1e-5,
parameter gradients to 1e-4 relative (measured values: ``python -m tests.parity_report``).
The comparisons themselves live in ``tests/parity_cases.py``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports Keras

import parity_cases as pc  # noqa: E402

from jaxrnn import BiParams, cells, convert  # noqa: E402

OUT_TOL, GRAD_TOL = 1e-5, 1e-4

pytestmark = pytest.mark.parity


def _keras():
    pytest.importorskip("keras", reason="Keras 3 not installed (pip install '.[parity]')")
    try:
        return pc.import_keras()
    except RuntimeError as e:
        pytest.skip(f"Keras parity needs the JAX backend: {e}")


def _torch():
    return pytest.importorskip("torch", reason="PyTorch not installed (pip install '.[parity]')")


def _check(r):
    assert r["out"] <= OUT_TOL, r
    assert r["state"] <= OUT_TOL, r
    if "grad" in r:
        assert r["grad"] <= GRAD_TOL, r


# ----------------------------------------------------------------------------------- Keras

KERAS_OPTIONS = [
    ("simple", (("activation", "relu"),)),
    ("lstm", (("use_bias", False),)),
    ("lstm", (("unit_forget_bias", False), ("recurrent_activation", "hard_sigmoid"))),
    ("gru", (("use_bias", False),)),
    ("gru", (("reset_after", False), ("use_bias", False))),
    ("gru", (("activation", "relu"), ("recurrent_activation", "hard_sigmoid"))),
]
KERAS_KINDS = [("simple", ()), ("lstm", ()), ("gru", ()), ("gru", (("reset_after", False),))]
KERAS_MODES = {
    "plain": {},
    "mask-right": {"mask": "right"},
    "mask-arbitrary": {"mask": "arbitrary"},
    "go_backwards-mask-right": {"go_backwards": True, "mask": "right"},
    "go_backwards-mask-arbitrary": {"go_backwards": True, "mask": "arbitrary"},
    "dropout": {"dropout": 0.3},
    "dropout-recurrent_dropout-mask": {"dropout": 0.3, "recurrent_dropout": 0.25, "mask": "right"},
}


def _id(kind, opts):
    return kind + "".join(f"-{k}={v}" for k, v in opts)


# The default run covers every kind with these modes; the rest run with -m slow.
FAST_MODES = [
    "plain",
    "mask-arbitrary",
    "go_backwards-mask-right",
    "dropout-recurrent_dropout-mask",
]


@pytest.mark.parametrize(
    "mode", [m if m in FAST_MODES else pytest.param(m, marks=pytest.mark.slow) for m in KERAS_MODES]
)
@pytest.mark.parametrize("kind,opts", KERAS_KINDS, ids=[_id(*c) for c in KERAS_KINDS])
def test_keras_layer(kind, opts, mode):
    _keras()
    r = pc.keras_case(kind, opts, **KERAS_MODES[mode])
    _check(r)
    if "dropout" in mode:
        assert r["dropout_effect"] > 1e-2, "dropout did not change the outputs"


@pytest.mark.parametrize(
    "kind,opts",
    [c if i < 4 else pytest.param(*c, marks=pytest.mark.slow) for i, c in enumerate(KERAS_OPTIONS)],
    ids=[_id(*c) for c in KERAS_OPTIONS],
)
def test_keras_layer_options(kind, opts):
    _keras()
    _check(pc.keras_case(kind, opts, mask="arbitrary"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(KERAS_MODES))
@pytest.mark.parametrize("kind,opts", KERAS_OPTIONS, ids=[_id(*c) for c in KERAS_OPTIONS])
def test_keras_layer_options_all_modes(kind, opts, mode):
    _keras()
    _check(pc.keras_case(kind, opts, **KERAS_MODES[mode]))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_keras_bidirectional(kind, merge_mode):
    _keras()
    _check(pc.keras_bidirectional_case(kind, merge_mode=merge_mode, mask="right"))


@pytest.mark.parametrize(
    "kind,return_sequences,mask",
    [("simple", True, "arbitrary"), ("lstm", False, "right"), ("gru", False, "arbitrary")],
)
def test_keras_bidirectional_masks_and_last_output(kind, return_sequences, mask):
    _keras()
    _check(pc.keras_bidirectional_case(kind, return_sequences=return_sequences, mask=mask))


# --------------------------------------------------------------------------------- PyTorch

TORCH_CASES = [
    ("simple", {"nonlinearity": "relu", "bias": False, "lengths": True}),
    ("lstm", {}),
    ("gru", {"bias": False}),
    ("simple", {"num_layers": 2, "bidirectional": True, "lengths": True}),
    ("lstm", {"num_layers": 2, "bidirectional": True, "lengths": True}),
    ("gru", {"num_layers": 2, "bidirectional": True, "lengths": True}),
]


@pytest.mark.parametrize(
    "kind,opts", TORCH_CASES, ids=[_id(k, tuple(o.items())) for k, o in TORCH_CASES]
)
def test_torch(kind, opts):
    _torch()
    _check(pc.torch_case(kind, **opts))


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
def test_torch_all(kind, num_layers, bidirectional, lengths):
    _torch()
    _check(pc.torch_case(kind, num_layers=num_layers, bidirectional=bidirectional, lengths=lengths))


# ------------------------------------------------------------------------------------ Flax


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "seq_lengths"])
@pytest.mark.parametrize("kind", ["simple", "lstm", "lstm_optimized", "gru"])
def test_flax_linen(kind, lengths):
    pytest.importorskip("flax.linen", reason="Flax not installed")
    _check(pc.flax_case(kind, lengths=lengths))


# ------------------------------------------------------------------------------ round trips

ROUND_TRIP = [
    ("simple", {}),
    ("simple", {"activation": "relu", "use_bias": False}),
    ("lstm", {}),
    ("lstm", {"use_bias": False}),
    ("gru", {}),
    ("gru", {"use_bias": False}),
    ("gru", {"reset_after": False}),
]


def _random_params(kind, opts, seed=0):
    p = cells.get(kind).init(jax.random.key(seed), pc.D, pc.H, **opts)
    if p.b is not None:
        b = jax.random.normal(jax.random.key(seed + 1), p.b.shape, jnp.float32)
        p = type(p)(**{**p.__dict__, "b": b})
    return p


def _assert_same_params(a, b):
    assert type(a) is type(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree.structure(a) == jax.tree.structure(b)  # same static options


@pytest.mark.parametrize(
    "kind,opts", ROUND_TRIP, ids=[_id(k, tuple(o.items())) for k, o in ROUND_TRIP]
)
def test_round_trip_keras(kind, opts):
    keras = _keras()
    p = _random_params(kind, opts)
    layer = getattr(keras.layers, pc.KERAS_LAYERS[kind])(pc.H, **opts)
    layer.build((None, None, pc.D))
    _assert_same_params(convert.from_keras(convert.to_keras(p, layer)), p)


@pytest.mark.parametrize(
    "kind,opts", ROUND_TRIP, ids=[_id(k, tuple(o.items())) for k, o in ROUND_TRIP]
)
def test_round_trip_torch(kind, opts):
    torch = _torch()
    p = _random_params(kind, opts)
    kw = {"bias": p.b is not None}
    if kind == "simple":
        kw["nonlinearity"] = p.activation
    module = getattr(torch.nn, pc.TORCH_MODULES[kind])(pc.D, pc.H, **kw)
    if kind == "gru" and not p.reset_after:
        with pytest.raises(
            ValueError, match="GRU is reset_after=True; params have reset_after=False"
        ):
            convert.to_torch([p], module)
        return
    back = convert.from_torch(convert.to_torch([p], module))
    _assert_same_params(back[0], p)
    # and a bidirectional, 2-layer module: layer k > 0 reads 2H features
    module2 = getattr(torch.nn, pc.TORCH_MODULES[kind])(
        pc.D, pc.H, num_layers=2, bidirectional=True, **kw
    )
    layers = convert.from_torch(module2)
    again = convert.from_torch(convert.to_torch(layers, module2))
    for a, b in zip(jax.tree.leaves(layers), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(layers[1], BiParams) and layers[1].forward.W_x.shape[0] == 2 * pc.H


@pytest.mark.parametrize("kind,opts", [c for c in ROUND_TRIP if c[1].get("use_bias", True)])
def test_round_trip_flax(kind, opts):
    p = _random_params(kind, opts)
    if kind == "gru" and not p.reset_after:
        with pytest.raises(
            ValueError, match="GRUCell is reset_after=True; params have reset_after=False"
        ):
            convert.to_flax(p)
        return
    back = convert.from_flax(convert.to_flax(p), activation=p.activation)
    xs = jax.random.normal(jax.random.key(3), (pc.B, pc.T, pc.D), jnp.float32)
    from jaxrnn import rnn

    cell = cells.get(kind).cell
    # GRU: the recurrent z, r biases are folded into the input ones, so compare functions
    np.testing.assert_allclose(rnn(cell, back, xs)[1], rnn(cell, p, xs)[1], atol=1e-6)
    if kind != "gru":
        _assert_same_params(back, p)


def test_conversion_refuses_what_is_not_exact():
    torch = _torch()
    p = _random_params("lstm", {"recurrent_activation": "hard_sigmoid"})
    with pytest.raises(
        ValueError, match="LSTM is fixed to tanh/sigmoid; params have 'tanh'/'hard_sigmoid'"
    ):
        convert.to_torch([p], torch.nn.LSTM(pc.D, pc.H))
    with pytest.raises(ValueError, match="module has 1 layers; got 2"):
        convert.to_torch([_random_params("lstm", {})] * 2, torch.nn.LSTM(pc.D, pc.H))
    with pytest.raises(ValueError, match="module is gru; params are lstm"):
        convert.to_torch([_random_params("lstm", {})], torch.nn.GRU(pc.D, pc.H))
    with pytest.raises(ValueError, match="Flax's cells always have biases; params have none"):
        convert.to_flax(_random_params("lstm", {"use_bias": False}))
    keras = _keras()
    layer = keras.layers.GRU(pc.H, reset_after=False)
    layer.build((None, None, pc.D))
    with pytest.raises(ValueError, match="reset_after differs: layer False, params True"):
        convert.to_keras(_random_params("gru", {}), layer)


def test_convert_imports_peers_lazily():
    import subprocess
    import sys

    code = "import sys, jaxrnn.convert; print('keras' in sys.modules or 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
