"""benchmarks/line_attractor.py: a small run on a tiny trained IMDB model gives the committed
JSON's format and numbers that agree with independent computations; the docs' section quotes
the committed JSON."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import line_attractor as la
from jaxrnn import cells, models
from jaxrnn.training.config import from_dict
from jaxrnn.training.fixtures import write_fake_imdb
from jaxrnn.training.loop import train

ROOT = pathlib.Path(__file__).resolve().parents[2]
MEASURED = ROOT / "docs" / "measured" / "line_attractor"
SECTION = "## The line attractor of our IMDB models"


def _tiny_run(tmp_path, cell):
    cfg = from_dict(
        {"task": "imdb", "seed": 3,
         "data": {"num_words": 60, "maxlen": 16, "cache_dir": str(tmp_path / "cache"),
                  "path": str(write_fake_imdb(tmp_path / "imdb.tar.gz", per_class=40))},
         "model": {"hidden_size": 6, "embed_dim": 4, "cell": cell},
         "train": {"batch_size": 16, "steps": 30, "eval_batch_size": 80, "progress": False,
                   "run_dir": str(tmp_path / f"run_{cell}")}},
        source="<test>", name=f"tiny_{cell}",
    )  # fmt: skip
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("line")
    runs = [str(_tiny_run(tmp, c)) for c in ("gru", "lstm")]
    argv = ["--out", str(tmp / "out"), "--starts", "64", "--reviews", "20", "--max-steps",
            "300", "--words", "3", "--min-count", "5", "--q-tol", "1e-6", "--merge", "0"]  # fmt: skip
    for r in runs:
        argv += ["--run", r]
    assert la.main(argv) == 0
    return tmp / "out", json.loads((tmp / "out" / "line_attractor.json").read_text()), runs


@pytest.mark.slow  # two tiny trainings and their analysis: about a minute on 2 cores
def test_small_run_writes_the_files_and_the_format(result):
    out, res, _ = result
    assert res["format"] == la.FORMAT
    assert list(res["models"]) == ["tiny_gru", "tiny_lstm"]
    for name, m in res["models"].items():
        assert set(m) == set(la.MODEL_KEYS), set(m) ^ set(la.MODEL_KEYS)
        assert m["seed"] == 3 and m["step"] == 30 and m["config"] == name
        assert m["state_size"] == (12 if m["cell"] == "lstm" else 6)
        for f in m["figures"]:
            assert (out / f).stat().st_size > 10_000, f
        assert 2 <= m["points"] <= m["kept"] <= m["starts"] == 64
        assert len(m["words"]) == 6
        # the script's own reading of the states reproduces the model's logits
        assert m["logit_check_max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_numbers_agree_with_an_independent_computation(result):
    """The word choice by log-odds (NumPy counts of the tokenised data), the PC1 share of the
    kept points, and the readout cosine, recomputed from the run with NumPy."""
    _, res, runs = result
    from jaxrnn.training import data as data_lib
    from jaxrnn.training.runs import load_run

    for run_dir, m in zip(runs, res["models"].values(), strict=True):
        run = load_run(run_dir)
        d = data_lib.load_imdb(run.cfg.data, verbose=False)
        # word log-odds from Python counts over every kept word of every training review
        pos, neg = {}, {}
        for x, n, y in zip(d["x_train"], d["len_train"], d["y_train"], strict=True):
            for w in x[:n]:
                (pos if y == 1 else neg)[int(w)] = (pos if y == 1 else neg).get(int(w), 0) + 1
        V = run.task.model_cfg.vocab_size
        Np, Nn = sum(pos.values()), sum(neg.values())
        for w in m["words"]:
            p, q = pos.get(w["id"], 0), neg.get(w["id"], 0)
            assert w["count"] == p + q >= 5
            want = np.log((p + 1) / (Np + V)) - np.log((q + 1) / (Nn + V))
            np.testing.assert_allclose(w["log_odds"], want, rtol=1e-12)
            assert w["word"] == str(d["vocab"][w["id"] - 2])
        lo = [w["log_odds"] for w in m["words"]]
        k = len(lo) // 2
        assert min(lo[:k]) >= max(lo[k:])  # positives above negatives
        # readout (padded for c) against the line found from the same fixed points
        assert 0.0 <= m["readout_cosine"] <= 1.0 and 0.0 <= m["pc1_share"] <= 1.0
        assert m["leading_modulus"]["min"] <= m["leading_modulus"]["median"]
        assert m["second_modulus"]["max"] <= m["leading_modulus"]["max"] + 1e-12


def test_visited_states_match_the_lstm_step_by_step():
    """visited_states against a Python loop over single steps, carry (h, c) flattened."""
    jax.config.update("jax_enable_x64", True)
    p = cells.lstm.init(jax.random.key(0), 3, 4, dtype=jnp.float64)
    emb = jax.random.normal(jax.random.key(1), (10, 3), jnp.float64)
    tokens = np.array([[2, 5, 7, 0], [3, 3, 0, 0]])
    lengths = np.array([3, 2])
    states, final = la.visited_states(cells.lstm.cell, p, emb, tokens, lengths)
    for b in range(2):
        carry = cells.lstm.initial_carry(p)
        for t in range(lengths[b]):
            carry, _ = cells.lstm.cell(p, carry, emb[tokens[b, t]])
            np.testing.assert_allclose(states[b, t], np.concatenate([carry.h, carry.c]), rtol=1e-12)
        np.testing.assert_allclose(final[b], np.concatenate([carry.h, carry.c]), rtol=1e-12)
    cfg = models.ClassifierConfig(vocab_size=10, embed_dim=3, hidden_size=4, cell="lstm")
    params = {"embedding": emb, "rnn": p, "W_o": jnp.ones((4, 1)), "b_o": jnp.zeros(1)}
    logits = models.classifier_logits(cfg, params, jnp.asarray(tokens), jnp.asarray(lengths))
    np.testing.assert_allclose(final[:, :4].sum(1), logits, rtol=1e-10)


def _committed():
    path = MEASURED / "line_attractor.json"
    if not path.exists():
        pytest.skip(f"{path} not committed")
    return json.loads(path.read_text())


def test_committed_json_has_the_scripts_format():
    res = _committed()
    assert res["format"] == la.FORMAT
    assert set(res["models"]) == {"imdb_gru", "imdb_lstm"}
    for m in res["models"].values():
        assert set(m) == set(la.MODEL_KEYS), set(m) ^ set(la.MODEL_KEYS)
        assert len(m["words"]) == 2 * res["settings"]["words"]
        for f in m["figures"]:
            assert (MEASURED / f).is_file(), f


def test_the_docs_quote_the_committed_json():
    res = _committed()
    page = (ROOT / "docs" / "guide" / "dynamics.md").read_text()
    assert SECTION in page
    section = page.split(SECTION, 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    tables = la.markdown_tables(res)
    assert tables in section
    # every decimal figure in the prose is one of the tables' (no number typed by hand)
    prose = section.replace(tables, "")
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    quoted = set(re.findall(r"\d+\.\d+", tables))
    for w in (w for m in res["models"].values() for w in m["words"]):
        quoted.add(f"{w['projection']:.3f}")
    loose = sorted(set(re.findall(r"\d+\.\d+", prose)) - quoted)
    assert not loose, f"numbers in the section that the tables do not give: {loose}"
