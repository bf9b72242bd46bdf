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

from jaxrnn import cells
from jaxrnn.cells._common import Array
from jaxrnn.layer import rnn


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Model settings only (no training settings)."""

    vocab_size: int = 5000  # words kept by the tokenizer (0 = padding, 1 = unknown)
    embed_dim: int = 32  # E: width of each word vector
    hidden_size: int = 100  # H: RNN units
    cell: str = "simple"  # a name registered in jaxrnn.cells
    cell_options: tuple[tuple[str, Any], ...] = ()  # extra kwargs of cells.<cell>.init


def init_classifier(key: Array, cfg: ClassifierConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters ``{"embedding": [V, E], "rnn": cell params, "W_o": [H, 1], "b_o": [1]}``.

    Embedding ~ U(-0.05, 0.05) and Dense glorot-uniform / zero bias, as Keras initialises them.
    """
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


def check_tokens(tokens: Any, vocab_size: int) -> None:
    """Raises ``TypeError``/``ValueError`` for non-integer or non-``[B, T]`` token arrays."""
    dtype = jnp.result_type(tokens)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"tokens must be integer word ids in [0, {vocab_size}); got dtype {dtype}")
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"tokens must have shape [B, T]; got shape {tuple(jnp.shape(tokens))}")


def classifier_logits(
    cfg: ClassifierConfig, params: dict[str, Any], tokens: Array, lengths: Array | None = None
) -> Array:
    """Logit of the positive class for each sequence.

    Args:
        cfg: model settings.
        params: from :func:`init_classifier`.
        tokens: ``[B, T]`` int word ids (0 = padding).
        lengths: optional ``[B]`` true lengths of left-aligned (post-padded) sequences.

    Returns:
        ``[B]`` logits; ``jax.nn.sigmoid`` of them is the probability of "positive".
    """
    check_tokens(tokens, cfg.vocab_size)
    xs = jnp.take(params["embedding"], tokens, axis=0)  # [B, T] -> [B, T, E]
    h_T, _ = rnn(
        cells.get(cfg.cell).cell, params["rnn"], xs, lengths=lengths
    )  # [B, H] (or carry tuple)
    h_T = h_T[0] if isinstance(h_T, tuple) else h_T  # LSTM-style carries (h, c): keep h
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
) -> Array:
    """Mean binary cross-entropy of the classifier on ``tokens [B, T]``, ``labels [B]``."""
    return binary_cross_entropy(classifier_logits(cfg, params, tokens, lengths), labels)
