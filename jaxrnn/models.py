"""The seed model as pure functions: Embedding -> RNN -> Dense(1) -> sigmoid.

The classic IMDB sentiment model, ``Embedding(5000, 32) -> SimpleRNN(100) ->
Dense(1, sigmoid)``, for any registered cell::

    tokens [B, T] int  --embedding-->  xs [B, T, E]  --rnn-->  h_T [B, H]
                       --dense-->  logits [B]  --sigmoid-->  p(positive) [B]

Like Keras's ``SimpleRNN`` with ``return_sequences=False``, the RNN's output is
its final state ``h_T`` (with pre-padded sequences and no mask, the state after
all ``T`` steps; with ``lengths``, each sequence's state at its own last step).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxrnn import models
    >>> cfg = models.ClassifierConfig()                  # 5000 words, 32-d embedding, 100 units
    >>> params = models.init_classifier(jax.random.key(0), cfg)
    >>> tokens = jnp.zeros((2, 250), jnp.int32)           # [B, T]
    >>> models.classifier_logits(cfg, params, tokens).shape
    (2,)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrnn import _checks, cells
from jaxrnn import dropout as dropout_lib
from jaxrnn._rnn import Embedded, rnn
from jaxrnn._stack import stack
from jaxrnn.cells._common import Array, carry_output

# What init_classifier makes for a ClassifierConfig field left at None.
CLASSIFIER_DEFAULTS = {"vocab_size": 5000, "embed_dim": 32, "hidden_size": 100, "cell": "simple"}
_CELL_LABELS = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Model settings only (no training settings).

    The parameters say the cell and the sizes, so :func:`classifier_logits` reads them from the
    params (:func:`classifier_config_of`): ``vocab_size``, ``embed_dim``, ``hidden_size`` and
    ``cell`` are only what :func:`init_classifier` makes (``None``: ``CLASSIFIER_DEFAULTS``,
    5000 words, 32-d, 100 units, ``"simple"``). Where set, params that disagree are refused,
    naming the cell and the sizes.
    """

    vocab_size: int | None = None  # words kept by the tokenizer (0 = padding, 1 = unknown)
    embed_dim: int | None = None  # E: width of each word vector
    hidden_size: int | None = None  # H: RNN units
    cell: str | None = None  # a name registered in jaxrnn.cells
    cell_options: tuple[tuple[str, Any], ...] = ()  # extra kwargs of cells.<cell>.init
    # Keras's LSTM(..., dropout, recurrent_dropout): one mask per sequence on x_t / h_{t-1},
    # applied only when classifier_logits gets a key (training); 0 = off
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    # rematerialise BPTT (jaxrnn.rnn's remat): k steps per checkpointed segment, "sqrt", None
    remat: int | str | None = None
    backend: Any = "auto"  # what runs the recurrence (a name or a jaxrnn.backends.Backend)

    def with_defaults(self) -> ClassifierConfig:
        """This config with every field left at ``None`` set from ``CLASSIFIER_DEFAULTS``."""
        fill = {k: v for k, v in CLASSIFIER_DEFAULTS.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


def _cell_name(rnn_params: Any) -> str | None:
    """The registered cell whose module defines the type of ``rnn_params`` (None: none does)."""
    module = type(rnn_params).__module__
    for name, mod in cells._REGISTRY.items():  # noqa: SLF001 (the package's own registry)
        if mod.__name__ == module:
            return name
    return None


def classifier_config_of(
    params: dict[str, Any], cfg: ClassifierConfig | None = None
) -> ClassifierConfig:
    """The classifier's config as its params say it: cell kind and sizes read from the params,
    the other settings from ``cfg``.

    Args:
        params: ``{"embedding": [V, E], "rnn": cell params, "W_o": [H, 1], "b_o": [1]}``.
        cfg: the settings (dropout, backend, ...); its cell and sizes, where set, must agree.

    Raises:
        ValueError: ``cfg`` says another cell or size than the params, e.g. "params are an
            LSTM's (W_x [32, 400]) but the config says cell='simple'".

    Examples:
        >>> import jax
        >>> from jaxrnn import models
        >>> p = models.init_classifier(jax.random.key(0), models.ClassifierConfig(
        ...     vocab_size=50, embed_dim=4, hidden_size=8, cell="lstm"))
        >>> c = models.classifier_config_of(p)
        >>> c.cell, c.vocab_size, c.embed_dim, c.hidden_size
        ('lstm', 50, 4, 8)
    """
    cfg = ClassifierConfig() if cfg is None else cfg
    rnn_params = params["rnn"]
    table = params["embedding"]
    name = _cell_name(rnn_params) or cfg.cell
    if name is None:
        raise ValueError(
            f"params['rnn'] is a {type(rnn_params).__name__}, of no registered cell; "
            "set ClassifierConfig.cell"
        )
    W_x = getattr(rnn_params, "W_x", None)
    what = f"W_x {list(W_x.shape)}" if W_x is not None else type(rnn_params).__name__
    label = _CELL_LABELS.get(name, name)
    article = "an" if label == "LSTM" or label[0] in "AEIOU" else "a"
    if cfg.cell is not None and cfg.cell != name:
        raise ValueError(
            f"params are {article} {label}'s ({what}) but the config says cell={cfg.cell!r}; "
            "leave cell=None to take it from the params"
        )
    hidden = getattr(rnn_params, "hidden_size", None)
    derived = {
        "vocab_size": (int(table.shape[0]), f"embedding {list(table.shape)}"),
        "embed_dim": (int(table.shape[1]), f"embedding {list(table.shape)}"),
        "hidden_size": (
            int(hidden if hidden is not None else params["W_o"].shape[0]),
            f"W_o {list(params['W_o'].shape)}",
        ),
    }
    for field, (value, source) in derived.items():
        said = getattr(cfg, field)
        if said is not None and said != value:
            raise ValueError(
                f"params have {field} {value} ({label}; {source}) but the config says "
                f"{field}={said}; leave it None to take it from the params"
            )
    return dataclasses.replace(cfg, cell=name, **{k: v for k, (v, _) in derived.items()})


def init_classifier(key: Array, cfg: ClassifierConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters ``{"embedding": [V, E], "rnn": cell params, "W_o": [H, 1], "b_o": [1]}``.

    Embedding ~ U(-0.05, 0.05) and Dense glorot-uniform / zero bias, as Keras initialises them.
    Fields of ``cfg`` left at ``None`` take ``CLASSIFIER_DEFAULTS``.
    """
    cfg = cfg.with_defaults()
    k_e, k_r, k_o = jax.random.split(key, 3)
    cell_mod = cells.get(cfg.cell)
    return {
        "embedding": jax.random.uniform(
            k_e, (cfg.vocab_size, cfg.embed_dim), dtype, -0.05, 0.05
        ),  # [V, E]
        "rnn": cell_mod.init(
            k_r, cfg.embed_dim, cfg.hidden_size, dtype=dtype, **dict(cfg.cell_options)
        ),
        "W_o": jax.nn.initializers.glorot_uniform()(k_o, (cfg.hidden_size, 1), dtype),  # [H, 1]
        "b_o": jnp.zeros((1,), dtype),  # [1]
    }


def classifier_logits(
    cfg: ClassifierConfig,
    params: dict[str, Any],
    tokens: Array,
    lengths: Array | None = None,
    *,
    key: Array | None = None,
) -> Array:
    """Logit of the positive class for each sequence.

    Args:
        cfg: model settings; the cell and sizes come from ``params``
            (:func:`classifier_config_of`).
        params: from :func:`init_classifier`.
        tokens: ``[B, T]`` int word ids (0 = padding).
        lengths: optional ``[B]`` true lengths of left-aligned (post-padded) sequences.
        key: PRNG key for ``cfg.dropout`` / ``cfg.recurrent_dropout`` (training); ``None``
            (evaluation): no dropout.

    The embedding is folded into the recurrence's input projection where the backend hoists
    it (:class:`jaxrnn.Embedded`): the ``[V, E]`` table is projected once, not ``[B, T, E]``
    word vectors.

    Returns:
        ``[B]`` logits; ``jax.nn.sigmoid`` of them is the probability of "positive".
    """
    cfg = classifier_config_of(params, cfg)
    tokens = _checks.tokens(tokens, cfg.vocab_size)
    cell = cells.get(cfg.cell).cell
    if key is not None and (cfg.dropout or cfg.recurrent_dropout):
        masks = dropout_lib.rnn_dropout_masks(  # x [(G,) B, E], h [(G,) B, H]: one per sequence
            key, cell, cfg.embed_dim, cfg.hidden_size, tokens.shape[:1], dropout=cfg.dropout,
            recurrent_dropout=cfg.recurrent_dropout, dtype=params["embedding"].dtype,
        )  # fmt: skip
        cell = dropout_lib.with_masks(cell, masks)
    xs = Embedded(params["embedding"], tokens)  # [V, E], [B, T]
    carry, _ = rnn(cell, params["rnn"], xs, lengths=lengths, remat=cfg.remat, backend=cfg.backend)
    h_T = carry_output(carry)  # [B, H]; an LSTM's carry (h, c) keeps h
    return (h_T @ params["W_o"] + params["b_o"])[:, 0]  # [B, H] @ [H, 1] -> [B]


def binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean BCE of ``sigmoid(logits)`` against labels in {0, 1}; both ``[B]``."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean()


def classifier_loss(
    cfg: ClassifierConfig,
    params: dict[str, Any],
    tokens: Array,
    labels: Array,
    lengths: Array | None = None,
    *,
    key: Array | None = None,
) -> Array:
    """Mean binary cross-entropy of the classifier on ``tokens [B, T]``, ``labels [B]``.

    ``key``: dropout key (training), as in :func:`classifier_logits`.
    """
    return binary_cross_entropy(classifier_logits(cfg, params, tokens, lengths, key=key), labels)


# --- character language model (tiny-shakespeare) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class CharLMConfig:
    """Model settings of the character language model."""

    vocab_size: int = 65  # distinct characters of the corpus
    embed_dim: int = 64  # E: width of each character vector
    hidden_size: int = 512  # H: RNN units (of every layer)
    cell: str = "gru"  # a name registered in jaxrnn.cells
    cell_options: tuple[tuple[str, Any], ...] = ()  # extra kwargs of cells.<cell>.init
    num_layers: int = 1  # L: stacked layers (jaxrnn.stack)
    # char-rnn's dropout: on the input of every layer but the first and on the top layer's
    # outputs (a fresh mask per element), applied only when char_lm_logits gets a key
    dropout: float = 0.0
    remat: int | str | None = None  # rematerialised BPTT, as jaxrnn.rnn's remat
    backend: Any = "auto"  # what runs the recurrence (a name or a jaxrnn.backends.Backend)


def init_char_lm(key: Array, cfg: CharLMConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters ``{"embedding": [V, E], "rnn": cell params, "W_o": [H, V], "b_o": [V]}``;
    with ``cfg.num_layers = L > 1``, ``"rnn"`` is a list of ``L`` layers' params (layer 0
    ``E -> H``, the others ``H -> H``)."""
    if cfg.num_layers < 1:
        raise ValueError(f"CharLMConfig.num_layers must be >= 1; got {cfg.num_layers}")
    k_e, k_r, k_o = jax.random.split(key, 3)
    cell_mod = cells.get(cfg.cell)

    def layer(k, d_in):
        return cell_mod.init(k, d_in, cfg.hidden_size, dtype=dtype, **dict(cfg.cell_options))

    rnn_params = (
        layer(k_r, cfg.embed_dim)
        if cfg.num_layers == 1
        else [
            layer(jax.random.fold_in(k_r, i), cfg.embed_dim if i == 0 else cfg.hidden_size)
            for i in range(cfg.num_layers)
        ]
    )
    return {
        "embedding": jax.random.normal(k_e, (cfg.vocab_size, cfg.embed_dim), dtype) * 0.1,
        "rnn": rnn_params,
        "W_o": jax.nn.initializers.glorot_uniform()(
            k_o, (cfg.hidden_size, cfg.vocab_size), dtype
        ),  # [H, V]
        "b_o": jnp.zeros((cfg.vocab_size,), dtype),  # [V]
    }


def char_lm_logits(
    cfg: CharLMConfig,
    params: dict[str, Any],
    tokens: Array,
    h0: Any = None,
    *,
    key: Array | None = None,
) -> tuple[Any, Array]:
    """Next-character logits at every position.

    Args:
        cfg: model settings.
        params: from :func:`init_char_lm`.
        tokens: ``[B, T]`` int character ids.
        h0: optional initial carry (leaves ``[B, H]``; with ``L > 1`` layers, a list of
            ``L`` carries); zeros when ``None``.
        key: PRNG key for ``cfg.dropout`` (training); ``None`` (evaluation): no dropout.
            The masks between layers come from ``fold_in(key, k)`` (``k < L - 1``, see
            :func:`jaxrnn.stack`), those on the top layer's outputs from
            ``fold_in(key, L - 1)``, step ``t``'s from a further ``fold_in(., t)``.

    Returns:
        ``(final_carry, logits)`` with ``logits: [B, T, V]``; ``logits[:, t]`` predicts
        ``tokens[:, t + 1]``. With ``L > 1`` layers ``final_carry`` is a list of ``L``
        carries.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import models
        >>> cfg = models.CharLMConfig(vocab_size=10, embed_dim=4, hidden_size=8, cell="simple")
        >>> params = models.init_char_lm(jax.random.key(0), cfg)
        >>> _, logits = models.char_lm_logits(cfg, params, jnp.zeros((2, 5), jnp.int32))
        >>> logits.shape
        (2, 5, 10)
    """
    tokens = _checks.tokens(tokens, cfg.vocab_size)
    cell = cells.get(cfg.cell).cell
    drop = key is not None and cfg.dropout > 0
    run = dict(remat=cfg.remat, backend=cfg.backend)
    if cfg.num_layers == 1:
        xs = Embedded(params["embedding"], tokens)  # [V, E], [B, T]
        carry, hs = rnn(cell, params["rnn"], xs, h0, **run)  # hs: [B, T, H]
    else:
        xs = jnp.take(params["embedding"], tokens, axis=0)  # [B, T] -> [B, T, E]
        carry, hs = stack(
            cell, params["rnn"], xs, h0, dropout=cfg.dropout, key=key, deterministic=not drop, **run
        )  # hs: [B, T, H], the top layer's outputs
    if drop:  # the top layer's outputs, as char-rnn drops them before its decoder
        steps = jnp.arange(hs.shape[1])
        hs = dropout_lib.dropout_steps(
            jax.random.fold_in(key, cfg.num_layers - 1), hs, cfg.dropout, steps
        )
    return carry, hs @ params["W_o"] + params["b_o"]  # [B, T, H] @ [H, V] -> [B, T, V]


def char_lm_loss(
    cfg: CharLMConfig, params: dict[str, Any], tokens: Array, key: Array | None = None
) -> Array:
    """Mean next-character cross-entropy (nats/char) over ``tokens[:, 1:]``; tokens ``[B, T+1]``;
    ``key``: dropout (training), as in :func:`char_lm_logits`."""
    _, logits = char_lm_logits(cfg, params, tokens[:, :-1], key=key)  # [B, T, V]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def char_lm_sample(
    cfg: CharLMConfig,
    params: dict[str, Any],
    prompt: Array,
    num_chars: int,
    *,
    key: Array,
    temperature: float = 1.0,
) -> Array:
    """Samples ``num_chars`` characters after ``prompt`` (``[P]`` int ids, ``P >= 1``).

    Returns:
        ``[num_chars]`` int ids drawn one at a time from ``softmax(logits / temperature)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import models
        >>> cfg = models.CharLMConfig(vocab_size=10, embed_dim=4, hidden_size=8, cell="simple")
        >>> params = models.init_char_lm(jax.random.key(0), cfg)
        >>> models.char_lm_sample(cfg, params, jnp.array([1, 2]), 7, key=jax.random.key(1)).shape
        (7,)
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 1 or prompt.shape[0] < 1:
        raise ValueError(f"prompt must be [P] int ids with P >= 1; got shape {prompt.shape}")
    cell = cells.get(cfg.cell).cell
    carry, logits = char_lm_logits(cfg, params, prompt[None, :])  # logits [1, P, V]

    def step(state, k):
        carry, last_logits = state  # last_logits [1, V]
        tok = jax.random.categorical(k, last_logits / temperature, axis=-1)  # [1]
        h = jnp.take(params["embedding"], tok, axis=0)  # [1, E]
        if cfg.num_layers == 1:
            carry, h = cell(params["rnn"], carry, h)  # h [1, H]
        else:  # every layer one step, bottom to top
            new = []
            for p, c in zip(params["rnn"], carry, strict=True):
                c, h = cell(p, c, h)  # h [1, H]
                new.append(c)
            carry = new
        return (carry, h @ params["W_o"] + params["b_o"]), tok[0]

    keys = jax.random.split(key, num_chars)
    _, toks = jax.lax.scan(step, (carry, logits[:, -1]), keys)
    return toks  # [num_chars]


# --- sequence regression (the adding problem) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegressorConfig:
    """Model settings of the sequence-to-scalar regressor ``xs [B, T, D] -> y [B]``."""

    input_size: int = 2  # D: features per step (value, marker) for the adding problem
    hidden_size: int = 100  # H: RNN units
    cell: str = "simple"  # a name registered in jaxrnn.cells
    cell_options: tuple[tuple[str, Any], ...] = ()  # extra kwargs of cells.<cell>.init
    chrono_t_max: int = 0  # LSTM only: > 0 applies chrono_lstm_bias(t_max) at init
    remat: int | str | None = None  # rematerialised BPTT, as jaxrnn.rnn's remat
    backend: Any = "auto"  # what runs the recurrence (a name or a jaxrnn.backends.Backend)


def chrono_lstm_bias(key: Array, b: Array, t_max: int) -> Array:
    """Chrono initialization of an LSTM bias ``b: [4H]`` (gate order ``i, f, g, o``).

    Tallec & Ollivier (2018), "Can recurrent neural networks warp time?":
    ``b_f ~ log(U(1, t_max - 1))`` and ``b_i = -b_f``, so the forget gates start with
    memory time scales spread up to ``t_max`` steps (a forget bias of 1 forgets within ~4
    steps: ``sigmoid(1)^t``). The ``g`` and ``o`` blocks are kept.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> b = chrono_lstm_bias(jax.random.key(0), jnp.zeros(4 * 3), t_max=200)
        >>> bool((b[3:6] >= 0).all() and (b[3:6] <= jnp.log(199.0)).all()), bool((b[:3] == -b[3:6]).all())
        (True, True)
    """
    H = b.shape[0] // 4
    b_f = jnp.log(jax.random.uniform(key, (H,), b.dtype, 1.0, t_max - 1.0))  # [H]
    return b.at[:H].set(-b_f).at[H : 2 * H].set(b_f)


def init_regressor(key: Array, cfg: RegressorConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters ``{"rnn": cell params, "W_o": [H, 1], "b_o": [1]}``."""
    k_r, k_o, k_b = jax.random.split(key, 3)
    cell_mod = cells.get(cfg.cell)
    rnn_params = cell_mod.init(
        k_r, cfg.input_size, cfg.hidden_size, dtype=dtype, **dict(cfg.cell_options)
    )
    if cfg.chrono_t_max > 0:
        if cfg.cell != "lstm":
            raise ValueError(f"chrono_t_max applies to the lstm cell only; got cell={cfg.cell!r}")
        b = chrono_lstm_bias(k_b, rnn_params.b, cfg.chrono_t_max)
        rnn_params = dataclasses.replace(rnn_params, b=b)
    return {
        "rnn": rnn_params,
        "W_o": jax.nn.initializers.glorot_uniform()(k_o, (cfg.hidden_size, 1), dtype),  # [H, 1]
        "b_o": jnp.zeros((1,), dtype),  # [1]
    }


def regressor_predict(cfg: RegressorConfig, params: dict[str, Any], xs: Array) -> Array:
    """Prediction ``h_T @ W_o + b_o`` for each sequence.

    Args:
        cfg: model settings.
        params: from :func:`init_regressor`.
        xs: ``[B, T, D]`` float inputs.

    Returns:
        ``[B]`` predictions.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxrnn import models
        >>> cfg = models.RegressorConfig(hidden_size=8)
        >>> params = models.init_regressor(jax.random.key(0), cfg)
        >>> models.regressor_predict(cfg, params, jnp.zeros((3, 20, 2), jnp.float32)).shape
        (3,)
    """
    cell = cells.get(cfg.cell).cell
    carry, _ = rnn(cell, params["rnn"], xs, remat=cfg.remat, backend=cfg.backend)
    return (carry_output(carry) @ params["W_o"] + params["b_o"])[:, 0]  # [B, H] @ [H, 1] -> [B]
