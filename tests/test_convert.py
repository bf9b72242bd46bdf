"""Whole-model conversion (``jaxrnn.convert``): Keras models and ``.keras`` files, PyTorch
state dicts, building the peers' layers, Flax ``nn.Bidirectional``.

The truth is always the peer itself: Keras's ``predict``, PyTorch's forward, Flax's ``apply``
on the same weights (float32, 1e-5), after training where the weights matter.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports Keras

from jaxrnn import BiParams, bidirectional, cells, convert, recurrent, stack  # noqa: E402

pytestmark = pytest.mark.parity
TOL = 1e-5
V, T = 24, 10  # vocabulary, steps of the synthetic token task


def _keras():
    keras = pytest.importorskip("keras", reason="Keras 3 not installed (pip install '.[parity]')")
    if keras.backend.backend() != "jax":
        pytest.skip(f"these tests need Keras's JAX backend; got {keras.backend.backend()}")
    return keras


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install '.[parity]')")
    torch.set_num_threads(1)  # tiny models: threads only contend with the other test workers
    return torch


def _token_task(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``[n, T]`` in ``[1, V)`` (a few left-padded with 0) and labels ``[n]``: is the
    last real token in the lower half of the vocabulary."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, (n, T))
    pad = rng.integers(0, 3, n)
    for i, p in enumerate(pad):
        x[i, :p] = 0
    return x.astype(np.int32), (x[:, -1] < V // 2).astype(np.float32)


# ----------------------------------------------------------------------------------- Keras

KERAS_MODELS = {
    "Embedding-SimpleRNN-Dense(sigmoid)": lambda L: [
        L.Embedding(V, 8),
        L.SimpleRNN(12),
        L.Dense(1, activation="sigmoid"),
    ],
    "Embedding-LSTM(seq)-LSTM-Dense": lambda L: [
        L.Embedding(V, 8),
        L.LSTM(10, return_sequences=True),
        L.Dropout(0.1),
        L.LSTM(6),
        L.Dense(1, activation="sigmoid"),
    ],
    "Embedding-Bidirectional(GRU)-Dense": lambda L: [
        L.Embedding(V, 8),
        L.Bidirectional(L.GRU(6)),
        L.Dense(1, activation="sigmoid"),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_trained_keras_file_predicts_what_keras_predicts(name, tmp_path):
    keras = _keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T,), dtype="int32"), *KERAS_MODELS[name](keras.layers)])
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    x, y = _token_task(256)
    losses = model.fit(x, y, epochs=3, batch_size=32, verbose=0).history["loss"]
    assert losses[-1] < losses[0]  # trained: the weights are not their initial draw
    path = tmp_path / "model.keras"
    model.save(path)

    converted = convert.from_keras(str(path))  # one call, from the file
    assert isinstance(converted, convert.Converted)
    x_test, _ = _token_task(200, seed=1)
    want = keras.saving.load_model(path).predict(x_test, verbose=0)  # [200, 1]
    got = np.asarray(converted(x_test))
    assert got.shape == want.shape == (200, 1)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got > 0.5, want > 0.5)
    # the pure form equals the bound one and jits
    np.testing.assert_allclose(
        jax.jit(converted.apply)(converted.params, x_test), got, atol=1e-6, rtol=0
    )


def test_keras_model_options_masking_and_functional_chain():
    """Options the converter maps: GRU reset_after=False with relu, a stacked bidirectional
    layer with merge_mode='sum', mask_zero, a Dense chain ending in softmax; a functional model."""
    keras = _keras()
    keras.utils.set_random_seed(1)
    L = keras.layers
    inp = keras.Input((T,), dtype="int32")
    h = L.Embedding(V, 5, mask_zero=True)(inp)
    h = L.Bidirectional(L.GRU(4, reset_after=False, activation="relu", return_sequences=True),
                        merge_mode="sum")(h)  # fmt: skip
    h = L.SimpleRNN(6, activation="relu")(h)
    h = L.Dense(5, activation="tanh")(h)
    out = L.Dense(3, activation="softmax")(h)
    model = keras.Model(inp, out)
    x, _ = _token_task(16, seed=2)
    x[:3, -4:] = 0  # right padding as well as left: an arbitrary mask
    converted = convert.from_keras(model)
    assert converted.mask_zero and [s.cell for s in converted.layers] == ["gru", "simple"]
    assert converted.params["rnn"][0].forward.reset_after is False
    np.testing.assert_allclose(converted(x), model.predict(x, verbose=0), atol=TOL, rtol=0)


def test_keras_masking_layer_on_float_inputs():
    keras = _keras()
    keras.utils.set_random_seed(2)
    L = keras.layers
    model = keras.Sequential([keras.Input((T, 3)), L.Masking(0.0), L.LSTM(4), L.Dense(2)])
    xs = np.random.default_rng(3).normal(size=(5, T, 3)).astype(np.float32)
    xs[1, 6:] = 0.0
    xs[2, :4] = 0.0
    converted = convert.from_keras(model)
    assert converted.mask_value == 0.0 and converted.params["embedding"] is None
    np.testing.assert_allclose(converted(xs), model.predict(xs, verbose=0), atol=TOL, rtol=0)


def test_keras_single_layer_still_converts_to_params():
    keras = _keras()
    layer = keras.layers.LSTM(3)
    layer.build((None, None, 2))
    p = convert.from_keras(layer)
    assert isinstance(p, cells.lstm.LSTMParams)
    np.testing.assert_array_equal(p.W_x, np.asarray(layer.cell.kernel))


@pytest.mark.parametrize(
    "bad, layer_name, cls, why",
    [
        (lambda L: [L.Conv1D(4, 3)], "conv", "Conv1D", "has no jaxrnn equivalent"),
        (
            lambda L: [L.LSTM(4, go_backwards=True, name="rev")],
            "rev",
            "LSTM",
            "has go_backwards=True",
        ),
        (lambda L: [L.GRU(4, stateful=True, name="st")], "st", "GRU", "has stateful=True"),
        (
            lambda L: [L.LSTM(4, name="l"), L.Flatten(name="flat")],
            "flat",
            "Flatten",
            "has no jaxrnn equivalent",
        ),
    ],
)
def test_keras_unsupported_layer_is_a_type_error_naming_it(bad, layer_name, cls, why):
    keras = _keras()
    layers = bad(keras.layers)
    if cls == "Conv1D":
        layers[0].name = "conv"  # noqa: SLF001 (Keras 3 layer names are settable)
    batch = 2 if cls == "GRU" else None
    model = keras.Sequential([keras.Input((T, 3), batch_size=batch), *layers])
    with pytest.raises(
        TypeError,
        match=rf"layer '{layer_name}' \({cls}\) {why}.*(supported: \[InputLayer\]|a converted model does not support)",
    ):
        convert.from_keras(model)


def test_keras_custom_layer_is_a_type_error_naming_it():
    keras = _keras()

    class Scale(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    model = keras.Sequential([keras.Input((T, 3)), keras.layers.SimpleRNN(3), Scale(name="s")])
    with pytest.raises(
        TypeError,
        match=r"layer 's' \(Scale\) has no jaxrnn equivalent .*; supported: \[InputLayer\]",
    ):
        convert.from_keras(model)


def test_keras_bad_argument_names_what_was_expected_and_received(tmp_path):
    _keras()
    with pytest.raises(TypeError, match=r"a Keras layer, a Keras model or a path.*got int"):
        convert.from_keras(3)
    with pytest.raises(FileNotFoundError, match="no saved Keras model at .*missing.keras"):
        convert.from_keras(tmp_path / "missing.keras")


# ----------------------------------------------------------------------------------- PyTorch


def _torch_classifier(torch, rnn):
    """The classic ``Embedding -> RNN -> Linear`` model; reads the final hidden state(s)."""

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, rnn.input_size)
            self.rnn = rnn
            dirs = 2 if rnn.bidirectional else 1
            self.fc = torch.nn.Linear(dirs * rnn.hidden_size, 2)

        def forward(self, tokens):
            out, h_n = self.rnn(self.embedding(tokens))
            h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # an LSTM's (h_n, c_n)
            last = torch.cat([h_n[-2], h_n[-1]], 1) if self.rnn.bidirectional else h_n[-1]
            return self.fc(last)  # [B, 2] logits

    return Classifier()


TORCH_RNNS = {
    "RNN-relu-2layers": lambda nn: nn.RNN(
        6, 8, num_layers=2, nonlinearity="relu", batch_first=True
    ),
    "LSTM-bidirectional": lambda nn: nn.LSTM(6, 5, bidirectional=True, batch_first=True),
    "GRU-2layers-bidirectional-nobias": lambda nn: nn.GRU(
        6, 4, num_layers=2, bidirectional=True, bias=False, batch_first=True
    ),
}


@pytest.mark.parametrize("name", list(TORCH_RNNS))
def test_trained_torch_state_dict_predicts_what_torch_predicts(name, tmp_path):
    torch = _torch()
    torch.manual_seed(0)
    rnn = TORCH_RNNS[name](torch.nn)
    model = _torch_classifier(torch, rnn)
    x, y = _token_task(128)
    xt, yt = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(15):  # a few full-batch steps: trained weights, not the initial draw
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)

    nonlin = "relu" if "relu" in name else None  # not in the weights: a state dict needs it said
    converted = convert.from_torch_model(state, nonlinearity=nonlin)  # one call
    assert converted.unused == ()
    x_test, _ = _token_task(100, seed=1)
    with torch.no_grad():
        want = model(torch.from_numpy(x_test).long()).numpy()  # [100, 2]
    got = np.asarray(converted(x_test))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    from_module = convert.from_torch_model(model)  # a module says its nonlinearity itself
    np.testing.assert_array_equal(np.asarray(from_module(x_test)), got)

    # the RNN alone, from the model's state dict under its prefix (inferred or given)
    unused = r"\['embedding.weight', 'fc.weight', 'fc.bias'\]"
    with pytest.warns(UserWarning, match=rf"keys not used .*under prefix 'rnn.'\): {unused}"):
        layers = convert.from_torch(state, nonlinearity=nonlin)
    assert len(layers) == rnn.num_layers
    assert all(isinstance(p, BiParams) == rnn.bidirectional for p in layers)
    xs = np.random.default_rng(4).normal(size=(3, 7, 6)).astype(np.float32)
    with torch.no_grad():
        ys_torch, _ = rnn(torch.from_numpy(xs))
    _, ys = stack(cells.get(convert._kind(_first(layers[0]))).cell, layers, jnp.asarray(xs))
    np.testing.assert_allclose(ys, ys_torch.numpy(), atol=TOL, rtol=0)


def _first(p):
    return p.forward if isinstance(p, BiParams) else p


def test_torch_readout_last_step_and_sequence():
    """``out[:, -1]`` of a bidirectional LSTM differs from its final states; both convert."""
    torch = _torch()
    torch.manual_seed(1)
    rnn = torch.nn.LSTM(6, 4, bidirectional=True, batch_first=True)
    fc = torch.nn.Linear(8, 3)
    state = {**{f"rnn.{k}": v for k, v in rnn.state_dict().items()},
             **{f"head.{k}": v for k, v in fc.state_dict().items()},
             "embedding.weight": torch.randn(V, 6)}  # fmt: skip
    x, _ = _token_task(5, seed=3)
    with torch.no_grad():
        out, _ = rnn(state["embedding.weight"][torch.from_numpy(x).long()])
        want_last, want_seq = fc(out[:, -1]).numpy(), fc(out).numpy()
    last = convert.from_torch_model(state, "rnn", readout="last")
    seq = convert.from_torch_model(state, "rnn.", readout="sequence")
    np.testing.assert_allclose(last(x), want_last, atol=TOL, rtol=0)
    np.testing.assert_allclose(seq(x), want_seq, atol=TOL, rtol=0)
    final = convert.from_torch_model(state)(x)
    assert not np.allclose(final, want_last, atol=1e-3)  # the distinction is real


def test_torch_module_and_state_dict_give_the_same_layers():
    torch = _torch()
    gru = torch.nn.GRU(3, 4, num_layers=2, batch_first=True)
    a, b = convert.from_torch(gru), convert.from_torch(gru.state_dict())  # no warning: all used
    assert type(a) is type(b) is list  # a plain pytree, as jax.grad and optax take it
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa.W_x, pb.W_x)
        np.testing.assert_array_equal(pa.b, pb.b)
    relu = torch.nn.RNN(3, 4, nonlinearity="relu")
    assert convert.from_torch(relu)[0].activation == "relu"  # read from the module
    assert convert.from_torch(relu.state_dict())[0].activation == "tanh"  # not in the weights
    assert convert.from_torch(relu.state_dict(), nonlinearity="relu")[0].activation == "relu"


def test_torch_state_dict_errors_name_expected_and_received():
    torch = _torch()
    two = {**{f"a.{k}": v for k, v in torch.nn.GRU(3, 4).state_dict().items()},
           **{f"b.{k}": v for k, v in torch.nn.LSTM(3, 4).state_dict().items()}}  # fmt: skip
    with pytest.raises(ValueError, match=r"several RNNs, prefixes \['a.', 'b.'\]; pass prefix="):
        convert.from_torch(two)
    with pytest.warns(UserWarning, match=r"keys not used \(not the RNN's under prefix 'b.'\)"):
        assert isinstance(convert.from_torch(two, prefix="b")[0], cells.lstm.LSTMParams)
    with pytest.raises(ValueError, match=r"no RNN weights under prefix 'c.'; found \['a.', 'b.'\]"):
        convert.from_torch(two, prefix="c.")
    with pytest.raises(
        ValueError, match=r"no PyTorch RNN weights .*among the keys \['bias', 'weight'\]"
    ):
        convert.from_torch(torch.nn.Linear(2, 3).state_dict())
    with pytest.raises(ValueError, match=r"nonlinearity='relu' applies to an nn.RNN; .* a GRU's"):
        convert.from_torch(torch.nn.GRU(3, 4).state_dict(), nonlinearity="relu")
    with pytest.raises(TypeError, match=r"a PyTorch module or a state dict .*; got int"):
        convert.from_torch(3)
    with pytest.raises(
        ValueError, match=r"readout must be 'final', 'last' or 'sequence'; got 'mean'"
    ):
        convert.from_torch_model(torch.nn.GRU(3, 4), readout="mean")


# ------------------------------------------------------------- building the peers' layers


def _params(kind, D=3, H=4, seed=0, **opts):
    return cells.get(kind).init(jax.random.key(seed), D, H, dtype=jnp.float32, **opts)


@pytest.mark.parametrize(
    "kind, opts",
    [("simple", {"activation": "relu"}), ("lstm", {}), ("gru", {"reset_after": False})],
)
def test_to_keras_builds_a_new_layer_that_computes_the_same(kind, opts):
    keras = _keras()
    p = _params(kind, **opts)
    xs = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    layer = convert.to_keras(p, return_sequences=True)  # no layer given: made and built here
    want = recurrent_ref(kind, p, xs)
    np.testing.assert_allclose(layer(xs), want, atol=TOL, rtol=0)
    unbuilt = keras.layers.GRU(4, reset_after=False) if kind == "gru" else None
    if unbuilt is not None:  # an unbuilt layer is built for the params' input size
        convert.to_keras(p, unbuilt)
        np.testing.assert_array_equal(np.asarray(unbuilt.cell.kernel), np.asarray(p.W_x))


def recurrent_ref(kind, p, xs):
    return np.asarray(recurrent(cells.get(kind).cell, p, jnp.asarray(xs)))


def test_to_keras_bidirectional_and_errors_say_what_to_do():
    keras = _keras()
    bi = BiParams(_params("lstm", seed=1), _params("lstm", seed=2))
    layer = convert.to_keras(bi)
    xs = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
    want = bidirectional(cells.lstm.cell, bi, jnp.asarray(xs), return_sequences=False)
    np.testing.assert_allclose(layer(xs), want, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"has 5 units; the params' hidden size is 4"):
        convert.to_keras(_params("lstm"), keras.layers.LSTM(5))
    with pytest.raises(TypeError, match=r"apply to a new layer \(layer=None\); got the layer"):
        convert.to_keras(_params("lstm"), keras.layers.LSTM(4), return_sequences=True)


def test_to_torch_builds_the_module_from_the_params():
    torch = _torch()
    layers = [
        BiParams(_params("gru", 3, 4, 0), _params("gru", 3, 4, 1)),
        BiParams(_params("gru", 8, 4, 2), _params("gru", 8, 4, 3)),
    ]
    module = convert.to_torch(layers)  # no module given: made here
    assert isinstance(module, torch.nn.GRU)
    assert (module.num_layers, module.bidirectional, module.batch_first) == (2, True, True)
    xs = np.random.default_rng(2).normal(size=(2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        want, _ = module(torch.from_numpy(xs))
    _, ys = stack(cells.gru.cell, layers, jnp.asarray(xs))
    np.testing.assert_allclose(ys, want.numpy(), atol=TOL, rtol=0)
    relu = convert.to_torch(_params("simple", activation="relu"))
    assert relu.nonlinearity == "relu" and relu.num_layers == 1
    with pytest.raises(ValueError, match=r"nn.RNN has only tanh and relu; params have 'selu'"):
        convert.to_torch(_params("simple", activation="selu"))
    with pytest.raises(TypeError, match=r"expected a PyTorch nn.RNN, .*; got Linear"):
        convert.to_torch(layers, torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------------- Flax


# the simple and LSTM layers in the slow tier: the conversion code is the same for every kind
@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.slow) for k in ("simple", "lstm")] + ["gru"]
)
def test_flax_bidirectional_both_ways(kind):
    nn = pytest.importorskip("flax.linen", reason="Flax not installed")
    flax_cell = {"simple": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[kind]
    model = nn.Bidirectional(nn.RNN(flax_cell(4)), nn.RNN(flax_cell(4)))
    xs = jax.random.normal(jax.random.key(0), (2, 6, 3), jnp.float32)
    lengths = jnp.array([6, 3])
    variables = model.init(jax.random.key(1), xs)
    bi = convert.from_flax(variables)
    assert isinstance(bi, BiParams)
    want = model.apply(variables, xs, seq_lengths=lengths)  # [B, T, 2H], time order
    got = bidirectional(cells.get(kind).cell, bi, xs, lengths=lengths)
    np.testing.assert_allclose(got[0], want[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(got[1, :3], want[1, :3], atol=TOL, rtol=0)  # flax leaves padding
    back = convert.to_flax(bi)  # and into Flax again: the same outputs from Flax itself
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    np.testing.assert_allclose(model.apply(back, xs), model.apply(variables, xs), atol=TOL, rtol=0)


def test_keras_classifier_runs_as_the_models_classifier():
    """Embedding -> LSTM -> Dense(1, sigmoid) is models.classifier_logits's layout: its params
    run there with a config that names no cell and no size."""
    from jaxrnn import models

    keras = _keras()
    keras.utils.set_random_seed(3)
    L = keras.layers
    model = keras.Sequential(
        [keras.Input((T,), dtype="int32"), L.Embedding(V, 5), L.LSTM(7), L.Dense(1, "sigmoid")]
    )
    x, _ = _token_task(8, seed=4)
    params = convert.from_keras(model).classifier_params()
    logits = models.classifier_logits(models.ClassifierConfig(), params, x)
    np.testing.assert_allclose(
        jax.nn.sigmoid(logits), model.predict(x, verbose=0)[:, 0], atol=TOL, rtol=0
    )
    two = keras.Sequential([keras.Input((T,), dtype="int32"), L.Embedding(V, 5),
                            L.Bidirectional(L.LSTM(3)), L.Dense(2)])  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"needs one unidirectional RNN layer; one Dense\(1, .*; got Embedding, "
        r"Bidirectional lstm\(return_sequences=False\), Dense\(2, activation='linear'\)",
    ):
        convert.from_keras(two).classifier_params()


def test_keras_bidirectional_of_two_cell_kinds_is_refused():
    keras = _keras()
    L = keras.layers
    bi = L.Bidirectional(L.LSTM(3), backward_layer=L.GRU(3, go_backwards=True), name="bi")
    model = keras.Sequential([keras.Input((T, 2)), bi])
    with pytest.raises(TypeError, match=r"layer 'bi' \(Bidirectional\) runs LSTM forward and GRU"):
        convert.from_keras(model)


def test_keras_functional_model_that_is_no_chain_is_refused():
    keras = _keras()
    L = keras.layers
    inp = keras.Input((T, 3))
    a, b = L.SimpleRNN(3, name="a")(inp), L.SimpleRNN(3, name="b")(inp)
    model = keras.Model(inp, L.Add(name="add")([a, b]))
    with pytest.raises(
        TypeError,
        match=r"layer 'b' \(SimpleRNN\) does not read the previous layer's output \('a'\); "
        r"it reads \['input_layer(_\d+)?'\]",
    ):
        convert.from_keras(model)
