"""The classifier's config derived from its params (cell kind and sizes), and mismatches
reported by cell and size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, models
from jaxrnn.cells import carry_output


def _loop_logits(params, kind, tokens):
    """Truth: the cell stepped in a Python loop over the embedded tokens, then the readout."""
    cell = cells.get(kind)
    xs = np.asarray(params["embedding"])[np.asarray(tokens)]  # [B, T, E]
    carry = cell.initial_carry(params["rnn"], (tokens.shape[0],))
    for t in range(tokens.shape[1]):
        carry, _ = cell.cell(params["rnn"], carry, jnp.asarray(xs[:, t]))
    return (carry_output(carry) @ params["W_o"] + params["b_o"])[:, 0]


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
def test_config_without_cell_and_sizes_reads_them_from_params(kind):
    made = models.ClassifierConfig(vocab_size=30, embed_dim=4, hidden_size=6, cell=kind)
    params = models.init_classifier(jax.random.key(0), made, dtype=jnp.float64)
    tokens = jax.random.randint(jax.random.key(1), (3, 7), 0, 30)
    got = models.classifier_logits(models.ClassifierConfig(), params, tokens)  # nothing repeated
    np.testing.assert_allclose(got, _loop_logits(params, kind, tokens), rtol=1e-10, atol=1e-12)
    derived = models.classifier_config_of(params)
    assert (derived.cell, derived.vocab_size, derived.embed_dim, derived.hidden_size) == (
        kind, 30, 4, 6
    )  # fmt: skip


def test_defaults_still_make_the_seed_model():
    params = models.init_classifier(jax.random.key(0), models.ClassifierConfig())
    assert params["embedding"].shape == (5000, 32)
    assert isinstance(params["rnn"], cells.simple.SimpleParams)
    assert params["rnn"].W_h.shape == (100, 100)
    full = models.ClassifierConfig(hidden_size=7).with_defaults()
    assert (full.vocab_size, full.embed_dim, full.hidden_size, full.cell) == (5000, 32, 7, "simple")


def test_mismatch_names_the_cell_and_the_sizes():
    made = models.ClassifierConfig(vocab_size=30, embed_dim=32, hidden_size=100, cell="lstm")
    params = models.init_classifier(jax.random.key(0), made)
    tokens = jnp.zeros((2, 5), jnp.int32)
    stale = models.ClassifierConfig(cell="simple")
    with pytest.raises(
        ValueError,
        match=r"params are an LSTM's \(W_x \[32, 400\]\) but the config says cell='simple'",
    ):
        models.classifier_logits(stale, params, tokens)
    with pytest.raises(
        ValueError,
        match=r"params have hidden_size 100 \(LSTM; W_o \[100, 1\]\) but the config says "
        r"hidden_size=64",
    ):
        models.classifier_logits(models.ClassifierConfig(hidden_size=64), params, tokens)
    with pytest.raises(
        ValueError,
        match=r"params have vocab_size 30 \(LSTM; embedding \[30, 32\]\) but the config says "
        r"vocab_size=5000",
    ):
        models.classifier_logits(models.ClassifierConfig(vocab_size=5000), params, tokens)
