"""A one-minute demo: train the seed model on generated "reviews" and watch the loss fall.

    python -m jaxrnn.demo [--steps 800] [--seed 0]

The model is the classic IMDB one, Embedding(5000, 32) -> SimpleRNN(100) ->
Dense(1, sigmoid), on sequences of 250 word ids. The data is synthetic: in each
review a third of the words carry sentiment, mostly "positive" words (ids 10-59)
in a positive review and mostly "negative" ones (ids 60-109) in a negative one.
Real IMDB training is ``python train.py --config configs/imdb_simple_rnn.yaml``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import models


def make_batch(
    rng: np.random.Generator, batch: int, T: int, vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``tokens [B, T]`` int32 and ``labels [B]`` int32.

    A third of the words carry sentiment; in a positive review 90% of those are
    "positive" words (ids 10-59), in a negative one 90% are "negative" (60-109).
    """
    labels = rng.integers(0, 2, size=batch)  # [B]
    tokens = rng.integers(110, vocab, size=(batch, T))  # neutral words
    sentiment = rng.random((batch, T)) < 1 / 3  # [B, T] which words carry sentiment
    agrees = rng.random((batch, T)) < 0.9  # ... and whether they agree with the label
    positive = np.where(labels[:, None] == 1, agrees, ~agrees)  # [B, T]
    word = np.where(
        positive, rng.integers(10, 60, size=(batch, T)), rng.integers(60, 110, size=(batch, T))
    )
    tokens = np.where(sentiment, word, tokens)
    return tokens.astype(np.int32), labels.astype(np.int32)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps", type=int, default=800
    )  # the loss sits near 0.69 for ~400 steps, then falls
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--maxlen", type=int, default=250)
    args = ap.parse_args(argv)

    # Embedding(5000, 32) -> SimpleRNN(100) -> Dense(1); with_defaults: the sizes are read below
    cfg = models.ClassifierConfig().with_defaults()
    params = models.init_classifier(jax.random.key(args.seed), cfg)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, tokens, labels):
        def loss_fn(p):
            logits = models.classifier_logits(cfg, p, tokens)
            return models.binary_cross_entropy(logits, labels), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        acc = jnp.mean((logits > 0) == (labels == 1))
        return optax.apply_updates(params, updates), opt_state, loss, acc

    rng = np.random.default_rng(args.seed)
    print(
        f"seed model: Embedding(5000, 32) -> SimpleRNN(100) -> Dense(1), batch {args.batch}, T={args.maxlen}"
    )
    t0, first, loss = time.perf_counter(), None, float("nan")
    for step in range(1, args.steps + 1):
        tokens, labels = make_batch(rng, args.batch, args.maxlen, cfg.vocab_size)
        params, opt_state, loss, acc = train_step(params, opt_state, tokens, labels)
        if step == 1 or step % 25 == 0:
            loss = float(loss)
            first = loss if first is None else first
            print(
                f"step {step:4d}  loss {loss:.4f}  batch accuracy {float(acc):.3f}  ({time.perf_counter() - t0:.1f}s)"
            )
    print(f"loss {first:.4f} -> {float(loss):.4f}")
    return float(loss)


if __name__ == "__main__":
    main()
