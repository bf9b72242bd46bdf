"""python -m jaxrnn.analyze on tiny trained runs: the figures and analysis.json written, the
numbers finite and equal to independent computations (the adding problem's gradient flow by
its own loss, the sum of the Lyapunov exponents by the log-determinants of the step
Jacobians, fixed points fixed under the cell, a line attractor of known geometry)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, dynamics
from jaxrnn.analyze import Recurrence, _fixed_point_stage, main
from jaxrnn.training import data as data_lib
from jaxrnn.training.config import from_dict
from jaxrnn.training.fixtures import write_fake_imdb
from jaxrnn.training.loop import train
from jaxrnn.training.runs import load_run


def _tiny_run(tmp_path, task, model=None):
    data = {
        "adding": {"T": 8, "test_size": 16},
        "imdb": {"num_words": 40, "maxlen": 12, "cache_dir": str(tmp_path / "cache"),
                 "path": str(write_fake_imdb(tmp_path / "imdb.tar.gz", per_class=10))},
    }[task]  # fmt: skip
    model = {"hidden_size": 6} | ({} if task == "adding" else {"embed_dim": 4}) | (model or {})
    cfg = from_dict(
        {"task": task, "data": data, "model": model,
         "train": {"batch_size": 8, "steps": 3, "eval_batch_size": 16, "progress": False,
                   "run_dir": str(tmp_path / "run")}},
        source="<test>", name=f"tiny_{task}",
    )  # fmt: skip
    return train(cfg, log=lambda s: None).run_dir


def _finite(tree):
    values = [v for v in jax.tree.leaves(tree) if isinstance(v, float)]
    return values and all(np.isfinite(values))


def test_analyze_adding_run_numbers_match_independent_computations(tmp_path, capsys):
    run_dir = _tiny_run(tmp_path, "adding")
    assert main([str(run_dir), "--batch", "8", "--no-progress"]) == 0
    out = run_dir / "analysis"
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json",
        "grad_flow.png",
        "lyapunov.png",
    ]
    a = json.loads((out / "analysis.json").read_text())
    assert (
        a["task"] == "adding"
        and a["step"] == 3
        and (a["batch"], a["T"], a["state_size"]) == (8, 8, 6)
    )
    assert _finite(a["grad_flow"]) and _finite(a["lyapunov"])

    # the first 8 test sequences, read here from the data module, and the loaded parameters
    run = load_run(run_dir)
    test = next(
        iter(data_lib.make_dataset("adding", run.cfg.data, run.cfg.seed, 8).eval_batches(8))
    )
    xs, y = jnp.asarray(test["xs"]), jnp.asarray(test["y"])
    p = run.params
    cell = cells.simple.cell

    def own_loss(h_T, ys):  # each sequence's squared error, summed
        return jnp.sum((h_T @ p["W_o"][:, 0] + p["b_o"][0] - y) ** 2)

    direct = dynamics.carry_grad_norms(own_loss, cell, p["rnn"], xs).mean(axis=0)  # [T]
    np.testing.assert_allclose(a["grad_flow"]["mean"], direct, rtol=1e-5)
    # closed form at t = T: dL/dh_T = 2 err_b W_o
    h_T, _ = jax.lax.scan(lambda h, x: cell(p["rnn"], h, x), jnp.zeros((8, 6), xs.dtype),
                          jnp.swapaxes(xs, 0, 1))  # fmt: skip
    err = h_T @ p["W_o"][:, 0] + p["b_o"][0] - y
    want_T = float(jnp.mean(2 * jnp.abs(err)) * jnp.linalg.norm(p["W_o"]))
    assert a["grad_flow"]["summary"]["T"] == pytest.approx(want_T, rel=1e-5)
    assert a["grad_flow"]["summary"]["1"] == pytest.approx(a["grad_flow"]["mean"][0])

    # the full spectrum sums to the mean log |det| of the step Jacobians along each trajectory
    def logdets(x_seq):  # [T, 2]
        def step(h, x):
            J = jax.jacfwd(lambda h: cell(p["rnn"], h, x)[0])(h)
            return cell(p["rnn"], h, x)[0], jnp.linalg.slogdet(J)[1]

        return jax.lax.scan(step, jnp.zeros(6, xs.dtype), x_seq)[1].mean()

    want_sum = float(jnp.mean(jax.vmap(logdets)(xs)))
    assert a["lyapunov"]["k"] == 6
    assert sum(a["lyapunov"]["mean"]) == pytest.approx(want_sum, rel=1e-4, abs=1e-5)
    assert a["lyapunov"]["mean"] == sorted(a["lyapunov"]["mean"], reverse=True)


def test_analyze_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main([str(tmp_path), "--no-progress"]) == 4
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a run directory: it has no checkpoints/" in err


def test_analyze_rejects_a_bad_batch_size(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    assert main([str(tmp_path), "--batch", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "batch must be an int >= 1; got 0" in err


def _line_cell(params, h, x):
    """s' = A s + B x with A = diag(1, 0.5): every point of the first axis is a fixed point."""
    h = h @ params["A"] + x @ params["B"]
    return h, h


_line_cell.initial_carry = lambda params, batch_shape: jnp.zeros((*batch_shape, 2))


