"""One builder per framework: the same model and the same step, ready to time.

Every builder takes a workload ``spec`` and returns ``step()``: a function that
runs ONE step (a training step: forward, BPTT and an Adam update; or an
inference step: forward only) and returns only when the device has finished
(``block_until_ready`` / ``cuda.synchronize``), so wall time measures the work.

The model is the seed model of the issue for any cell::

    tokens [B, T] int -> Embedding(V, E) -> RNN(H) (simple | lstm | gru) -> last h [B, H]
                      -> Dense(1) -> logit [B];   loss = mean BCE(sigmoid(logit), label)

``spec`` keys: ``mode`` ("train" | "infer"), ``cell``, ``B``, ``T``, ``H``, ``V``, ``E``.
Data are random token ids and labels drawn once (seed 0); every framework sees
the same arrays. Nothing here is a test: no timing is asserted anywhere.

jaxrnn's rows differ only in ``backend=`` (and in the process settings ``run.py`` gives the
worker): ``jaxrnn`` is ``backend="auto"``, what a user gets; ``jaxrnn-host`` the same step in
a worker with jaxrnn's host settings (``jaxrnn.training.host``, what ``train.py`` runs with);
``jaxrnn-xla`` the hoisted XLA loops; ``jaxrnn-scan`` the plain ``lax.scan`` reference with
autodiff; ``jaxrnn-native`` the CPU kernels by name; ``jaxrnn-pallas*`` the GPU kernels with
the settings of :data:`PALLAS_VARIANTS`.

The stack workload (``spec["layers"]``, the ``stack`` workload of run.py) is PyTorch's
``nn.LSTM(num_layers=2, bidirectional=True)`` on packed sequences: post-padded reviews with
lengths in ``[T / 4, T]`` (:func:`make_lengths`), ``spec["layers"]`` layers, each bidirectional
within each length, and the last layer's final ``h`` of both directions ``[B, 2H]`` -> Dense(1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

LR = 1e-3  # Adam learning rate, the same everywhere


def make_data(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[B, T]`` int32 uniform in ``[1, V)`` and labels ``[B]`` float32 in {0, 1}."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, spec["V"], size=(spec["B"], spec["T"]), dtype=np.int32)
    labels = rng.integers(0, 2, size=(spec["B"],)).astype(np.float32)
    return tokens, labels


def make_lengths(spec: dict[str, Any]) -> np.ndarray:
    """``[B]`` int32 true lengths in ``[T / 4, T]`` (seed 1) for the stack workload."""
    rng = np.random.default_rng(1)
    return rng.integers(spec["T"] // 4, spec["T"] + 1, size=(spec["B"],)).astype(np.int32)


# --------------------------------------------------------------------------- JAX family


def _jax_device(device: str):
    import jax

    if device == "auto":
        return jax.devices()[0]
    if device == "cpu":
        return jax.devices("cpu")[0]
    return jax.devices(device)[0]  # "gpu" / "cuda"


def _jax_train_step(
    loss_fn: Callable, params: Any, tokens, labels, device, compiler_options=None
) -> Callable[[], None]:
    """Jitted ``value_and_grad`` + ``optax.adam`` step with donated params and state."""
    import jax
    import optax

    opt = optax.adam(LR)
    params = jax.device_put(params, device)
    opt_state = opt.init(params)
    tokens, labels = jax.device_put((tokens, labels), device)

    def step(params, opt_state, tokens, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)
    state = [params, opt_state]

    def run() -> None:
        p, s, loss = step(state[0], state[1], tokens, labels)
        loss.block_until_ready()
        state[0], state[1] = p, s
        run.loss = loss  # the last step's loss, to compare steps across backends

    # the compiled step as it runs (profile_step.py names its operations by it)
    run.compiled = lambda: step.lower(state[0], state[1], tokens, labels).compile()
    return run


def _jax_infer_step(
    logits_fn: Callable, params: Any, tokens, device, compiler_options=None
) -> Callable[[], None]:
    import jax

    params, tokens = jax.device_put((params, tokens), device)
    f = jax.jit(logits_fn, compiler_options=compiler_options)

    def run() -> None:
        run.loss = f(params, tokens).block_until_ready()  # the logits

    return run


# Settings of the Pallas GPU kernels for the "jaxrnn-pallas*" rows (backend "pallas" with this
# gpu.Config): every cell's kernels, so the LSTM's too, against what "auto" picks in the same run.
# On a CPU these rows are skipped (the kernels are CUDA-only).
ALL_CELLS = frozenset({"simple", "lstm", "gru"})
PALLAS_VARIANTS: dict[str, dict[str, Any]] = {
    "pallas": dict(cells=ALL_CELLS),  # as many weight blocks held on chip as fit
    "pallas-reread": dict(cells=ALL_CELLS, hold=False),  # the weights read at every step
    "pallas-hold2": dict(cells=ALL_CELLS, hold=2),  # two blocks held, the others re-read
    "pallas-w16": dict(cells=ALL_CELLS, warps=16),
    "pallas-s2": dict(cells=ALL_CELLS, hold=False, stages=2),  # Triton pipelining instead
}


def jaxrnn_backend(name: str) -> Any:
    """The ``backend=`` of a jaxrnn row: ``"jaxrnn"`` / ``"jaxrnn-host"`` auto,
    ``"jaxrnn-xla"`` / ``"jaxrnn-scan"`` / ``"jaxrnn-native"`` by name, ``"jaxrnn-pallas*"``
    a :class:`jaxrnn.backends.Backend` with a :data:`PALLAS_VARIANTS` config."""
    from jaxrnn import backends

    variant = name.removeprefix("jaxrnn").removeprefix("-")
    if variant in ("", "host"):
        return "auto"
    if variant in PALLAS_VARIANTS:
        return backends.Backend("pallas", gpu=backends.gpu.Config(**PALLAS_VARIANTS[variant]))
    if variant in ("xla", "scan", "native"):
        return variant
    raise ValueError(f"unknown jaxrnn row {name!r}")


def build_jaxrnn(
    spec: dict[str, Any], device: str, backend: Any = "auto", compiler_options=None
) -> Callable[[], None]:
    """jaxrnn's seed model as a user writes it: ``models.classifier_loss`` with
    ``ClassifierConfig(backend=backend)`` (the embedding folded into the recurrence's input
    projection by ``rnn``), value_and_grad + optax Adam in a ``jax.jit`` step of its own.
    ``compiler_options``: XLA options for that step (``jaxrnn.training.host``'s, for the
    rows run with jaxrnn's host settings; ``None``: XLA's defaults)."""
    import jax

    from jaxrnn import models

    dev = _jax_device(device)
    if spec.get("layers"):
        return _build_jaxrnn_stack(spec, dev, backend, compiler_options)
    cfg = models.ClassifierConfig(
        vocab_size=spec["V"], embed_dim=spec["E"], hidden_size=spec["H"], cell=spec["cell"],
        backend=backend,
    )  # fmt: skip
    params = models.init_classifier(jax.random.key(0), cfg)
    tokens, labels = make_data(spec)
    if spec["mode"] == "train":
        loss_fn = lambda p, x, y: models.classifier_loss(cfg, p, x, y)  # noqa: E731
        return _jax_train_step(loss_fn, params, tokens, labels, dev, compiler_options)
    logits_fn = lambda p, x: models.classifier_logits(cfg, p, x)  # noqa: E731
    return _jax_infer_step(logits_fn, params, tokens, dev, compiler_options)


def _build_jaxrnn_stack(
    spec: dict[str, Any], dev: Any, backend: Any, compiler_options=None
) -> Callable[[], None]:
    """The stack workload: :func:`jaxrnn.stack` of bidirectional layers with ``lengths``."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxrnn import BiParams, cells, stack

    mod, H = cells.get(spec["cell"]), spec["H"]
    ks = iter(jax.random.split(jax.random.key(0), 4 * spec["layers"] + 2))
    layers, d = [], spec["E"]
    for _ in range(spec["layers"]):
        layers.append(BiParams(mod.init(next(ks), d, H), mod.init(next(ks), d, H)))
        d = 2 * H
    params = {
        "embedding": jax.random.normal(next(ks), (spec["V"], spec["E"]), jnp.float32),
        "layers": layers,
        "W_o": jax.random.normal(next(ks), (2 * H, 1), jnp.float32) / np.sqrt(2 * H),
        "b_o": jnp.zeros((1,), jnp.float32),
    }
    lengths = jnp.asarray(make_lengths(spec))

    def loss_fn(p, tokens, labels):
        xs = jnp.take(p["embedding"], tokens, axis=0)  # [B, T, E]
        finals, _ = stack(mod.cell, p["layers"], xs, lengths=lengths, backend=backend)
        fw, bw = finals[-1]
        h = jnp.concatenate([jax.tree.leaves(fw)[0], jax.tree.leaves(bw)[0]], -1)  # [B, 2H]
        return optax.sigmoid_binary_cross_entropy((h @ p["W_o"] + p["b_o"])[:, 0], labels).mean()

    tokens, labels = make_data(spec)
    return _jax_train_step(loss_fn, params, tokens, labels, dev, compiler_options)


