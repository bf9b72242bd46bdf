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

The stack workload (``spec["layers"]``, the ``stack`` workload of run.py) is PyTorch's
``nn.LSTM(num_layers=2, bidirectional=True)`` on packed sequences: post-padded reviews with
lengths in ``[T / 4, T]`` (:func:`make_lengths`), ``spec["layers"]`` layers, each bidirectional
within each length, and the last layer's final ``h`` of both directions ``[B, 2H]`` -> Dense(1).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

LR = 1e-3  # Adam learning rate, the same everywhere


def make_data(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[B, T]`` int32 in ``[1, V)`` and labels ``[B]`` float32 in {0, 1}. The ids
    are uniform, or with ``spec["ids"] == "zipf"`` Zipf-distributed (exponent 1.2, as words
    in text: a few ids make most of the tokens; benchmarks/native_ab.py)."""
    rng = np.random.default_rng(0)
    if spec.get("ids", "uniform") == "zipf":
        ranks = rng.zipf(1.2, size=(spec["B"], spec["T"]))
        tokens = np.minimum(ranks, spec["V"] - 1).astype(np.int32)
    else:
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

    @jax.jit
    def step(params, opt_state, tokens, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step.__wrapped__, donate_argnums=(0, 1), compiler_options=compiler_options)
    state = [params, opt_state]

    def run() -> None:
        p, s, loss = step(state[0], state[1], tokens, labels)
        loss.block_until_ready()
        state[0], state[1] = p, s
        run.loss = loss  # the last step's (benchmarks/native_ab.py compares builds by it)

    # the compiled step as it runs (benchmarks/profile_step.py names its operations by it)
    run.compiled = lambda: step.lower(state[0], state[1], tokens, labels).compile()
    return run


def _jax_infer_step(
    logits_fn: Callable, params: Any, tokens, device, compiler_options=None
) -> Callable[[], None]:
    import jax

    params, tokens = jax.device_put((params, tokens), device)
    f = jax.jit(logits_fn, compiler_options=compiler_options)

    def run() -> None:
        run.loss = f(params, tokens).block_until_ready()  # the logits, for native_ab.py

    return run


# Settings of jaxrnn.gpu (module constants) for the "jaxrnn-<variant>" frameworks: the GPU
# kernels measured against their defaults in the same run ("all": gpu.ALL_CELLS, the gated
# cells' kernels too). On a CPU they change nothing (the kernels are CUDA-only).
GPU_VARIANTS: dict[str, dict[str, Any]] = {
    "fast-w8": dict(NUM_WARPS=8),  # the second GPU run (8 warps, the default since)
    # the fourth GPU run: every cell's kernels, weights re-read ("kern") or held ("hoist",
    # forced: the LSTM's do not fit), 16 warps, 2 pipeline stages; then the fifth run's A/B
    "fast-kern": dict(CELLS="all", HOIST_WEIGHTS=False),
    "fast-hoist": dict(CELLS="all", HOIST_WEIGHTS=True),
    "fast-hoist-w16": dict(CELLS="all", HOIST_WEIGHTS=True, NUM_WARPS=16),
    "fast-s2": dict(CELLS="all", HOIST_WEIGHTS=False, NUM_STAGES=2),
    # the default cells with their weights re-read every step (the LSTM: its XLA loops then)
    "fast-reread": dict(HOIST_WEIGHTS=False),
    # the eighth (H200): the LSTM's kernels holding 2 / 3 of its 4 blocks, re-reading the rest
    # (2: what the defaults do on an sm_90 GPU since)
    "fast-hold2": dict(CELLS="all", HOIST_WEIGHTS=2),
    "fast-hold3": dict(CELLS="all", HOIST_WEIGHTS=3),
}


def build_jaxrnn(
    spec: dict[str, Any], device: str, variant: str = "plain", unroll: int | None = None
) -> Callable[[], None]:
    """jaxrnn's seed model: ``variant="plain"`` is ``models.classifier_loss`` (``rnn``,
    ``lax.scan`` with autodiff); ``"fast"`` is :mod:`jaxrnn.fast` (with the native CPU kernels
    of :mod:`jaxrnn.native` or the GPU kernels of :mod:`jaxrnn.gpu` where they apply);
    ``"fast-xla"`` the same with both off (its XLA loops).
    ``unroll``: steps per iteration of the fast path's XLA loops (``None``: its default, 1 on
    a CPU, 10 on a GPU; the kernels have none)."""
    import jax

    from jaxrnn import models, runtime

    dev = _jax_device(device)
    if variant in GPU_VARIANTS:  # the fast path with other settings of its GPU kernels
        from jaxrnn import gpu

        for name, value in GPU_VARIANTS[variant].items():
            setattr(gpu, name, gpu.ALL_CELLS if value == "all" else value)
        variant = "fast"
    if spec.get("layers"):
        return _build_jaxrnn_stack(spec, dev, variant)
    cfg = models.ClassifierConfig(
        vocab_size=spec["V"], embed_dim=spec["E"], hidden_size=spec["H"], cell=spec["cell"]
    )
    params = models.init_classifier(jax.random.key(0), cfg)
    tokens, labels = make_data(spec)
    if variant == "plain":
        loss_fn = lambda p, x, y: models.classifier_loss(cfg, p, x, y)  # noqa: E731
        logits_fn = lambda p, x: models.classifier_logits(cfg, p, x)  # noqa: E731
    elif variant in ("fast", "fast-xla"):
        if variant == "fast-xla":  # the fast path with its XLA loops: no CPU / GPU kernels
            os.environ["JAXRNN_NATIVE"] = "0"
            os.environ["JAXRNN_GPU_KERNELS"] = "0"
        from jaxrnn import fast

        loss_fn = lambda p, x, y: fast.classifier_loss(cfg, p, x, y, unroll=unroll)  # noqa: E731
        logits_fn = lambda p, x: fast.classifier_logits(cfg, p, x, unroll=unroll)  # noqa: E731
    else:
        raise ValueError(f"unknown jaxrnn variant {variant!r}")
    # jaxrnn's own compile settings (jaxrnn/runtime.py: 512-bit vectors on an AVX-512 CPU),
    # as train.py uses them; the plain variant is compiled like the peers
    xla = runtime.compiler_options(dev.platform) if variant != "plain" else None
    if spec["mode"] == "train":
        return _jax_train_step(loss_fn, params, tokens, labels, dev, xla)
    return _jax_infer_step(logits_fn, params, tokens, dev, xla)


def _build_jaxrnn_stack(spec: dict[str, Any], dev: Any, variant: str) -> Callable[[], None]:
    """The stack workload: :func:`jaxrnn.stack.stack` (``fast=True`` for ``"fast"``)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxrnn import cells, runtime
    from jaxrnn.bidirectional import BiParams
    from jaxrnn.stack import stack

    if variant not in ("fast", "plain"):
        raise ValueError(f"the stack workload has jaxrnn variants fast and plain; got {variant!r}")
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
        finals, _ = stack(mod.cell, p["layers"], xs, lengths=lengths, fast=variant == "fast")
        fw, bw = finals[-1]
        h = jnp.concatenate([jax.tree.leaves(fw)[0], jax.tree.leaves(bw)[0]], -1)  # [B, 2H]
        return optax.sigmoid_binary_cross_entropy((h @ p["W_o"] + p["b_o"])[:, 0], labels).mean()

    tokens, labels = make_data(spec)
    xla = runtime.compiler_options(dev.platform) if variant != "plain" else None
    return _jax_train_step(loss_fn, params, tokens, labels, dev, xla)


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


FRAMEWORKS: dict[str, Callable[[dict[str, Any], str], Callable[[], None]]] = {
    "jaxrnn-fast": lambda s, d: build_jaxrnn(s, d, "fast"),
    "jaxrnn-fast-xla": lambda s, d: build_jaxrnn(s, d, "fast-xla"),
    "jaxrnn-fast-u10": lambda s, d: build_jaxrnn(s, d, "fast", unroll=10),  # first GPU run
    **{f"jaxrnn-{v}": functools.partial(build_jaxrnn, variant=v) for v in GPU_VARIANTS},
    "jaxrnn": lambda s, d: build_jaxrnn(s, d, "plain"),
    "flax": build_flax,
    "keras-jax": lambda s, d: build_keras(s, d, "jit"),
    "keras-fit": lambda s, d: build_keras(s, d, "fit"),
    "torch": build_torch,
    "torch-1thread": lambda s, d: build_torch(s, d, threads=1),
    "torch-unpacked": lambda s, d: build_torch(s, d, packed=False),
    "numpy": build_numpy,
    "matmul": build_matmul,
}
