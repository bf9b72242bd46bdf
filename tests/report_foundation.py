"""Prints the figures the foundation tests compare (max abs / relative differences).

PYTHONPATH=. python tests/report_foundation.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import flax.linen as linen  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrnn import cells, models, nn, reference, rnn  # noqa: E402


def main() -> None:
    rows = []
    key = jax.random.key(0)
    B, T, D, H = 8, 50, 16, 32
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    lengths = jnp.array([T, 40, 30, 20, 10, 5, 1, 0])
    for act in ["tanh", "relu", "sigmoid", "identity"]:
        p = cells.simple.init(
            key, D, H, act, dtype=jnp.float64, bias_initializer=jax.nn.initializers.normal(1.0)
        )
        for rev in (False, True):
            for L in (None, lengths):
                h, ys = rnn(cells.simple.cell, p, xs, lengths=L, reverse=rev)
                rh, rys = reference.simple_rnn_forward(
                    np.asarray(xs),
                    np.asarray(p.W_x),
                    np.asarray(p.W_h),
                    np.asarray(p.b),
                    None,
                    act,
                    None if L is None else np.asarray(L),
                    rev,
                )
                d = max(np.abs(np.asarray(h) - rh).max(), np.abs(np.asarray(ys) - rys).max())
                rows.append(
                    (
                        f"rnn vs NumPy loop, {act}, reverse={rev}, lengths={L is not None}",
                        "max abs",
                        d,
                    )
                )

    cfg = models.ClassifierConfig(vocab_size=500, embed_dim=32, hidden_size=100)
    params = models.init_classifier(key, cfg, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(0, 500, size=(16, 250)), rng.integers(0, 2, size=16)
    loss_np, cache = reference.seed_forward(params, tokens, labels)
    loss_j = models.classifier_loss(cfg, params, jnp.asarray(tokens), jnp.asarray(labels))
    rows.append(
        ("seed model loss, NumPy vs JAX (B=16, T=250, H=100)", "abs", abs(loss_np - float(loss_j)))
    )
    hand = reference.seed_backward(params, cache)
    auto = jax.grad(models.classifier_loss, argnums=1)(
        cfg, params, jnp.asarray(tokens), jnp.asarray(labels)
    )
    pairs = {
        "embedding": (hand["embedding"], auto["embedding"]),
        "W_x": (hand["rnn"]["W_x"], auto["rnn"].W_x),
        "W_h": (hand["rnn"]["W_h"], auto["rnn"].W_h),
        "b": (hand["rnn"]["b"], auto["rnn"].b),
        "W_o": (hand["W_o"], auto["W_o"]),
        "b_o": (hand["b_o"], auto["b_o"]),
    }
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a), np.asarray(b)
        rows.append(
            (f"hand BPTT vs jax.grad, d{name}", "max rel", np.abs(a - b).max() / np.abs(b).max())
        )

    p = cells.simple.init(
        key, D, H, dtype=jnp.float64, bias_initializer=jax.nn.initializers.normal(1.0)
    )
    h, ys = rnn(cells.simple.cell, p, xs)
    out = nn.RNN.from_params("simple", p)(xs)
    rows.append(("nnx module vs pure function", "max abs", float(jnp.abs(out[1] - ys).max())))
    flax_rnn = linen.RNN(linen.SimpleCell(features=H, param_dtype=jnp.float64), return_carry=True)
    v = {"params": {"cell": {"i": {"kernel": p.W_x, "bias": p.b}, "h": {"kernel": p.W_h}}}}
    c, o = flax_rnn.apply(v, xs)
    rows.append(
        ("Flax linen SimpleCell + nn.RNN vs jaxrnn", "max abs", float(jnp.abs(o - ys).max()))
    )

    print(
        f"| {'comparison':<62} | {'measure':<8} | {'value':>9} |\n|{'-' * 64}|{'-' * 10}|{'-' * 11}|"
    )
    for name, kind, value in rows:
        print(f"| {name:<62} | {kind:<8} | {value:9.2e} |")


if __name__ == "__main__":
    main()