def build_flax(spec: dict[str, Any], device: str) -> Callable[[], None]:
    """Flax linen: ``nn.Embed -> nn.RNN(nn.SimpleCell | nn.OptimizedLSTMCell | nn.GRUCell) -> nn.Dense``
    (stack workload: ``nn.Bidirectional(nn.RNN, nn.RNN)`` layers with ``seq_lengths``)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    H = spec["H"]
    cell_cls = {"simple": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[
        spec["cell"]
    ]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(spec["V"], spec["E"])(tokens)  # [B, T, E]
            ys = nn.RNN(cell_cls(H))(x)  # [B, T, H]
            return nn.Dense(1)(ys[:, -1])[:, 0]  # [B]

    class Stack(nn.Module):  # the stack workload: lengths of the whole batch, [B]
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(spec["V"], spec["E"])(tokens)  # [B, T, E]
            lengths = jnp.asarray(make_lengths(spec))
            for _ in range(spec["layers"]):
                bi = nn.Bidirectional(nn.RNN(cell_cls(H)), nn.RNN(cell_cls(H)), return_carry=True)
                (c_fw, c_bw), x = bi(x, seq_lengths=lengths)  # x [B, T, 2H]
            h = [c[1] if isinstance(c, tuple) else c for c in (c_fw, c_bw)]  # LSTM (c, h)
            return nn.Dense(1)(jnp.concatenate(h, -1))[:, 0]

    stacked = bool(spec.get("layers"))
    model = Stack() if stacked else Model()
    tokens, labels = make_data(spec)
    params = model.init(jax.random.key(0), tokens if stacked else tokens[:1])
    dev = _jax_device(device)

    def loss_fn(p, x, y):
        return optax.sigmoid_binary_cross_entropy(model.apply(p, x), y).mean()

    if spec["mode"] == "train":
        return _jax_train_step(loss_fn, params, tokens, labels, dev)
    return _jax_infer_step(model.apply, params, tokens, dev)


def build_keras(spec: dict[str, Any], device: str, variant: str = "jit") -> Callable[[], None]:
    """Keras 3 on JAX: ``Embedding -> SimpleRNN | LSTM | GRU -> Dense(1)``.

    ``variant="jit"``: a jitted stateless step (``model.stateless_call`` +
    ``optimizer.stateless_apply``, Keras's recipe for custom JAX loops);
    ``"fit"``: ``model.train_on_batch`` / ``model.predict_on_batch`` after
    ``compile(jit_compile=True)`` (includes Keras's per-call Python overhead).
    """
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import keras

    assert keras.backend.backend() == "jax", keras.backend.backend()
    layer = {"simple": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
    keras.utils.set_random_seed(0)
    dev = _jax_device(device)
    with jax.default_device(dev):
        model = keras.Sequential(
            [
                keras.Input((spec["T"],), dtype="int32"),
                keras.layers.Embedding(spec["V"], spec["E"]),
                layer[spec["cell"]](spec["H"]),
                keras.layers.Dense(1),
            ]
        )
        loss_obj = keras.losses.BinaryCrossentropy(from_logits=True)
        optimizer = keras.optimizers.Adam(LR)
    tokens, labels = make_data(spec)
    x, y = jax.device_put((tokens, labels), dev)

    if variant == "fit":
        model.compile(optimizer=optimizer, loss=loss_obj, jit_compile=True)
        if spec["mode"] == "train":
            return lambda: model.train_on_batch(x, y)  # returns a Python float: synchronous
        return lambda: model.predict_on_batch(x)

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    if spec["mode"] == "infer":

        @jax.jit
        def predict(tv, ntv, x):
            return model.stateless_call(tv, ntv, x, training=False)[0]

        return lambda: predict(tv, ntv, x).block_until_ready()

    optimizer.build(model.trainable_variables)
    ov = [v.value for v in optimizer.variables]

    def compute_loss(tv, ntv, x, y):
        logits, ntv = model.stateless_call(tv, ntv, x, training=True)
        return loss_obj(y[:, None], logits), ntv

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    def train_step(state, x, y):
        tv, ntv, ov = state
        (loss, ntv), grads = grad_fn(tv, ntv, x, y)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return (tv, ntv, ov), loss

    train_step = jax.jit(train_step, donate_argnums=(0,))
    state = [(tv, ntv, ov)]

    def run() -> None:
        state[0], loss = train_step(state[0], x, y)
        loss.block_until_ready()

    return run


def build_torch(
    spec: dict[str, Any], device: str, threads: int | None = None, packed: bool = True
) -> Callable[[], None]:
    """PyTorch: ``nn.Embedding -> nn.RNN | nn.LSTM | nn.GRU (batch_first) -> nn.Linear``
    (cuDNN on a GPU), ``BCEWithLogitsLoss``, ``torch.optim.Adam``. ``threads``: CPU
    intra-op threads (default: PyTorch's choice, one per core). Stack workload: ``packed``
    (default) runs packed sequences, the model the others compute; ``packed=False`` runs the
    padded batch as it is (the backward direction then starts in the padding: not the same
    numbers, a lower bound on PyTorch's time for this shape)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device("cuda" if device == "gpu" else device)
    torch.manual_seed(0)
    rnn_cls = {"simple": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec["cell"]]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(spec["V"], spec["E"])
            self.rnn = rnn_cls(spec["E"], spec["H"], batch_first=True)
            self.out = torch.nn.Linear(spec["H"], 1)

        def forward(self, tokens):
            ys, _ = self.rnn(self.emb(tokens))  # [B, T, H]
            return self.out(ys[:, -1])[:, 0]  # [B]

    class Stack(torch.nn.Module):  # the stack workload: packed sequences
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(spec["V"], spec["E"])
            self.rnn = rnn_cls(
                spec["E"], spec["H"], num_layers=spec["layers"], bidirectional=True,
                batch_first=True,
            )  # fmt: skip
            self.out = torch.nn.Linear(2 * spec["H"], 1)
            self.lengths = torch.as_tensor(make_lengths(spec), dtype=torch.long)  # on the CPU

        def forward(self, tokens):
            x = self.emb(tokens)  # [B, T, E]
            if packed:
                x = torch.nn.utils.rnn.pack_padded_sequence(
                    x, self.lengths, batch_first=True, enforce_sorted=False
                )
            _, state = self.rnn(x)
            h_n = state[0] if isinstance(state, tuple) else state  # [layers * 2, B, H]
            return self.out(torch.cat([h_n[-2], h_n[-1]], -1))[:, 0]  # [B]

    model = (Stack() if spec.get("layers") else Model()).to(dev)
    tokens, labels = make_data(spec)
    x = torch.as_tensor(tokens, dtype=torch.long, device=dev)
    y = torch.as_tensor(labels, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    if spec["mode"] == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(x)
            sync()

        return infer

    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sync()

    return train


def build_numpy(spec: dict[str, Any], device: str) -> Callable[[], None]:
    """The from-scratch NumPy reference (:mod:`jaxrnn.reference`, float64, simple cell
    only): ``seed_forward`` + hand-derived ``seed_backward`` + Adam written in NumPy."""
    import jax

    from jaxrnn import models, reference

    if spec["cell"] != "simple":
        raise NotImplementedError("the NumPy reference has the simple cell only")
    cfg = models.ClassifierConfig(vocab_size=spec["V"], embed_dim=spec["E"], hidden_size=spec["H"])
    p = models.init_classifier(jax.random.key(0), cfg)
    params = {
        "embedding": np.asarray(p["embedding"], np.float64),
        "rnn": {k: np.asarray(getattr(p["rnn"], k), np.float64) for k in ("W_x", "W_h", "b")},
        "W_o": np.asarray(p["W_o"], np.float64),
        "b_o": np.asarray(p["b_o"], np.float64),
    }
    tokens, labels = make_data(spec)
    if spec["mode"] == "infer":
        return lambda: reference.seed_forward(params, tokens, labels)

    flat = lambda t: [t["embedding"], *t["rnn"].values(), t["W_o"], t["b_o"]]  # noqa: E731
    m = [np.zeros_like(a) for a in flat(params)]
    v = [np.zeros_like(a) for a in flat(params)]
    count = [0]
    b1, b2, eps = 0.9, 0.999, 1e-8

    def train() -> None:
        _, cache = reference.seed_forward(params, tokens, labels)
        grads = reference.seed_backward(params, cache)
        count[0] += 1
        c1, c2 = 1 - b1 ** count[0], 1 - b2 ** count[0]
        for w, g, mi, vi in zip(flat(params), flat(grads), m, v, strict=True):
            mi *= b1
            mi += (1 - b1) * g
            vi *= b2
            vi += (1 - b2) * g * g
            w -= LR * (mi / c1) / (np.sqrt(vi / c2) + eps)

    return train


def build_matmul(spec: dict[str, Any], device: str) -> Callable[[], None]:
    """The machine's matmul throughput: one jitted ``[N, N] @ [N, N]`` float32 (``2 N^3`` FLOP)."""
    import jax
    import jax.numpy as jnp

    dev = _jax_device(device)
    n = spec["N"]
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), dev)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32), dev)
    f = jax.jit(jnp.matmul)
    return lambda: f(a, b).block_until_ready()


JAXRNN_ROWS = (
    "jaxrnn", "jaxrnn-host", "jaxrnn-xla", "jaxrnn-scan", "jaxrnn-native",
    *(f"jaxrnn-{v}" for v in PALLAS_VARIANTS),
)  # fmt: skip


def _jaxrnn_row(name: str) -> Callable[..., Callable[[], None]]:
    return lambda spec, device, **kw: build_jaxrnn(spec, device, jaxrnn_backend(name), **kw)


FRAMEWORKS: dict[str, Callable[..., Callable[[], None]]] = {
    **{name: _jaxrnn_row(name) for name in JAXRNN_ROWS},
    "flax": build_flax,
    "keras-jax": lambda s, d: build_keras(s, d, "jit"),
    "keras-fit": lambda s, d: build_keras(s, d, "fit"),
    "torch": build_torch,
    "torch-1thread": lambda s, d: build_torch(s, d, threads=1),
    "torch-unpacked": lambda s, d: build_torch(s, d, packed=False),
    "numpy": build_numpy,
    "matmul": build_matmul,
}


def build(
    name: str, spec: dict[str, Any], device: str, compiler_options=None
) -> Callable[[], None]:
    """The step of framework ``name`` (a key of :data:`FRAMEWORKS`) for workload ``spec``;
    ``compiler_options`` reach the jaxrnn rows' jitted steps only (they are jaxrnn's setting)."""
    if name not in FRAMEWORKS:
        raise ValueError(f"unknown framework {name!r}; expected one of {sorted(FRAMEWORKS)}")
    if name.startswith("jaxrnn"):
        return FRAMEWORKS[name](spec, device, compiler_options=compiler_options)
    return FRAMEWORKS[name](spec, device)