def test_fixed_point_stage_finds_a_known_line_attractor():
    params = {"A": jnp.diag(jnp.array([1.0, 0.5])), "B": jnp.array([[1.0, 1.0]])}
    xs = jax.random.normal(jax.random.key(0), (4, 10, 1))  # [B, T, D]
    rec = Recurrence(_line_cell, params, xs, lambda h, ys: jnp.sum(h), jnp.array([2.0, 1.0]))
    info = _fixed_point_stage(rec, n_starts=20, max_steps=300)
    n = info["numbers"]
    assert n["starts"] == 20 and n["converged"] == 20 and n["distinct"] >= 2
    np.testing.assert_allclose(info["points"][:, 1], 0.0, atol=1e-6)  # on the first axis
    line = n["line"]
    assert line["pc1_share"] == pytest.approx(1.0, abs=1e-9)
    assert line["leading_modulus"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert line["second_modulus"]["max"] == pytest.approx(0.5, abs=1e-6)
    # the readout (2, 1) against the line's direction (1, 0)
    assert line["readout_cosine"] == pytest.approx(2 / np.sqrt(5), abs=1e-6)


@pytest.mark.slow
def test_analyze_classifier_writes_fixed_points_that_are_fixed(tmp_path):
    run_dir = _tiny_run(tmp_path, "imdb", {"cell": "lstm"})
    out = tmp_path / "out"
    args = [str(run_dir), "--batch", "8", "--out", str(out), "--fixed-point-steps", "300"]
    assert main([*args, "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json", "fixed_points.npz", "fixed_points.png", "grad_flow.png", "lyapunov.png",
    ]  # fmt: skip
    a = json.loads((out / "analysis.json").read_text())
    assert a["state_size"] == 12 and a["lyapunov"]["k"] == 12  # the LSTM's (h, c)
    assert _finite(a["grad_flow"]) and _finite(a["lyapunov"])
    fp = a["fixed_points"]
    assert fp["starts"] == 8 * 12 and fp["distinct"] >= 1
    saved = np.load(out / "fixed_points.npz")
    run = load_run(run_dir)
    cell, p = cells.lstm.cell, run.params["rnn"]
    x0 = jnp.zeros(4)
    for s, eig in zip(saved["points"], saved["eigenvalues"], strict=True):
        F = lambda s: dynamics._flat_spec(cell.initial_carry(p, ())).ravel(  # noqa: E731
            cell(p, dynamics.unflatten(cell, p, s), x0)[0]
        )
        np.testing.assert_allclose(F(jnp.asarray(s)), s, atol=1e-5)  # s = F(s, 0)
        want = np.sort(np.abs(np.linalg.eigvals(np.asarray(jax.jacfwd(F)(jnp.asarray(s))))))
        np.testing.assert_allclose(np.sort(np.abs(eig)), want, atol=1e-5)


@pytest.mark.parametrize(
    "task, cell, layers",
    [
        ("imdb", "lstm", 1),
        pytest.param("imdb", "gru", 1, marks=pytest.mark.slow),  # the IMDB LSTM covers it
        pytest.param("shakespeare", "gru", 2, marks=pytest.mark.slow),  # ~7 s
        ("adding", "simple", 1),
    ],
)
def test_recurrence_reproduces_the_models_loss(task, cell, layers):
    from jaxrnn import models
    from jaxrnn.analyze import recurrence

    B, T, key = 3, 7, jax.random.key(1)
    k1, k2, k3 = jax.random.split(key, 3)
    if task == "imdb":
        cfg = models.ClassifierConfig(vocab_size=11, embed_dim=4, hidden_size=5, cell=cell)
        params = models.init_classifier(k1, cfg, jnp.float64)
        batch = {"tokens": jax.random.randint(k2, (B, T), 0, 11), "labels": jnp.array([0, 1, 1])}
        mean_loss = models.classifier_loss(cfg, params, batch["tokens"], batch["labels"])
    elif task == "shakespeare":
        cfg = models.CharLMConfig(
            vocab_size=9, embed_dim=4, hidden_size=5, cell=cell, num_layers=layers
        )
        params = models.init_char_lm(k1, cfg, jnp.float64)
        batch = {"tokens": jax.random.randint(k2, (B, T + 1), 0, 9)}
        mean_loss = models.char_lm_loss(cfg, params, batch["tokens"])
    else:
        cfg = models.RegressorConfig(hidden_size=5, cell=cell)
        params = models.init_regressor(k1, cfg, jnp.float64)
        batch = {"xs": jax.random.normal(k2, (B, T, 2)), "y": jax.random.normal(k3, (B,))}
        err = models.regressor_predict(cfg, params, batch["xs"]) - batch["y"]
        mean_loss = jnp.mean(err**2)
    rec = recurrence(task, cfg, params, batch)
    assert rec.xs.shape[:2] == (B, T)
    carry0 = rec.cell.initial_carry(rec.params, (B,))
    final, ys = jax.lax.scan(
        lambda c, x: rec.cell(rec.params, c, x), carry0, jnp.swapaxes(rec.xs, 0, 1)
    )
    # the adapter's loss is the per-sequence losses summed: B times the model's batch mean
    np.testing.assert_allclose(
        rec.loss_fn(final, jnp.swapaxes(ys, 0, 1)), B * mean_loss, rtol=1e-10
    )
    if task == "imdb":  # the readout in the flat state's layout: an LSTM's c gets no weight
        w = np.asarray(params["W_o"][:, 0])
        want = np.concatenate([w, np.zeros(5)]) if cell == "lstm" else w
        np.testing.assert_array_equal(rec.readout, want)
